//! The egress switch: when on, a VM's namespace gets a veth link to the
//! host and two NAT steps take its traffic out; when off (the default)
//! there is simply no link.
//!
//! ```text
//!  guest 169.254.0.21 ─tap0─ [netns: masquerade → 10.201.a.b+2] ─veth─ lv-N 10.201.a.b+1 ─[host: masquerade]─▶ world
//! ```
//!
//! Host-side rules (table `ip lelantos`, created once, idempotent): traffic
//! from any `lv-*` link may be forwarded out, but never to another `lv-*`
//! link (sandbox → sandbox) and never delivered to the host itself (the
//! appliance's API and proxy ports). Deleting the namespace deletes the veth
//! pair, so there is nothing per VM to undo on the host.

use std::net::Ipv4Addr;

use super::{Error, VmNetwork, run, run_with_input};

/// Host-side veth names: `lv-<index>`.
const HOST_PREFIX: &str = "lv-";
/// Namespace-side veth name.
const NS_VETH: &str = "veth0";
/// Number of /30 links in 10.201.0.0/16.
const SLOTS: u32 = 16384;

/// Serialises slot allocation within this process.
static ALLOC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HOST_RULES: &str = r#"
table ip lelantos {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.201.0.0/16 oifname != "lv-*" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "lv-*" oifname "lv-*" drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "lv-*" drop
  }
}
"#;

/// Addresses of slot `n`: (host end, namespace end), both /30.
pub fn slot_addrs(n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + n * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

async fn used_slots() -> Result<Vec<u32>, Error> {
    let out = run("ip", &["-o", "link", "show", "type", "veth"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter_map(|name| {
            name.trim()
                .split('@')
                .next()?
                .strip_prefix(HOST_PREFIX)?
                .parse()
                .ok()
        })
        .collect())
}

async fn ensure_host_rules() -> Result<(), Error> {
    run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]).await?;
    if run("nft", &["list", "table", "ip", "lelantos"])
        .await
        .is_err()
    {
        nft_script(None, HOST_RULES).await?;
    }
    Ok(())
}

async fn nft_script(netns: Option<&str>, script: &str) -> Result<(), Error> {
    match netns {
        Some(ns) => {
            run_with_input("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).await
        }
        None => run_with_input("nft", &["-f", "-"], Some(script)).await,
    }
    .map(drop)
}

/// Connects `net`'s namespace to the host and NATs its traffic out.
pub async fn enable(net: &VmNetwork) -> Result<(), Error> {
    ensure_host_rules().await?;
    let ns = net.netns.as_str();
    if run("ip", &["-n", ns, "link", "show", NS_VETH])
        .await
        .is_ok()
    {
        return Ok(()); // already enabled (adoption)
    }
    let _guard = ALLOC.lock().await;
    let used = used_slots().await?;
    let slot = (0..SLOTS)
        .find(|n| !used.contains(n))
        .ok_or_else(|| Error::Command {
            command: "allocate egress link".to_owned(),
            stderr: "all egress links are in use".to_owned(),
        })?;
    let host_if = format!("{HOST_PREFIX}{slot}");
    let (host_ip, ns_ip) = slot_addrs(slot);
    run(
        "ip",
        &[
            "link", "add", &host_if, "type", "veth", "peer", "name", NS_VETH, "netns", ns,
        ],
    )
    .await?;
    run(
        "ip",
        &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
    )
    .await?;
    run("ip", &["link", "set", &host_if, "up"]).await?;
    run(
        "ip",
        &[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            NS_VETH,
        ],
    )
    .await?;
    run("ip", &["-n", ns, "link", "set", NS_VETH, "up"]).await?;
    run(
        "ip",
        &[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &host_ip.to_string(),
        ],
    )
    .await?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
    )
    .await?;
    let ns_rules = format!(
        "table ip lelantos {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{NS_VETH}\" masquerade\n  }}\n}}\n"
    );
    nft_script(Some(ns), &ns_rules).await
}

/// Nothing to undo on the host: deleting the namespace removes the veth pair.
pub async fn disable(_net: &VmNetwork) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_slash_30s() {
        assert_eq!(
            slot_addrs(0),
            (Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2))
        );
        assert_eq!(
            slot_addrs(1),
            (Ipv4Addr::new(10, 201, 0, 5), Ipv4Addr::new(10, 201, 0, 6))
        );
        assert_eq!(
            slot_addrs(SLOTS - 1),
            (
                Ipv4Addr::new(10, 201, 255, 253),
                Ipv4Addr::new(10, 201, 255, 254)
            )
        );
    }
}
