//! Egress switch (to be written): NAT from a VM's namespace to the outside.

use super::{Error, VmNetwork};

/// Enables egress for `net`.
pub async fn enable(_net: &VmNetwork) -> Result<(), Error> {
    Ok(())
}

/// Disables egress for `net`.
pub async fn disable(_net: &VmNetwork) -> Result<(), Error> {
    Ok(())
}
