//! `lelantos keys create|list|revoke`: thin printing wrappers for main.rs.
//!
//! `create` prints the new key as the very last line of stdout, so scripts
//! can take it with `tail -n 1`; everything else goes before it.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use crate::store::Store;

use super::KeyRecord;

/// Creates a key in the store under `data_dir` and prints it last.
pub fn create(data_dir: &Path, name: &str) -> anyhow::Result<()> {
    create_to(&mut std::io::stdout().lock(), data_dir, name)
}

/// Lists keys (never plaintext) in the store under `data_dir`.
pub fn list(data_dir: &Path) -> anyhow::Result<()> {
    list_to(&mut std::io::stdout().lock(), data_dir)
}

/// Revokes a key by id or hint in the store under `data_dir`.
pub fn revoke(data_dir: &Path, id_or_hint: &str) -> anyhow::Result<()> {
    revoke_to(&mut std::io::stdout().lock(), data_dir, id_or_hint)
}

fn open(data_dir: &Path) -> anyhow::Result<Store> {
    Store::open(data_dir).with_context(|| format!("open state in {}", data_dir.display()))
}

/// [`create`], writing to `out`.
pub fn create_to(out: &mut impl Write, data_dir: &Path, name: &str) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    let (key, record) = super::create(&store, name).context("create api key")?;
    writeln!(
        out,
        "created api key {} ({}) {}",
        record.id,
        record.name,
        record.display_hint()
    )?;
    writeln!(
        out,
        "it is shown only now; use it as X-API-Key or E2B_API_KEY (an e2b_ prefix works too)"
    )?;
    writeln!(out, "{key}")?;
    out.flush()?;
    Ok(())
}

/// [`list`], writing to `out`.
pub fn list_to(out: &mut impl Write, data_dir: &Path) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    let keys = super::list(&store).context("list api keys")?;
    if keys.is_empty() {
        writeln!(
            out,
            "no api keys; create one with `lelantos keys create <name>`"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<6} {:<20} {:<10} {:<20} {:<20} REVOKED",
        "ID", "NAME", "KEY", "CREATED", "LAST USED"
    )?;
    for k in &keys {
        writeln!(out, "{}", row(k))?;
    }
    Ok(())
}

fn row(k: &KeyRecord) -> String {
    let opt = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), rfc3339);
    format!(
        "{:<6} {:<20} {:<10} {:<20} {:<20} {}",
        k.id,
        k.name,
        k.display_hint(),
        rfc3339(k.created_at_ms),
        opt(k.last_used_at_ms),
        opt(k.revoked_at_ms)
    )
}

/// [`revoke`], writing to `out`.
pub fn revoke_to(out: &mut impl Write, data_dir: &Path, id_or_hint: &str) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    let k = super::revoke(&store, id_or_hint).context("revoke api key")?;
    writeln!(
        out,
        "revoked api key {} ({}) {}",
        k.id,
        k.name,
        k.display_hint()
    )?;
    Ok(())
}

/// Formats unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without
/// pulling a date crate into the daemon for one column.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599_999), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn create_prints_the_key_last_and_list_never_does() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut out = Vec::new();
        create_to(&mut out, dir.path(), "ci")?;
        let text = String::from_utf8(out)?;
        let last = text.lines().last().unwrap_or_default();
        assert!(text.ends_with('\n'));
        assert_eq!(last.len(), 4 + super::super::HEX_LEN);
        assert!(last.starts_with("lel_"));
        super::super::canonicalize(last)?;

        let mut listed = Vec::new();
        list_to(&mut listed, dir.path())?;
        let listed = String::from_utf8(listed)?;
        assert!(listed.contains("ci"));
        assert!(!listed.contains(&last[4..]));

        let mut revoked = Vec::new();
        revoke_to(&mut revoked, dir.path(), "1")?;
        assert!(String::from_utf8(revoked)?.starts_with("revoked api key 1"));
        Ok(())
    }
}
