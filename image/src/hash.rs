//! SHA-256 of files (what the manifest pins) and of recipes (what names a
//! cache directory).

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Length of the hex prefix of a recipe digest used in directory names:
/// 128 bits keeps collisions out of reach and paths readable.
pub const KEY_HEX_LEN: usize = 32;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 and byte length of the file at `path`.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Cache key of a recipe: the digest of its canonical JSON. Struct fields
/// serialise in declaration order and we only use ordered collections, so
/// equal recipes always give equal keys.
pub fn key_of<T: Serialize>(recipe: &T) -> Result<String, serde_json::Error> {
    let json = serde_json::to_vec(recipe)?;
    let mut hex = sha256_hex(&json);
    hex.truncate(KEY_HEX_LEN);
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_digest_matches_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        let (hex, size) = sha256_file(&path).expect("hash");
        assert_eq!(hex, sha256_hex(b"abc"));
        assert_eq!(size, 3);
    }

    #[test]
    fn keys_are_stable_and_sensitive() {
        #[derive(Serialize)]
        struct R<'a> {
            a: &'a str,
            b: u32,
        }
        let k1 = key_of(&R { a: "x", b: 1 }).expect("key");
        assert_eq!(k1, key_of(&R { a: "x", b: 1 }).expect("key"));
        assert_ne!(k1, key_of(&R { a: "x", b: 2 }).expect("key"));
        assert_eq!(k1.len(), KEY_HEX_LEN);
    }
}
