//! Authenticating a presented `X-API-Key` value.
//!
//! The presented key is canonicalized and hashed, then looked up by hash:
//! the database compares digests, never the secret, so timing reveals
//! nothing useful about the key. Nothing here logs the presented value.

use crate::store::{self, Store, api_keys};

use super::{FormatError, KeyRecord, canonicalize, hash_canonical};

/// `last_used_at` is refreshed at most this often, so authenticating every
/// REST call does not turn every read into a database write.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// Why a presented key was refused. The API maps every variant but
/// [`AuthError::Lookup`] to 401 and `Lookup` to 500.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Not `lel_<hex>` / `e2b_<hex>`.
    #[error("malformed api key")]
    Malformed(#[source] FormatError),
    /// Well-formed, but no such key.
    #[error("unknown api key")]
    Unknown,
    /// The key was revoked.
    #[error("api key {id} is revoked")]
    Revoked {
        /// The key id.
        id: i64,
    },
    /// The store could not be read.
    #[error("look up api key")]
    Lookup(#[source] store::Error),
    /// The key is valid but recording its use failed.
    #[error("record api key use")]
    RecordUse(#[source] store::Error),
}

/// Checks a presented header value and returns the key's record.
/// Refreshes `last_used_at` (coarsely) on success.
pub fn authenticate(store: &Store, presented: &str) -> Result<KeyRecord, AuthError> {
    let canonical = canonicalize(presented).map_err(AuthError::Malformed)?;
    let hash = hash_canonical(&canonical);
    let conn = store.conn();
    let row = api_keys::get_by_hash(conn, &hash)
        .map_err(AuthError::Lookup)?
        .ok_or(AuthError::Unknown)?;
    if row.revoked_at_ms.is_some() {
        return Err(AuthError::Revoked { id: row.id });
    }
    let now = store::now_ms();
    let mut record = KeyRecord::from(row);
    let stale = record
        .last_used_at_ms
        .is_none_or(|last| now.saturating_sub(last) >= LAST_USED_GRANULARITY_MS);
    if stale {
        api_keys::touch_last_used(conn, record.id, now).map_err(AuthError::RecordUse)?;
        record.last_used_at_ms = Some(now);
    }
    Ok(record)
}
