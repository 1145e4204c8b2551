//! Non-blocking I/O on a PTY master through tokio's reactor.

use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// The envd side of a pseudo-terminal.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Wraps a master already set to non-blocking mode.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and
        // refers to the same description until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Reads what the terminal printed. `Ok(0)` once every slave end closed
    /// (Linux reports that as EIO).
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref().as_fd(), buf).map_err(std::io::Error::from)
            }) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| {
                nix::unistd::write(inner.get_ref(), data).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Sets the terminal size.
    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        super::spawn::resize(self.fd.get_ref(), cols, rows)
    }
}
