//! Per-VM networking: every VM lives in its own network namespace.
//!
//! ```text
//!   host netns                    │ netns lel-<vm>
//!   lelantos ──(socket created    │   tap0 169.254.0.22/30 ── guest eth0 169.254.0.21/30
//!              inside the netns)──┼─▶ guest :49983, any guest port
//! ```
//!
//! Every namespace uses the same addresses, so a VM snapshot restores into a
//! new namespace unchanged (the guest's network state comes back intact),
//! and no two sandboxes can reach each other or the host: there is no route
//! out of a namespace unless egress is switched on ([`egress`]). The host
//! reaches a guest by creating its socket inside the VM's namespace
//! ([`connect`]); nothing about guests is routed in the host namespace.

pub mod egress;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Guest address inside its namespace.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// Host end of the tap, the guest's gateway.
pub const TAP_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// Prefix length of the guest link.
pub const PREFIX: u8 = 30;
/// Guest MAC address, the same for every VM and both drivers: each VM sits
/// alone on its own link, and a restored snapshot must find the same NIC.
pub const GUEST_MAC: &str = "06:00:ac:10:00:02";
/// Tap device name (the same in every namespace).
pub const TAP: &str = "tap0";
/// Prefix of the namespaces this layer owns.
pub const NETNS_PREFIX: &str = "lel-";

/// Networking errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `ip`/`nft` command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A command could not be run at all.
    #[error("run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Entering the namespace or connecting inside it failed.
    #[error("connect to {addr} in netns {netns}")]
    Connect {
        /// Namespace.
        netns: String,
        /// Target.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs a command, mapping failure to [`Error`].
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    run_with_input(program, args, None).await
}

/// Runs a command with `input` on its stdin (when given); returns stdout.
pub(crate) async fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, Error> {
    use tokio::io::AsyncWriteExt as _;
    let command = format!("{program} {}", args.join(" "));
    let spawn_err = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A VM's network namespace with its tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetwork {
    /// Namespace name (`lel-<lifecycle id>`).
    pub netns: String,
    /// Whether egress (NAT) was set up.
    pub egress: bool,
}

impl VmNetwork {
    /// Namespace name for a VM.
    pub fn netns_name(vm: &str) -> String {
        format!("{NETNS_PREFIX}{vm}")
    }

    /// Creates the namespace, brings up `lo` and the tap. Idempotent: an
    /// existing namespace of the same name is reused (adoption after a crash).
    pub async fn create(vm: &str, egress: bool) -> Result<Self, Error> {
        let netns = Self::netns_name(vm);
        if !Self::exists(&netns) {
            run("ip", &["netns", "add", &netns]).await?;
        }
        let tap_addr = format!("{TAP_IP}/{PREFIX}");
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]).await?;
        if run("ip", &["-n", &netns, "link", "show", TAP])
            .await
            .is_err()
        {
            run(
                "ip",
                &["-n", &netns, "tuntap", "add", "dev", TAP, "mode", "tap"],
            )
            .await?;
            run("ip", &["-n", &netns, "addr", "add", &tap_addr, "dev", TAP]).await?;
        }
        run("ip", &["-n", &netns, "link", "set", TAP, "up"]).await?;
        let net = Self { netns, egress };
        if egress {
            egress::enable(&net).await?;
        }
        Ok(net)
    }

    /// Whether a namespace exists.
    pub fn exists(netns: &str) -> bool {
        Self::path_of(netns).exists()
    }

    fn path_of(netns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(netns)
    }

    /// Path of the namespace handle (for `setns`).
    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.netns)
    }

    /// Removes the namespace (and with it the tap). Idempotent.
    pub async fn destroy(&self) -> Result<(), Error> {
        if self.egress {
            egress::disable(self).await?;
        }
        if Self::exists(&self.netns) {
            run("ip", &["netns", "delete", &self.netns]).await?;
        }
        Ok(())
    }

    /// Kernel arguments that configure the guest's side (envd reads them).
    pub fn guest_cmdline(&self) -> Vec<String> {
        let mut args = vec![
            format!("envd.ip={GUEST_IP}/{PREFIX}"),
            format!("envd.gw={TAP_IP}"),
        ];
        if self.egress {
            args.push("envd.dns=1.1.1.1".to_owned());
        }
        args
    }

    /// Opens a TCP connection to `port` on the guest, from inside the namespace.
    pub async fn connect(
        &self,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, Error> {
        connect(&self.netns, SocketAddr::from((GUEST_IP, port)), timeout).await
    }
}

/// Connects to `addr` with a socket created inside namespace `netns`.
///
/// A socket belongs to the namespace it was created in, so a short-lived
/// thread enters the namespace, connects, and hands the socket back; the
/// daemon's own threads never change namespace.
pub async fn connect(
    netns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, Error> {
    let path = VmNetwork::path_of(netns);
    let name = netns.to_owned();
    let err = move |source| Error::Connect {
        netns: name.clone(),
        addr,
        source,
    };
    // A dedicated thread enters the namespace and is then discarded; a
    // blocking-pool thread would be reused and stay in the wrong namespace.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let connected = (|| -> std::io::Result<std::net::TcpStream> {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })();
        let _ = tx.send(connected);
    });
    let std_stream = rx
        .await
        .map_err(|_| {
            err(std::io::Error::other(
                "connect thread ended without an answer",
            ))
        })?
        .map_err(err.clone())?;
    tokio::net::TcpStream::from_std(std_stream).map_err(err)
}

/// Whether any process runs inside namespace `netns` (a VMM does while its
/// VM lives). Unknown namespaces count as empty.
pub async fn has_processes(netns: &str) -> bool {
    run("ip", &["netns", "pids", netns])
        .await
        .is_ok_and(|out| out.split_whitespace().next().is_some())
}

/// Namespaces this layer created (by prefix), for leftover cleanup.
pub async fn list_owned() -> Result<Vec<String>, Error> {
    let out = run("ip", &["netns", "list"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .map(str::to_owned)
        .collect())
}
