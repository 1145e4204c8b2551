//! Starting a child: as the request's user, in its own session (so signals
//! reach the whole tree), with pipes or a pseudo-terminal.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::users::User;

/// What to run, already resolved (user, cwd, environment).
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program.
    pub cmd: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Full environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory (must exist).
    pub cwd: PathBuf,
    /// Who to run as.
    pub user: User,
    /// Terminal size when a PTY is wanted.
    pub pty: Option<(u16, u16)>,
    /// Keep a stdin pipe open (ignored with a PTY).
    pub stdin: bool,
}

/// A started child and the ends envd keeps.
#[derive(Debug)]
pub struct Spawned {
    /// The child (tokio reaps it).
    pub child: Child,
    /// PTY master, when the child runs under a terminal.
    pub pty_master: Option<OwnedFd>,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The working directory is missing or not a directory.
    #[error("cwd '{0}' does not exist")]
    MissingCwd(PathBuf),
    /// Only root may start processes as another user.
    #[error("cannot run as user '{user}': envd is not running as root")]
    NotRoot {
        /// The requested user.
        user: String,
    },
    /// Opening the pseudo-terminal failed.
    #[error("open pty")]
    Pty(#[source] nix::Error),
    /// fork/exec failed (missing program, permission…).
    #[error("failed to start '{cmd}': {source}")]
    Exec {
        /// The program.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Starts the child described by `spec`.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, Error> {
    if !spec.cwd.is_dir() {
        return Err(Error::MissingCwd(spec.cwd.clone()));
    }
    let me = nix::unistd::getuid().as_raw();
    let switch_user = me != spec.user.uid;
    if switch_user && me != 0 {
        return Err(Error::NotRoot {
            user: spec.user.name.clone(),
        });
    }
    let mut cmd = Command::new(&spec.cmd);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .kill_on_drop(false);

    let mut pty_master = None;
    let mut slave_fd = None;
    if let Some((cols, rows)) = spec.pty {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).map_err(Error::Pty)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| Error::Exec {
                cmd: spec.cmd.clone(),
                source: e,
            })
        };
        cmd.stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(dup(&pty.slave)?));
        slave_fd = Some(pty.slave);
        pty_master = Some(pty.master);
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }

    let uid = spec.user.uid;
    let gid = spec.user.gid;
    let groups: Vec<nix::unistd::Gid> = std::iter::once(gid)
        .chain(spec.user.groups.iter().copied())
        .map(nix::unistd::Gid::from_raw)
        .collect();
    let with_pty = pty_master.is_some();
    let setup = ChildSetup {
        with_pty,
        switch_user,
        uid,
        gid,
        groups,
    };
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe syscalls; it allocates nothing (the group list
    // was built before the fork).
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    let child = cmd.spawn().map_err(|source| Error::Exec {
        cmd: spec.cmd.clone(),
        source,
    })?;
    // The parent must not keep the slave open, or reading the master never
    // reports EOF after the child's side closes.
    drop(slave_fd);
    if let Some(m) = &pty_master {
        set_nonblocking(m.as_raw_fd());
    }
    Ok(Spawned { child, pty_master })
}

/// What the child does between fork and exec.
struct ChildSetup {
    with_pty: bool,
    switch_user: bool,
    uid: u32,
    gid: u32,
    groups: Vec<nix::unistd::Gid>,
}

impl ChildSetup {
    fn apply(&self) -> std::io::Result<()> {
        // Own session and process group: signals go to the whole tree, and a
        // PTY can become the controlling terminal.
        nix::unistd::setsid().map_err(std::io::Error::from)?;
        if self.with_pty {
            // SAFETY: fd 0 is the PTY slave in the child; TIOCSCTTY takes an int argument.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if self.switch_user {
            nix::unistd::setgroups(&self.groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(self.gid))
                .map_err(std::io::Error::from)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(self.uid))
                .map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

fn set_nonblocking(fd: i32) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // SAFETY: `fd` is an open descriptor owned by the caller for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let Ok(flags) = fcntl(borrowed, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(borrowed, FcntlArg::F_SETFL(flags));
    }
}

/// Sets the terminal size of a PTY master.
pub fn resize(master: &OwnedFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `master` is an open PTY master; TIOCSWINSZ reads a winsize struct we own.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
