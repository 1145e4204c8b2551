//! Running the host tools the pipeline drives (apt, dpkg-deb, mmdebstrap,
//! mkfs.ext4) with their failures turned into errors that say what ran.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd as _;
use std::process::{Command, ExitStatus, Stdio};

/// Errors of running one external command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (usually: not installed).
    #[error("start {program}")]
    Spawn {
        /// Program name.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{program} failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        /// Program name.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of what it printed on stderr (empty when stderr was
        /// passed through to ours, where it has already been seen).
        stderr: String,
    },
}

impl Error {
    /// What the failed program printed on stderr, if it was captured.
    pub fn stderr(&self) -> &str {
        match self {
            Self::Spawn { .. } => "",
            Self::Failed { stderr, .. } => stderr,
        }
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Keeps the last lines of a tool's stderr: enough to see why it failed
/// without pasting a whole apt transcript into an error message.
fn tail(text: &[u8]) -> String {
    const KEEP_LINES: usize = 12;
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(KEEP_LINES);
    lines[start..].join("\n").trim().to_owned()
}

/// Runs `cmd` with captured output and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String, Error> {
    let program = program_name(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            program,
            status: out.status,
            stderr: tail(&out.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with its stderr and stdout both on our stderr, so a long
/// step's own progress shows while our stdout stays reserved for the result.
pub fn passthrough(cmd: &mut Command) -> Result<(), Error> {
    let program = program_name(cmd);
    let spawn_err = |source| Error::Spawn {
        program: program.clone(),
        source,
    };
    let stdout = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(spawn_err)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .status()
        .map_err(spawn_err)?;
    if !status.success() {
        return Err(Error::Failed {
            program,
            status,
            stderr: String::new(),
        });
    }
    Ok(())
}

/// Whether `program` can be found on `PATH`.
pub fn on_path(program: impl AsRef<OsStr>) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| dir.join(program.as_ref()).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr_tail() {
        let err = output(Command::new("sh").args(["-c", "echo one >&2; echo two >&2; exit 3"]))
            .expect_err("sh exits 3");
        assert_eq!(err.stderr(), "one\ntwo");
        let msg = err.to_string();
        assert!(msg.starts_with("sh failed"), "{msg}");
        assert!(msg.ends_with(": one\ntwo"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = output(&mut Command::new("lelantos-no-such-tool")).expect_err("not installed");
        assert!(matches!(err, Error::Spawn { .. }));
    }

    #[test]
    fn output_returns_stdout() {
        let out = output(Command::new("sh").args(["-c", "echo hi"])).expect("sh runs");
        assert_eq!(out, "hi\n");
    }
}
