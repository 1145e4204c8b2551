//! What this host offers the Cloud Hypervisor driver, for `lelantos doctor`
//! and for the driver's own choice of memory restore mode.
//!
//! Every answer comes from a real check (a file found, a device opened, a
//! syscall made), never from an assumption. None of them says a guest will
//! boot: that is only known once the driver has run on a KVM host, which is
//! why every report carries [`UNVERIFIED_NOTE`].

use std::ffi::OsStr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::config::MemoryRestoreMode;

/// The binary looked up on PATH.
pub const BINARY_NAME: &str = "cloud-hypervisor";

/// Attached to every report: the driver has been checked against the
/// published API schema, never against a running Cloud Hypervisor here.
pub const UNVERIFIED_NOTE: &str = "unverified: never booted on this host";

/// Whether `/dev/kvm` can be opened (not whether it can run a guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum KvmStatus {
    /// Opens read-write.
    Opens,
    /// Exists but does not open (permissions, or a broken device).
    NoAccess(String),
    /// Not there: no KVM on this host.
    Missing,
}

/// How a userfaultfd was obtained, in Cloud Hypervisor's own order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UffdRoute {
    /// `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW` (Linux 6.1+; gated by the
    /// device node's permissions only).
    Device,
    /// The `userfaultfd(2)` syscall (gated by `vm.unprivileged_userfaultfd`
    /// or `CAP_SYS_PTRACE`).
    Syscall,
}

/// Whether on-demand memory restore can work here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserfaultfdStatus {
    /// A userfaultfd was created and its API handshake succeeded.
    pub usable: bool,
    /// Which way it was created, when it was.
    pub route: Option<UffdRoute>,
    /// `/proc/sys/vm/unprivileged_userfaultfd`, when readable.
    pub unprivileged_sysctl: Option<bool>,
    /// Whether we run as root (the syscall route needs root or the sysctl).
    pub root: bool,
    /// Whether `/dev/userfaultfd` exists.
    pub device_node: bool,
    /// What happened, in words.
    pub detail: String,
}

/// The doctor's view of the driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Availability {
    /// The binary, when found.
    pub binary: Option<PathBuf>,
    /// Where it was found, or why not.
    pub binary_detail: String,
    /// `/dev/kvm`.
    pub kvm: KvmStatus,
    /// userfaultfd, for on-demand restore.
    pub userfaultfd: UserfaultfdStatus,
    /// Always [`UNVERIFIED_NOTE`].
    pub note: &'static str,
}

impl Availability {
    /// Whether the driver can be tried at all (binary present, KVM opens).
    pub fn can_run(&self) -> bool {
        self.binary.is_some() && self.kvm == KvmStatus::Opens
    }

    /// The restore mode the driver would pick here.
    pub fn restore_mode(&self) -> MemoryRestoreMode {
        restore_mode_for(&self.userfaultfd)
    }
}

/// `OnDemand` when a userfaultfd can be made, else `Copy`.
pub fn restore_mode_for(uffd: &UserfaultfdStatus) -> MemoryRestoreMode {
    if uffd.usable {
        MemoryRestoreMode::OnDemand
    } else {
        MemoryRestoreMode::Copy
    }
}

/// Checks everything. `configured` is an operator-set binary path, if any.
pub fn availability(configured: Option<&Path>) -> Availability {
    let (binary, binary_detail) = match find_binary(configured) {
        Ok(p) => {
            let d = format!("found at {}", p.display());
            (Some(p), d)
        }
        Err(why) => (None, why),
    };
    Availability {
        binary,
        binary_detail,
        kvm: kvm_status(),
        userfaultfd: probe_userfaultfd(),
        note: UNVERIFIED_NOTE,
    }
}

/// Finds the binary: the configured path if given (it must be an
/// executable file), else `cloud-hypervisor` on `$PATH`.
pub fn find_binary(configured: Option<&Path>) -> Result<PathBuf, String> {
    locate(configured, std::env::var_os("PATH").as_deref())
}

/// [`find_binary`] with the search path passed in (tests do not touch the
/// process environment).
pub fn locate(configured: Option<&Path>, path_var: Option<&OsStr>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(format!(
                "configured Cloud Hypervisor binary {} is not an executable file",
                p.display()
            ))
        };
    }
    path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(BINARY_NAME))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!("{BINARY_NAME} not found on PATH (install it, or configure its path)")
        })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Opens `/dev/kvm` read-write, as the VMM will.
pub fn kvm_status() -> KvmStatus {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => KvmStatus::Opens,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KvmStatus::Missing,
        Err(e) => KvmStatus::NoAccess(e.to_string()),
    }
}

// Kernel ABI (include/uapi/linux/userfaultfd.h).
/// `_IO(0xAA, 0x00)` on `/dev/userfaultfd`: returns a new userfaultfd.
const USERFAULTFD_IOC_NEW: libc::Ioctl = 0xAA00;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::Ioctl = 0xC018_AA3F;
/// The API version the handshake asks for.
const UFFD_API: u64 = 0xAA;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// Makes a userfaultfd the way Cloud Hypervisor does for on-demand restore
/// (device node first, then the syscall, both `O_CLOEXEC | O_NONBLOCK`,
/// without `UFFD_USER_MODE_ONLY`: KVM touches guest pages from kernel mode)
/// and completes the API handshake. The VMM runs with our credentials, so
/// what works here works for it.
pub fn probe_userfaultfd() -> UserfaultfdStatus {
    let unprivileged_sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .map(|v| v == 1);
    let root = nix::unistd::geteuid().is_root();
    let device_node = Path::new("/dev/userfaultfd").exists();
    let attempt = uffd_from_device()
        .map(|fd| (fd, UffdRoute::Device))
        .or_else(|dev_err| {
            uffd_from_syscall()
                .map(|fd| (fd, UffdRoute::Syscall))
                .map_err(|sys_err| (dev_err, sys_err))
        });
    let (usable, route, detail) = match attempt {
        Ok((fd, route)) => match handshake(&fd) {
            Ok(()) => (
                true,
                Some(route),
                format!("created via {route:?} and handshake done"),
            ),
            Err(e) => (
                false,
                Some(route),
                format!("created via {route:?} but UFFDIO_API failed: {e}"),
            ),
        },
        Err((dev_err, sys_err)) => (
            false,
            None,
            format!("/dev/userfaultfd: {dev_err}; userfaultfd(2): {sys_err}"),
        ),
    };
    UserfaultfdStatus {
        usable,
        route,
        unprivileged_sysctl,
        root,
        device_node,
        detail,
    }
}

fn uffd_from_device() -> std::io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags as a plain int and returns
    // a new descriptor or -1; `dev` stays open across the call.
    let fd = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            USERFAULTFD_IOC_NEW,
            libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn uffd_from_syscall() -> std::io::Result<OwnedFd> {
    // SAFETY: userfaultfd(2) takes one int of flags and returns a new
    // descriptor or -1; no memory is passed.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(raw).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn handshake(fd: &OwnedFd) -> std::io::Result<()> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: `api` is a live `struct uffdio_api` (repr(C), three u64s) for
    // the whole call; the kernel reads and writes only within it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn locate_finds_an_executable_on_the_search_path_only() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let path_var = std::env::join_paths([&empty, &bin]).unwrap();
        let err = locate(None, Some(&path_var)).unwrap_err();
        assert!(err.contains("not found on PATH"), "{err}");

        let exe = bin.join(BINARY_NAME);
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        assert!(locate(None, Some(&path_var)).is_err(), "not executable yet");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(locate(None, Some(&path_var)).unwrap(), exe);
        assert!(locate(None, None).is_err());
    }

    #[test]
    fn a_configured_path_wins_and_must_be_executable() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("ch");
        let missing = tmp.path().join("nope");
        assert!(
            locate(Some(&missing), None)
                .unwrap_err()
                .contains("not an executable file")
        );
        std::fs::write(&exe, "").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            locate(Some(&exe), Some(OsStr::new("/nonexistent"))).unwrap(),
            exe
        );
    }

    #[test]
    fn the_report_always_carries_the_unverified_note() {
        let a = availability(Some(Path::new("/nonexistent/cloud-hypervisor")));
        assert_eq!(a.note, UNVERIFIED_NOTE);
        assert!(a.binary.is_none());
        assert!(!a.can_run());
        // Whatever this host says about userfaultfd, the mode follows it.
        assert_eq!(
            a.restore_mode() == MemoryRestoreMode::OnDemand,
            a.userfaultfd.usable
        );
        assert!(!a.userfaultfd.detail.is_empty());
    }
}
