//! Key tests against a real SQLite store.

use super::*;
use crate::store::Store;

type TestResult = anyhow::Result<()>;

const HEX: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn lel_and_e2b_prefixes_are_the_same_key() -> TestResult {
    assert_eq!(canonicalize(&format!("lel_{HEX}"))?, HEX);
    assert_eq!(canonicalize(&format!("e2b_{HEX}"))?, HEX);
    // Hex is case-insensitive and surrounding whitespace is ignored.
    assert_eq!(
        canonicalize(&format!(" e2b_{} \n", HEX.to_uppercase()))?,
        HEX
    );

    let store = Store::open_in_memory()?;
    let (key, record) = create(&store, "laptop")?;
    let hex = key
        .strip_prefix("lel_")
        .ok_or_else(|| anyhow::anyhow!("new key lacks lel_"))?;
    assert_eq!(authenticate(&store, &key)?.id, record.id);
    assert_eq!(authenticate(&store, &format!("e2b_{hex}"))?.id, record.id);
    assert_eq!(
        authenticate(&store, &format!("e2b_{}", hex.to_uppercase()))?.id,
        record.id
    );
    Ok(())
}

#[test]
fn bad_formats_are_rejected() {
    let long = format!("lel_{HEX}0");
    let short = format!("lel_{}", &HEX[1..]);
    let not_hex = format!("lel_{}g", &HEX[1..]);
    let cases: [(&str, FormatError); 9] = [
        ("", FormatError::Prefix),
        ("lel_", FormatError::Length),
        ("e2b_", FormatError::Length),
        (HEX, FormatError::Prefix),
        (&long, FormatError::Length),
        (&short, FormatError::Length),
        (&not_hex, FormatError::NotHex),
        (
            "LEL_0123456789abcdef0123456789abcdef01234567",
            FormatError::Prefix,
        ),
        (
            "sk_0123456789abcdef0123456789abcdef01234567",
            FormatError::Prefix,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(canonicalize(input), Err(want), "{input:?}");
    }
    // Multi-byte input is refused as non-hex, not sliced mid-character.
    assert_eq!(
        canonicalize("lel_ééééééééééééééééééää"),
        Err(FormatError::NotHex)
    );
}

#[test]
fn authenticate_distinguishes_malformed_unknown_and_revoked() -> TestResult {
    let store = Store::open_in_memory()?;
    assert!(matches!(
        authenticate(&store, "Bearer x"),
        Err(AuthError::Malformed(FormatError::Prefix))
    ));
    assert!(matches!(
        authenticate(&store, &format!("lel_{HEX}")),
        Err(AuthError::Unknown)
    ));
    let (key, record) = create(&store, "ci")?;
    assert_eq!(record.last_used_at_ms, None);
    let used = authenticate(&store, &key)?;
    assert!(used.last_used_at_ms.is_some());
    assert_eq!(list(&store)?[0].last_used_at_ms, used.last_used_at_ms);

    let revoked = revoke(&store, &record.id.to_string())?;
    assert!(revoked.is_revoked());
    assert!(matches!(
        authenticate(&store, &key),
        Err(AuthError::Revoked { id }) if id == record.id
    ));
    // Revoking again keeps the first revocation.
    assert_eq!(revoke(&store, &record.id.to_string())?, revoked);
    Ok(())
}

#[test]
fn revoke_by_hint_and_refuse_ambiguity() -> TestResult {
    let store = Store::open_in_memory()?;
    let (key_a, a) = create(&store, "a")?;
    let (_, b) = create(&store, "b")?;
    // Make b's hint collide with a's, as 4 hex characters eventually will.
    store.conn().execute(
        "UPDATE api_keys SET prefix_hint = ?1 WHERE id = ?2",
        rusqlite::params![a.hint, b.id],
    )?;
    assert!(matches!(
        revoke(&store, &a.hint),
        Err(Error::AmbiguousKey { ids, .. }) if ids == vec![a.id, b.id]
    ));
    revoke(&store, &b.id.to_string())?;
    // Only one active key has the hint now; the displayed form works too.
    let revoked = revoke(&store, &a.display_hint())?;
    assert_eq!(revoked.id, a.id);
    assert!(authenticate(&store, &key_a).is_err());
    assert!(matches!(
        revoke(&store, "zzzz"),
        Err(Error::KeyNotFound { .. })
    ));
    Ok(())
}

#[test]
fn names_are_validated() -> TestResult {
    let store = Store::open_in_memory()?;
    for bad in ["", "  ", "a\nb", &"x".repeat(65)] {
        assert!(
            matches!(create(&store, bad), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
    assert!(list(&store)?.is_empty());
    Ok(())
}

#[test]
fn keys_are_unique_and_well_formed() -> TestResult {
    let store = Store::open_in_memory()?;
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let (key, record) = create(&store, &format!("k{i}"))?;
        let hex = canonicalize(&key)?;
        assert_eq!(format!("lel_{hex}"), key);
        assert!(key.ends_with(&record.hint));
        assert!(seen.insert(key));
    }
    Ok(())
}

#[test]
fn plaintext_is_never_stored() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = {
        let store = Store::open(dir.path())?;
        let (key, _) = create(&store, "secret")?;
        authenticate(&store, &key)?;
        key
    };
    let hex = canonicalize(&key)?;
    // Scan the database and whatever WAL/shm files remain, as raw bytes.
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir.path())? {
        let bytes = std::fs::read(entry?.path())?;
        scanned += 1;
        for needle in [hex.as_bytes(), hex.to_uppercase().as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "plaintext key found on disk"
            );
        }
    }
    assert!(scanned >= 1);
    // And the hash really is what is stored.
    let store = Store::open(dir.path())?;
    let stored: String = store
        .conn()
        .query_row("SELECT key_hash FROM api_keys", [], |r| r.get(0))?;
    assert_eq!(stored, hash_canonical(&hex));
    assert_eq!(stored.len(), 64);
    Ok(())
}
