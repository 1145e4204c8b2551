//! How a finished process is reported: the `EndEvent` fields exactly as
//! E2B's envd fills them (Go `ProcessState` wording), which is what the SDKs
//! turn into `CommandResult` / `CommandExitException`.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use envd_protocol::process::process_event::EndEvent;

/// Builds the end event for `status`.
pub fn end_event(status: ExitStatus) -> EndEvent {
    let (exit_code, exited, text) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, true, format!("exit status {code}")),
        (None, Some(sig)) => {
            let mut text = format!("signal: {}", signal_name(sig));
            if status.core_dumped() {
                text.push_str(" (core dumped)");
            }
            (-1, false, text)
        }
        (None, None) => (-1, false, "unknown exit status".to_owned()),
    };
    EndEvent {
        exit_code,
        exited,
        error: (exit_code != 0).then(|| text.clone()),
        status: text,
        ..EndEvent::default()
    }
}

/// Go's `syscall.Signal.String()` wording for the common Linux signals.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGUSR2 => "user defined signal 2",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_and_signal_wording() {
        let ok = end_event(ExitStatus::from_raw(0));
        assert_eq!(
            (ok.exit_code, ok.exited, ok.status.as_str()),
            (0, true, "exit status 0")
        );
        assert_eq!(ok.error, None);
        let three = end_event(ExitStatus::from_raw(3 << 8));
        assert_eq!(three.exit_code, 3);
        assert_eq!(three.error.as_deref(), Some("exit status 3"));
        let killed = end_event(ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!((killed.exit_code, killed.exited), (-1, false));
        assert_eq!(killed.status, "signal: killed");
        assert_eq!(killed.error.as_deref(), Some("signal: killed"));
    }
}
