//! The template builder on real VMs: a build with every step kind whose
//! output disk then boots with the files in place; a failing step; the
//! cache. Run by the README's test command (`--ignored`, after images are
//! built).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lelantos::builder::{BuildError, BuildInput, Builder, LogLine};
use lelantos::net::VmNetwork;
use lelantos::proxy::{DialFuture, Dialer};
use lelantos::sandboxes::envd::Envd;
use lelantos::templates::{GuestConfig, GuestImage};
use lelantos_core::template::{CopyStep, Step};

fn base() -> GuestImage {
    let manifest = PathBuf::from(std::env::var("LELANTOS_IMAGE_MANIFEST").unwrap());
    GuestImage::from_manifest(&manifest).unwrap()
}

fn input(key: &str, steps: Vec<Step>, context: Option<&Path>) -> BuildInput {
    BuildInput {
        template: "builder-test".into(),
        key: key.into(),
        base: base(),
        base_config: GuestConfig::default(),
        steps,
        context: context.map(Path::to_path_buf),
        start_cmd: None,
        ready_cmd: None,
        disk_mib: None,
    }
}

/// Collects every log line the builder reports.
#[derive(Default)]
struct Collected(Mutex<Vec<LogLine>>);

impl Collected {
    fn sink(&self) -> impl Fn(LogLine) + Send + Sync + '_ {
        move |line: LogLine| {
            eprintln!("build: {:?} {}", line.step, line.message);
            self.0.lock().unwrap().push(line);
        }
    }

    fn messages(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.message.clone())
            .collect()
    }
}

/// Reaches the guest from inside its network namespace.
struct NetDialer(VmNetwork);

impl Dialer for NetDialer {
    fn dial(&self, port: u16) -> DialFuture {
        let net = self.0.clone();
        Box::pin(async move {
            net.connect(port, Duration::from_secs(3))
                .await
                .map_err(std::io::Error::other)
        })
    }
}

fn copy(src: &str, dest: &str, user: Option<&str>, mode: Option<&str>) -> Step {
    Step::Copy(CopyStep {
        src: src.into(),
        dest: dest.into(),
        user: user.map(str::to_owned),
        mode: mode.map(str::to_owned),
    })
}

#[tokio::test]
#[ignore = "boots real VMs: run by tests/run with images built"]
async fn builds_every_step_kind_and_the_output_boots() {
    let lab = common::Lab::new().await;
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::create_dir_all(context.path().join("app/sub")).unwrap();
    std::fs::write(context.path().join("app/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::write(context.path().join("app/sub/data.txt"), "data\n").unwrap();
    std::fs::set_permissions(
        context.path().join("hello.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let steps = vec![
        Step::Run("echo visible-output; echo built-by-$(id -un) > /etc/marker".into()),
        Step::Env(BTreeMap::from([("GREETING".into(), "hi there".into())])),
        Step::Workdir("/srv/app".into()),
        Step::Run("echo \"$GREETING|$(pwd)|$(id -un)\" > env.txt".into()),
        copy("hello.txt", "/opt/hello.txt", Some("user"), Some("0640")),
        Step::User("user".into()),
        copy("app", "/home/user/app", None, Some("0750")),
        Step::Run("id -un > /home/user/whoami.txt".into()),
    ];
    let mut build = input("every-step", steps, Some(context.path()));
    build.start_cmd = Some("sleep infinity".into());
    // Larger than the base: the disk and its filesystem grow.
    let base_mib = build.base.disk_size_mb();
    build.disk_mib = Some(base_mib + 512);
    let root = lab.root.path().join("builds");
    let builder = Builder::new(lab.driver.clone(), root.clone(), 1);
    let log = Collected::default();
    let started = Instant::now();
    let out = builder.build(build.clone(), &log.sink()).await.unwrap();
    eprintln!("build took {:?}", started.elapsed());

    assert!(!out.cached);
    assert_eq!(out.dir, root.join("every-step"));
    assert!(out.rootfs.is_file());
    assert!(!root.join("every-step.tmp").exists());
    assert_eq!(
        std::fs::metadata(&out.rootfs).unwrap().len(),
        u64::from(base_mib + 512) * 1024 * 1024
    );
    assert_eq!(out.config.env["GREETING"], "hi there");
    assert_eq!(out.config.workdir.as_deref(), Some("/srv/app"));
    assert_eq!(out.config.user.as_deref(), Some("user"));
    assert_eq!(out.config.start_cmd.as_deref(), Some("sleep infinity"));
    let messages = log.messages();
    assert!(
        messages.iter().any(|m| m == "visible-output"),
        "{messages:?}"
    );
    let file_log = std::fs::read_to_string(&out.log).unwrap();
    assert!(file_log.contains("visible-output"), "{file_log}");
    // No VM left behind.
    let vms = std::fs::read_dir(lab.root.path().join("vms"))
        .unwrap()
        .count();
    assert_eq!(vms, 0, "build VM directory left behind");

    let vm = lab.boot_rootfs(&out.rootfs).await;
    let (code, got) = vm
        .run(
            "cat /etc/marker /srv/app/env.txt /home/user/whoami.txt; \
             stat -c '%n %U %a' /opt/hello.txt /home/user/app /home/user/app/run.sh \
               /home/user/app/sub /home/user/app/sub/data.txt /srv/app; \
             cat /opt/hello.txt; \
             df -m --output=size / | tail -1",
        )
        .await;
    assert_eq!(code, 0, "{got}");
    let lines: Vec<&str> = got.lines().map(str::trim).collect();
    assert_eq!(
        &lines[..10],
        [
            "built-by-root",
            "hi there|/srv/app|root",
            "user",
            "/opt/hello.txt user 640",
            // The destination directory is created by the copy; what was
            // copied gets the owner (the current user) and the mode.
            "/home/user/app user 755",
            "/home/user/app/run.sh user 750",
            "/home/user/app/sub user 750",
            "/home/user/app/sub/data.txt user 750",
            "/srv/app root 755",
            "hello from the host",
        ],
        "{got}"
    );
    let size_mib: u32 = lines[10].parse().unwrap();
    assert!(size_mib > base_mib, "filesystem not grown: {size_mib} MiB");

    // The daemon's envd client directly: run (user, cwd, env, both
    // streams, exit code) and start_background.
    let dialer = NetDialer(vm.net().clone());
    let envd = Envd::new(&dialer, None);
    let output = Mutex::new(Vec::new());
    let code = envd
        .run(
            "echo \"$X $(id -un) $(pwd)\"; echo oops >&2; exit 4",
            Some("user"),
            Some("/tmp"),
            &BTreeMap::from([("X".into(), "y".into())]),
            Duration::from_secs(60),
            &|stream: &str, bytes: &[u8]| {
                output.lock().unwrap().push((
                    stream.to_owned(),
                    String::from_utf8_lossy(bytes).into_owned(),
                ));
            },
        )
        .await
        .unwrap();
    assert_eq!(code, 4);
    let output = output.into_inner().unwrap();
    assert!(
        output.contains(&("stdout".into(), "y user /tmp\n".into())),
        "{output:?}"
    );
    assert!(
        output.contains(&("stderr".into(), "oops\n".into())),
        "{output:?}"
    );
    let pid = envd
        .start_background("exec sleep 600", None, None, &BTreeMap::new())
        .await
        .unwrap();
    assert!(vm.list().await.contains(&u64::from(pid)));
    vm.shutdown(&lab.driver).await;
}

#[tokio::test]
#[ignore = "boots a real VM: run by tests/run with images built"]
async fn a_failing_run_step_names_its_index_and_exit_code() {
    let lab = common::Lab::new().await;
    let root = lab.root.path().join("builds");
    let builder = Builder::new(lab.driver.clone(), root.clone(), 1);
    let steps = vec![
        Step::Run("echo fine".into()),
        Step::Run("echo first-words >&2; echo last-words >&2; exit 3".into()),
        Step::Run("echo never".into()),
    ];
    let log = Collected::default();
    let err = builder
        .build(input("fails", steps, None), &log.sink())
        .await
        .unwrap_err();
    let BuildError::Step {
        index,
        ref step,
        ref message,
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(index, 1);
    assert!(step.starts_with("run: echo first-words"), "{step}");
    assert!(message.starts_with("exit code 3: "), "{message}");
    assert!(message.contains("last-words"), "{message}");
    assert!(!log.messages().iter().any(|m| m == "never"));
    assert!(!root.join("fails").exists());
    assert!(!root.join("fails.tmp").exists());
    assert!(root.join("fails.failed.log").is_file());
    assert!(builder.cached("fails").is_none());
    let vms = std::fs::read_dir(lab.root.path().join("vms"))
        .unwrap()
        .count();
    assert_eq!(vms, 0, "build VM directory left behind");
}

#[tokio::test]
#[ignore = "boots a real VM: run by tests/run with images built"]
async fn a_second_build_of_a_key_is_cached() {
    let lab = common::Lab::new().await;
    let root = lab.root.path().join("builds");
    let builder = Builder::new(lab.driver.clone(), root.clone(), 2);
    let steps = vec![Step::Env(BTreeMap::from([("A".into(), "1".into())]))];
    let first = builder
        .build(input("cache-me", steps.clone(), None), &|_| {})
        .await
        .unwrap();
    assert!(!first.cached);

    let log = Collected::default();
    let started = Instant::now();
    let second = builder
        .build(input("cache-me", steps, None), &log.sink())
        .await
        .unwrap();
    assert!(second.cached);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(log.messages().is_empty(), "a cached build logs nothing");
    assert_eq!(second.rootfs, first.rootfs);
    assert_eq!(second.config, first.config);
    assert_eq!(builder.cached("cache-me"), Some(second));
    assert!(builder.cached("other").is_none());

    // A copy that leaves the context fails as that step, before anything
    // is published.
    let context = tempfile::tempdir().unwrap();
    let err = builder
        .build(
            input(
                "escape",
                vec![copy("../../etc/passwd", "/x", None, None)],
                Some(context.path()),
            ),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::Step { index: 0, message, .. } if message.contains("outside the build context") || message.contains("No such file")),
        "{err}"
    );
    assert!(!root.join("escape").exists());
}
