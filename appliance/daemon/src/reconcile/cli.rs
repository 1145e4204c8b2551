//! `lelantos status`: the reconciler's view, read straight from the state
//! database (no daemon round trip, no API key: it runs on the host).

use std::io::Write;
use std::path::Path;

use crate::store::{self, Store};

/// Prints one line per template (and the source) to `out`.
pub fn print_status(out: &mut impl Write, data_dir: &Path) -> anyhow::Result<()> {
    let store = Store::open(data_dir)?;
    let rows = store::template_status::list(store.conn())?;
    if rows.is_empty() {
        writeln!(
            out,
            "no reconcile pass recorded yet (is `lelantos serve` running on {}?)",
            data_dir.display()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<12} {:<18} {:<14} {:<14} {:>4}  MESSAGE",
        "TEMPLATE", "STATUS", "REASON", "REVISION", "BUILD", "POOL"
    )?;
    for r in rows {
        let name = if r.name.is_empty() {
            "(source)".to_owned()
        } else {
            r.name
        };
        let short = |s: Option<String>| {
            s.map(|v| {
                let v = v.strip_prefix("git:").map(str::to_owned).unwrap_or(v);
                v.chars().take(12).collect::<String>()
            })
            .unwrap_or_else(|| "-".to_owned())
        };
        writeln!(
            out,
            "{:<20} {:<12} {:<18} {:<14} {:<14} {:>4}  {}",
            name,
            r.phase,
            r.reason,
            short(r.revision),
            short(r.build_id),
            r.pool_desired,
            r.message.lines().next().unwrap_or("")
        )?;
    }
    Ok(())
}
