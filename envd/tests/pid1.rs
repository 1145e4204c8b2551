//! envd as PID 1, for real: run the built binary as the init of fresh
//! pid/mount/uts/net namespaces (what a VM boot looks like to it), talk to
//! it from inside its network namespace, and check that SIGTERM ends the
//! "machine" (reboot(2) in a pid namespace ends its init). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `curl` inside the network namespace of `pid`.
fn curl_in(pid: u32, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "curl",
            "-s",
            "--max-time",
            "5",
        ])
        .args(args)
        .output()
        .expect("nsenter + curl")
}

fn child_of(pid: u32) -> Option<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn envd_as_init_serves_runs_commands_and_powers_off_on_sigterm() {
    assert!(
        is_root(),
        "this test needs root (unshare of pid/mount/net namespaces); CI runs as root"
    );
    // Init edits /etc/hosts: give it a private copy (bind-mounted inside
    // its own mount namespace) so the host's file is never touched.
    let scratch = tempfile::tempdir().unwrap();
    let hosts = scratch.path().join("hosts");
    std::fs::copy("/etc/hosts", &hosts).unwrap();
    let host_hosts_before = std::fs::read("/etc/hosts").unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && exec {} --listen 127.0.0.1:49983 --default-user root",
        hosts.display(),
        env!("CARGO_BIN_EXE_envd")
    );
    let unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--net",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let unshare_pid = unshare.id();
    let mut guard = KillOnDrop(unshare);

    let deadline = Instant::now() + Duration::from_secs(20);
    let init_pid = loop {
        if let Some(pid) = child_of(unshare_pid) {
            let out = curl_in(
                pid,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:49983/health",
                ],
            );
            if String::from_utf8_lossy(&out.stdout) == "204" {
                break pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "envd as init never answered /health"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // Inside: our own hostname, /proc mounted, and the server is not pid 1.
    let body =
        r#"{"process":{"cmd":"/bin/sh","args":["-c","hostname; echo $$; cat /proc/1/comm"]}}"#;
    let out = curl_in(
        init_pid,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            r#"{}"#,
            "http://127.0.0.1:49983/process.Process/List",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{}");
    let framed = {
        let mut v = vec![0u8];
        v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        v.extend_from_slice(body.as_bytes());
        v
    };
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), framed).unwrap();
    let out = curl_in(
        init_pid,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/connect+json",
            "--data-binary",
            &format!("@{}", tmp.path().display()),
            "http://127.0.0.1:49983/process.Process/Start",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"exited\":true"),
        "command ran to completion: {text}"
    );
    // stdout is base64 of "sandbox\n<pid>\nenvd\n"
    use base64::Engine as _;
    let stdout: String = text
        .split("\"stdout\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|b| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
        })
        .collect();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"sandbox"),
        "hostname set by init: {stdout:?}"
    );
    assert_eq!(lines.get(2), Some(&"envd"), "pid 1 is envd: {stdout:?}");
    assert!(
        std::fs::read_to_string(&hosts)
            .unwrap()
            .contains("127.0.1.1\tsandbox"),
        "init maps its hostname"
    );
    assert_eq!(
        std::fs::read("/etc/hosts").unwrap(),
        host_hosts_before,
        "host file untouched"
    );

    // SIGTERM to init: the server drains, init syncs and "powers off".
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(init_pid).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            // unshare reports its child's death; any status means the namespace ended.
            let _ = status;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "init did not power off after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
