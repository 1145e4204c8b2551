//! The `lelantos` binary (wiring only).

fn main() -> anyhow::Result<()> {
    Ok(())
}
