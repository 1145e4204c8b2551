//! Identifiers. A `SandboxId` is what users see and stays the same across
//! pause/resume; a `LifecycleId` is minted for every boot or restore, so
//! logs, metrics and snapshot keys can tell two lives of one sandbox apart.

use std::fmt;

use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Why an id was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} '{value}': expected 1-64 characters of [a-z0-9-]")]
pub struct IdError {
    kind: &'static str,
    value: String,
}

fn valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn random(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

macro_rules! id_type {
    ($name:ident, $kind:literal, $len:literal) => {
        #[doc = concat!("A ", $kind, " (lowercase letters, digits and dashes).")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("A fresh random ", $kind, ".")]
            pub fn generate() -> Self {
                Self(random($len))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                if valid(&value) {
                    Ok(Self(value))
                } else {
                    Err(IdError { kind: $kind, value })
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(SandboxId, "sandbox id", 20);
id_type!(LifecycleId, "lifecycle id", 12);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_validate_and_bad_ones_do_not() {
        let id = SandboxId::generate();
        assert_eq!(SandboxId::try_from(id.to_string()), Ok(id));
        assert!(SandboxId::try_from("Has Space".to_owned()).is_err());
        assert!(SandboxId::try_from(String::new()).is_err());
        assert!(LifecycleId::try_from("x".repeat(65)).is_err());
        assert_ne!(LifecycleId::generate(), LifecycleId::generate());
    }
}
