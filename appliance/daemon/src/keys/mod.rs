//! API keys: generation, canonical form, hashing, and the key records the
//! CLI and the API see.
//!
//! A key is `lel_` followed by 40 lowercase hex characters (160 bits from
//! the OS-seeded CSPRNG). The stock E2B SDK insists on its own prefix, so
//! `e2b_<same hex>` is the same key: both are reduced to the canonical hex
//! before hashing, and only `SHA-256(canonical hex)` is stored, with the last
//! four hex characters as a non-secret hint.
//!
//! This module never logs or stores a plaintext key; [`create`] hands it to
//! the caller once. Verification is a lookup by hash, so the secret itself
//! is never compared byte by byte.

pub mod auth;
pub mod cli;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{self, Store, api_keys};

pub use auth::{AuthError, authenticate};

/// Prefix of keys this appliance issues.
pub const PREFIX: &str = "lel_";
/// Prefix the stock E2B SDK requires; accepted as an alias of [`PREFIX`].
pub const E2B_PREFIX: &str = "e2b_";
/// Hex characters after the prefix.
pub const HEX_LEN: usize = 40;
/// Hex characters kept as the hint.
const HINT_LEN: usize = 4;
/// Longest accepted key name.
const MAX_NAME_LEN: usize = 64;

/// Errors from managing keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is empty, too long or has control characters.
    #[error("invalid key name: {reason}")]
    InvalidName {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Storing the new key failed.
    #[error("store new key")]
    CreateKey(#[source] store::Error),
    /// Reading keys failed.
    #[error("list keys")]
    ListKeys(#[source] store::Error),
    /// Marking a key revoked failed.
    #[error("revoke key {id}")]
    RevokeKey {
        /// The key id.
        id: i64,
        /// Cause.
        #[source]
        source: store::Error,
    },
    /// No key matches the id or hint.
    #[error("no api key matches {query:?}")]
    KeyNotFound {
        /// What the operator typed.
        query: String,
    },
    /// More than one key matches; the operator must use an id.
    #[error("{query:?} matches several api keys ({ids:?}); use the id")]
    AmbiguousKey {
        /// What the operator typed.
        query: String,
        /// Ids of the matching keys.
        ids: Vec<i64>,
    },
}

/// A key as shown to operators and the API layer: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Key id.
    pub id: i64,
    /// Operator-chosen label.
    pub name: String,
    /// Last four hex characters of the key.
    pub hint: String,
    /// Creation time (unix ms).
    pub created_at_ms: i64,
    /// Last successful authentication (unix ms), coarse.
    pub last_used_at_ms: Option<i64>,
    /// Revocation time (unix ms).
    pub revoked_at_ms: Option<i64>,
}

impl KeyRecord {
    /// The hint in the form operators recognise, e.g. `lel_…3f9a`.
    pub fn display_hint(&self) -> String {
        format!("{PREFIX}…{}", self.hint)
    }

    /// Whether the key has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }
}

impl From<api_keys::ApiKeyRow> for KeyRecord {
    fn from(row: api_keys::ApiKeyRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            hint: row.prefix_hint,
            created_at_ms: row.created_at_ms,
            last_used_at_ms: row.last_used_at_ms,
            revoked_at_ms: row.revoked_at_ms,
        }
    }
}

/// Why a presented key is not well-formed. Deliberately vague about the
/// input: it may be someone's real secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Neither `lel_` nor `e2b_`.
    #[error("key must start with lel_ or e2b_")]
    Prefix,
    /// Wrong number of characters after the prefix.
    #[error("key must have {HEX_LEN} hex characters after the prefix")]
    Length,
    /// A character after the prefix is not hex.
    #[error("key must be hex after the prefix")]
    NotHex,
}

/// Reduces a presented key to its canonical form: the hex part, lowercased.
/// Surrounding whitespace is ignored; the prefix is case-sensitive, the hex
/// is not (a key retyped in capitals is still the same key).
pub fn canonicalize(presented: &str) -> Result<String, FormatError> {
    let presented = presented.trim();
    let hex = presented
        .strip_prefix(PREFIX)
        .or_else(|| presented.strip_prefix(E2B_PREFIX))
        .ok_or(FormatError::Prefix)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FormatError::NotHex);
    }
    // Checked after the hex test so the length is counted in ASCII bytes.
    if hex.len() != HEX_LEN {
        return Err(FormatError::Length);
    }
    Ok(hex.to_ascii_lowercase())
}

/// SHA-256 of the canonical hex, as lowercase hex: the stored form.
pub fn hash_canonical(canonical_hex: &str) -> String {
    to_hex(&Sha256::digest(canonical_hex.as_bytes()))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hint_of(canonical_hex: &str) -> String {
    canonical_hex[canonical_hex.len().saturating_sub(HINT_LEN)..].to_owned()
}

fn validate_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::InvalidName { reason: "empty" });
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(Error::InvalidName {
            reason: "longer than 64 characters",
        });
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidName {
            reason: "contains control characters",
        });
    }
    Ok(())
}

/// Creates a key named `name`. Returns the plaintext key, which exists
/// nowhere else afterwards, and its record.
pub fn create(store: &Store, name: &str) -> Result<(String, KeyRecord), Error> {
    validate_name(name)?;
    let mut secret = [0u8; HEX_LEN / 2];
    // ThreadRng is a CSPRNG seeded and periodically reseeded from the OS.
    rand::rng().fill_bytes(&mut secret);
    let hex = to_hex(&secret);
    let row = api_keys::insert(
        store.conn(),
        name,
        &hash_canonical(&hex),
        &hint_of(&hex),
        store::now_ms(),
    )
    .map_err(Error::CreateKey)?;
    Ok((format!("{PREFIX}{hex}"), row.into()))
}

/// Every key, revoked ones included, by id. Never plaintext.
pub fn list(store: &Store) -> Result<Vec<KeyRecord>, Error> {
    let rows = api_keys::list(store.conn()).map_err(Error::ListKeys)?;
    Ok(rows.into_iter().map(KeyRecord::from).collect())
}

/// Revokes the key with this id, or the one active key with this hint
/// (`3f9a`, `lel_3f9a` or `lel_…3f9a`). Revoking twice is not an error.
/// Returns the record as revoked.
pub fn revoke(store: &Store, id_or_hint: &str) -> Result<KeyRecord, Error> {
    let query = id_or_hint.trim();
    let conn = store.conn();
    let mut matches: Vec<api_keys::ApiKeyRow> = Vec::new();
    if let Ok(id) = query.parse::<i64>()
        && let Some(row) = api_keys::get(conn, id).map_err(Error::ListKeys)?
    {
        matches.push(row);
    }
    let hint = query
        .strip_prefix(PREFIX)
        .or_else(|| query.strip_prefix(E2B_PREFIX))
        .unwrap_or(query);
    let hint = hint.strip_prefix('…').unwrap_or(hint).to_ascii_lowercase();
    // A hint only names keys that still work: revoking an old namesake by
    // accident would be a silent no-op.
    for row in api_keys::find_by_hint(conn, &hint).map_err(Error::ListKeys)? {
        if row.revoked_at_ms.is_none() && !matches.iter().any(|m| m.id == row.id) {
            matches.push(row);
        }
    }
    let row = match matches.len() {
        0 => {
            return Err(Error::KeyNotFound {
                query: query.to_owned(),
            });
        }
        1 => matches.remove(0),
        _ => {
            return Err(Error::AmbiguousKey {
                query: query.to_owned(),
                ids: matches.iter().map(|m| m.id).collect(),
            });
        }
    };
    let id = row.id;
    api_keys::revoke(conn, id, store::now_ms())
        .map_err(|source| Error::RevokeKey { id, source })?;
    match api_keys::get(conn, id).map_err(Error::ListKeys)? {
        Some(row) => Ok(row.into()),
        // Deleted between the two statements: nothing to authenticate with
        // either way, so report it as not found.
        None => Err(Error::KeyNotFound {
            query: query.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests;
