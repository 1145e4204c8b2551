//! Real VMs under the QEMU driver: boot the `base` image, talk to envd,
//! isolation, pause/resume, snapshot/restore, teardown and adoption.
//! Run by the README's test command (`--ignored`, after images are built).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod common;

use std::time::{Duration, Instant};

use lelantos::vmm::{VmBackend as _, VmState};
use lelantos_core::LifecycleId;

#[tokio::test]
#[ignore = "boots a real VM: run by tests/run with images built"]
async fn boots_base_and_runs_a_command_through_envd() {
    let lab = common::Lab::new().await;
    let started = Instant::now();
    let vm = lab.boot().await;
    eprintln!("boot to envd healthy: {:?}", started.elapsed());
    let (code, out) = vm
        .run("echo hello; whoami; id -u; python --version; test -x /usr/bin/tput && echo tput")
        .await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1], "user", "default user");
    assert_eq!(lines[2], "1000");
    assert!(lines[3].starts_with("Python 3"), "{out}");
    assert_eq!(lines[4], "tput");
    let (code, _) = vm.run("exit 7").await;
    assert_eq!(code, 7);
    vm.shutdown(&lab.driver).await;
}

#[tokio::test]
#[ignore = "boots real VMs: run by tests/run with images built"]
async fn two_vms_cannot_reach_each_other_or_the_host() {
    let lab = common::Lab::new().await;
    let a = lab.boot().await;
    let b = lab.boot().await;
    // B serves on 8000; the host reaches it through B's namespace.
    b.start_detached("cd /tmp && exec python3 -m http.server 8000")
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.net().connect(8000, Duration::from_secs(1)).await.is_err() {
        assert!(Instant::now() < deadline, "B's server never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A host listener on all addresses of the host namespace.
    let host = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let host_port = host.local_addr().unwrap().port();
    let probe = format!(
        "for t in 169.254.0.21:8000 169.254.0.22:8000 169.254.0.22:{host_port} 127.0.0.1:{host_port}; do \
           curl -s -o /dev/null --max-time 3 http://$t/ && echo reached $t; done; echo done"
    );
    let (_, out) = a.run(&probe).await;
    assert_eq!(out.trim(), "done", "A reached something it must not: {out}");
    a.shutdown(&lab.driver).await;
    b.shutdown(&lab.driver).await;
}

#[tokio::test]
#[ignore = "boots a real VM: run by tests/run with images built"]
async fn pause_freezes_the_guest_and_resume_continues() {
    let lab = common::Lab::new().await;
    let mut vm = lab.boot().await;
    vm.start_detached("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done")
        .await;
    let read = |out: String| out.trim().parse::<u64>().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = 0;
    while before < 3 {
        before = read(vm.run("cat /tmp/counter 2>/dev/null || echo 0").await.1);
        assert!(Instant::now() < deadline, "counter never started");
    }
    lab.driver.pause(vm.vm()).await.unwrap();
    assert_eq!(vm.vm().state, VmState::Paused);
    // Frozen: envd does not answer, for as long as we look (3 s).
    let paused_at = Instant::now();
    while paused_at.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let res = vm
            .http("GET", "/health", None, &[], Duration::from_secs(1))
            .await;
        assert!(res.is_err(), "paused guest answered: {res:?}");
        // Not refused at once: the guest is there but does not run.
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "failed fast: {res:?}"
        );
    }
    lab.driver.resume(vm.vm()).await.unwrap();
    let after = read(vm.run("cat /tmp/counter").await.1);
    // 3 s paused at 10 ticks/s would be ~30 ticks if the guest had run on.
    assert!(
        after - before < 15,
        "counter advanced while paused: {before} -> {after}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = read(vm.run("cat /tmp/counter").await.1);
        if now > after {
            break;
        }
        assert!(Instant::now() < deadline, "counter stopped after resume");
    }
    vm.shutdown(&lab.driver).await;
}

#[tokio::test]
#[ignore = "boots a real VM: run by tests/run with images built"]
async fn snapshot_restores_files_and_processes_into_a_new_vm() {
    let lab = common::Lab::new().await;
    let mut vm = lab.boot().await;
    let (code, _) = vm
        .run("echo kept-across-restore > /home/user/state.txt && sync")
        .await;
    assert_eq!(code, 0);
    let pid = vm.start_detached("exec sleep 100000").await;
    assert!(vm.list().await.contains(&pid));
    lab.driver.pause(vm.vm()).await.unwrap();
    let snap = lab.root.path().join("snap");
    let t = Instant::now();
    lab.driver.snapshot(vm.vm(), &snap).await.unwrap();
    eprintln!("snapshot took {:?}", t.elapsed());
    vm.shutdown(&lab.driver).await;

    let mut spec = lab.spec();
    spec.lifecycle_id = LifecycleId::generate();
    let t = Instant::now();
    let restored = lab.driver.restore(&spec, &snap).await.unwrap();
    let restored = common::Guarded::new(restored);
    restored.wait_envd(Duration::from_secs(60)).await;
    eprintln!("restore to envd healthy: {:?}", t.elapsed());
    let (_, out) = restored.run("cat /home/user/state.txt").await;
    assert_eq!(out, "kept-across-restore\n");
    assert!(
        restored.list().await.contains(&pid),
        "background process survived the restore"
    );
    let (code, _) = restored.run(&format!("kill -0 {pid}")).await;
    assert_eq!(code, 0);
    restored.shutdown(&lab.driver).await;
}

#[tokio::test]
#[ignore = "boots a real VM: run by tests/run with images built"]
async fn shutdown_removes_process_namespace_and_disk() {
    let lab = common::Lab::new().await;
    let mut vm = lab.boot().await;
    let (pid, netns, dir) = {
        let v = vm.vm();
        (v.pid, v.net.netns.clone(), v.dir.path.clone())
    };
    assert!(dir.join("disk.qcow2").exists());
    let mut inner = vm.vm.take().unwrap();
    lab.driver.shutdown(&mut inner).await.unwrap();
    assert_eq!(inner.state, VmState::Stopped);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "qemu process gone"
    );
    assert!(
        !lelantos::net::VmNetwork::exists(&netns),
        "namespace (and its tap) gone"
    );
    assert!(!dir.exists(), "vm directory and disk gone");
    // Shutting down twice is allowed and does nothing.
    lab.driver.shutdown(&mut inner).await.unwrap();
}

#[tokio::test]
#[ignore = "boots a real VM: run by tests/run with images built"]
async fn a_new_driver_adopts_running_vms_and_cleans_dead_ones() {
    let lab = common::Lab::new().await;
    let mut vm = lab.boot().await;
    // Simulate a daemon crash: the handle is lost, the VM keeps running.
    let lost = vm.vm.take().unwrap();
    let (pid, netns) = (lost.pid, lost.net.netns.clone());
    drop(lost);
    let (mut adopted, cleaned) = lab.driver.recover().await.unwrap();
    assert_eq!((adopted.len(), cleaned), (1, 0));
    let again = common::Guarded::new(adopted.remove(0));
    assert_eq!(again.vm.as_ref().unwrap().state, VmState::Running);
    let (code, out) = again.run("echo adopted").await;
    assert_eq!((code, out.as_str()), (0, "adopted\n"));
    // Now the VMM dies behind our back: the next recovery cleans up.
    let mut again = again;
    let dead = again.vm.take().unwrap();
    lelantos::vmm::host::kill_group(pid);
    drop(dead);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && !std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .is_empty()
    {
        assert!(Instant::now() < deadline, "qemu did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (adopted, cleaned) = lab.driver.recover().await.unwrap();
    assert!(adopted.is_empty());
    assert!(cleaned >= 1);
    assert!(!lelantos::net::VmNetwork::exists(&netns));
}

/// A stand-in for "the outside world": a namespace of our own with a web
/// server, linked to the host namespace (all traffic stays on this machine).
struct Outside {
    netns: String,
    host_if: String,
    server: std::process::Child,
}

impl Outside {
    fn start() -> Self {
        let id = lelantos_core::LifecycleId::generate();
        let netns = format!("ltest-{}", &id.as_str()[..6]);
        let host_if = format!("lto-{}", &id.as_str()[..6]);
        let sh = |args: &[&str]| {
            let ok = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success();
            assert!(ok, "{args:?}");
        };
        sh(&["ip", "netns", "add", &netns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        sh(&["ip", "addr", "add", "10.202.0.1/30", "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            "10.202.0.2/30",
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "10.202.0.2",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self {
            netns,
            host_if,
            server,
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

#[tokio::test]
#[ignore = "boots real VMs: run by tests/run with images built"]
async fn egress_switch_reaches_the_outside_only_when_on_and_never_the_host() {
    let lab = common::Lab::new().await;
    let _outside = Outside::start();
    let host = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let host_port = host.local_addr().unwrap().port();

    let mut spec = lab.spec();
    spec.network.egress = true;
    let mut vm = lab.driver.create(&spec).await.unwrap();
    lab.driver.boot(&mut vm).await.unwrap();
    let on = common::Guarded::new(vm);
    on.wait_envd(Duration::from_secs(120)).await;
    let off = lab.boot().await;

    let curl = "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://10.202.0.2:8080/; echo";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = on.run(curl).await;
        if out.trim() == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "egress-on VM never reached the outside server: {out}"
        );
    }
    let (_, out) = off.run(curl).await;
    assert_ne!(out.trim(), "200", "egress-off VM reached the outside");
    // Even with egress on, the host's own listeners stay out of reach.
    let (_, out) = on
        .run(&format!(
            "for t in 10.201.0.1 10.202.0.1; do curl -s -o /dev/null --max-time 3 http://$t:{host_port}/ && echo reached $t; done; echo done"
        ))
        .await;
    assert_eq!(out.trim(), "done", "egress VM reached the host: {out}");
    on.shutdown(&lab.driver).await;
    off.shutdown(&lab.driver).await;
}
