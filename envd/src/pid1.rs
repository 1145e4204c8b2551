//! PID-1 mode: envd as the VM's init.
//!
//! ```text
//!   kernel ─▶ envd (pid 1) ── setup(): mounts, hostname, lo + eth0, default user
//!                │
//!                ├── fork ─▶ envd server (pid 2…): serves, spawns processes, reaps its own children
//!                │
//!                └── supervise(): reaps orphans; SIGTERM → forwarded to the server;
//!                                 server gone → sync + power off
//! ```
//!
//! The server runs in a child so that PID 1's blanket `waitpid(-1)` never
//! steals the exit status of a process the server is waiting on.
//! Network settings come from the kernel command line:
//! `envd.ip=10.0.0.2/30 envd.gw=10.0.0.1 envd.dns=1.1.1.1 envd.hostname=sbx`.

use std::net::Ipv4Addr;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::config::EnvdConfig;

/// Errors of the init-mode setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mount failed.
    #[error("mount {target}")]
    Mount {
        /// Mount point.
        target: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Configuring an interface failed.
    #[error("configure interface {iface}")]
    Network {
        /// Interface name.
        iface: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Creating the default user failed.
    #[error("create user {user}")]
    User {
        /// User name.
        user: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// fork failed.
    #[error("fork the server process")]
    Fork(#[source] nix::Error),
}

/// Network and identity settings read from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// Address and prefix length of eth0.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// DNS server for /etc/resolv.conf.
    pub dns: Option<Ipv4Addr>,
    /// Hostname.
    pub hostname: Option<String>,
}

impl BootParams {
    /// Parses the `envd.*` keys of a kernel command line; unknown keys and
    /// malformed values are ignored (logged by the caller).
    pub fn parse(cmdline: &str) -> Self {
        let mut p = Self::default();
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "envd.ip" => {
                    p.ip = value.split_once('/').and_then(|(a, l)| {
                        Some((a.parse().ok()?, l.parse().ok().filter(|l: &u8| *l <= 32)?))
                    });
                }
                "envd.gw" => p.gateway = value.parse().ok(),
                "envd.dns" => p.dns = value.parse().ok(),
                "envd.hostname" => p.hostname = Some(value.to_owned()),
                _ => {}
            }
        }
        p
    }
}

/// Prepares the VM: mounts, hostname, network, default user. Runs before
/// any thread exists (it is followed by a fork).
pub fn setup(config: &EnvdConfig) -> Result<(), Error> {
    mount_all()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = BootParams::parse(&cmdline);
    let hostname = params
        .hostname
        .clone()
        .unwrap_or_else(|| "sandbox".to_owned());
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        eprintln!("envd: sethostname: {e}");
    }
    // Tools such as sudo resolve their own hostname; without an /etc/hosts
    // entry that becomes a DNS query that hangs in a sandbox without egress.
    if let Err(e) = ensure_hosts_entry(Path::new("/etc/hosts"), &hostname) {
        eprintln!("envd: /etc/hosts: {e}");
    }
    net::configure("lo", Some((Ipv4Addr::LOCALHOST, 8)), None)?;
    if let Some(ip) = params.ip {
        net::configure("eth0", Some(ip), params.gateway)?;
    }
    if let Some(dns) = params.dns {
        let _ = std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"));
    }
    ensure_user(&config.default_user)?;
    let _ = std::fs::create_dir_all(&config.run_dir);
    Ok(())
}

fn mount_all() -> Result<(), Error> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&'static str, &str, MsFlags, Option<&str>); 7] = [
        ("/proc", "proc", nodev, None),
        ("/sys", "sysfs", nodev, None),
        ("/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (target, fstype, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            // Already mounted (e.g. devtmpfs by the kernel, or by an initramfs).
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => return Err(Error::Mount { target, source }),
        }
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    Ok(())
}

/// Makes `/etc/hosts` map `hostname` to 127.0.1.1 (Debian's convention),
/// replacing an older 127.0.1.1 line.
pub fn ensure_hosts_entry(hosts: &Path, hostname: &str) -> std::io::Result<()> {
    let current = std::fs::read_to_string(hosts).unwrap_or_default();
    let wanted = format!("127.0.1.1\t{hostname}");
    if current.lines().any(|l| l == wanted) {
        return Ok(());
    }
    let mut lines: Vec<&str> = current
        .lines()
        .filter(|l| !l.starts_with("127.0.1.1"))
        .collect();
    if !lines.iter().any(|l| l.starts_with("127.0.0.1")) {
        lines.insert(0, "127.0.0.1\tlocalhost");
    }
    lines.push(&wanted);
    std::fs::write(hosts, lines.join("\n") + "\n")
}

/// Forks the server. Returns in the child (the server); never returns in
/// PID 1, which supervises until the server exits and then powers off.
pub fn fork_server() -> Result<(), Error> {
    let mut handled = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        handled.add(s);
    }
    // Block before fork so no signal is lost between fork and sigwait.
    let _ = handled.thread_block();
    // SAFETY: called from main before any other thread exists.
    match unsafe { nix::unistd::fork() }.map_err(Error::Fork)? {
        ForkResult::Child => {
            let _ = handled.thread_unblock();
            Ok(())
        }
        ForkResult::Parent { child } => supervise(child, &handled),
    }
}

fn supervise(server: Pid, handled: &SigSet) -> ! {
    loop {
        match handled.wait() {
            Ok(Signal::SIGCHLD) => {
                if reap_all(server) {
                    power_off();
                }
            }
            Ok(sig) => {
                let _ = nix::sys::signal::kill(server, sig);
            }
            Err(_) => {}
        }
    }
}

/// Reaps every exited child; true when the server was among them.
fn reap_all(server: Pid) -> bool {
    let mut server_gone = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return server_gone,
            Ok(status) => {
                if status.pid() == Some(server) {
                    eprintln!("envd: server exited ({status:?})");
                    server_gone = true;
                }
            }
        }
    }
}

/// Creates `name` (uid 1000 or the next free id, home /home/<name>,
/// passwordless sudo) when the rootfs lacks it.
pub fn ensure_user(name: &str) -> Result<(), Error> {
    let err = |source| Error::User {
        user: name.to_owned(),
        source,
    };
    let accounts = crate::users::Accounts::load().map_err(|e| err(std::io::Error::other(e)))?;
    if name == "root" || accounts.user(name).is_ok() {
        return Ok(());
    }
    let taken = accounts.uids();
    let id = (1000..60000)
        .find(|id| !taken.values().any(|u| u == id))
        .unwrap_or(1000);
    let home = format!("/home/{name}");
    append(
        "/etc/passwd",
        &format!("{name}:x:{id}:{id}::{home}:/bin/bash\n"),
    )
    .map_err(err)?;
    append("/etc/group", &format!("{name}:x:{id}:\n")).map_err(err)?;
    if Path::new("/etc/shadow").exists() {
        append("/etc/shadow", &format!("{name}:!:19000:0:99999:7:::\n")).map_err(err)?;
    }
    if Path::new("/etc/sudoers.d").is_dir() {
        std::fs::write(
            format!("/etc/sudoers.d/{name}"),
            format!("{name} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
        )
        .map_err(err)?;
    }
    std::fs::create_dir_all(&home).map_err(err)?;
    std::os::unix::fs::chown(&home, Some(id), Some(id)).map_err(err)?;
    Ok(())
}

fn append(path: &str, line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

/// Flushes filesystems and powers the VM off.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot(2) only returns on failure; PID 1 must never exit.
    loop {
        std::thread::park();
    }
}

mod net {
    //! IPv4 interface setup through the classic ioctls, so init needs no
    //! `ip` binary in the rootfs.

    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::Error;

    fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            // AF_INET is 2: it fits sa_family_t.
            #[allow(clippy::cast_possible_truncation)]
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size on Linux and
        // sockaddr is plain old data.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    }

    fn ifreq(iface: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req
            .ifr_name
            .iter_mut()
            .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src.cast_signed();
        }
        req
    }

    fn ioctl(fd: &OwnedFd, request: libc::Ioctl, arg: *mut libc::c_void) -> std::io::Result<()> {
        // SAFETY: `fd` is an open socket and `arg` points to the struct the request expects.
        if unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Brings `iface` up with `addr/prefix` and, optionally, a default route.
    pub fn configure(
        iface: &str,
        addr: Option<(Ipv4Addr, u8)>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let err = |source| Error::Network {
            iface: iface.to_owned(),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some((ip, prefix)) = addr {
            let mut req = ifreq(iface);
            req.ifr_ifru.ifru_addr = sockaddr(ip);
            ioctl(&sock, libc::SIOCSIFADDR, (&raw mut req).cast()).map_err(err)?;
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            let mut req = ifreq(iface);
            req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
            ioctl(&sock, libc::SIOCSIFNETMASK, (&raw mut req).cast()).map_err(err)?;
        }
        let mut req = ifreq(iface);
        ioctl(&sock, libc::SIOCGIFFLAGS, (&raw mut req).cast()).map_err(err)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        // IFF_UP | IFF_RUNNING is 0x41: it fits the short flags field.
        #[allow(clippy::cast_possible_truncation)]
        let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        req.ifr_ifru.ifru_flags = flags | up;
        ioctl(&sock, libc::SIOCSIFFLAGS, (&raw mut req).cast()).map_err(err)?;
        if let Some(gw) = gateway {
            // SAFETY: rtentry is plain old data; all-zero is a valid value.
            let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
            rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_gateway = sockaddr(gw);
            rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
            match ioctl(&sock, libc::SIOCADDRT, (&raw mut rt).cast()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_entry_is_added_once_and_replaces_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost\n",
        )
        .unwrap();
        ensure_hosts_entry(&hosts, "sbx1").unwrap();
        ensure_hosts_entry(&hosts, "sbx1").unwrap();
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert_eq!(
            text,
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\tsbx1\n"
        );
    }

    #[test]
    fn boot_params_from_cmdline() {
        let p = BootParams::parse(
            "console=ttyS0 quiet envd.ip=10.200.0.2/30 envd.gw=10.200.0.1 envd.dns=1.1.1.1 envd.hostname=sbx1",
        );
        assert_eq!(p.ip, Some((Ipv4Addr::new(10, 200, 0, 2), 30)));
        assert_eq!(p.gateway, Some(Ipv4Addr::new(10, 200, 0, 1)));
        assert_eq!(p.dns, Some(Ipv4Addr::new(1, 1, 1, 1)));
        assert_eq!(p.hostname.as_deref(), Some("sbx1"));
        let bad = BootParams::parse("envd.ip=10.0.0.1/40 envd.gw=nope");
        assert_eq!(bad, BootParams::default());
    }
}
