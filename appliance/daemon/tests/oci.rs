//! OCI base images against a real registry: Debian's `docker-registry` on a
//! free local port, images built here with `umoci` (two layers, the second
//! one deleting a file and replacing directories so whiteouts are applied)
//! and pushed with `skopeo`. The pulled disk is inspected with `debugfs`;
//! with `LELANTOS_IMAGE_MANIFEST` set, one is also booted and a command is
//! run in it through envd.
//!
//! Run as root: `cargo test -p lelantos --test oci -- --ignored --test-threads=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lelantos::oci::{OciError, PullRequest, PulledImage, extract_from_ext4, pull_rootfs};

/// A `docker-registry` process serving from a temp dir; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its request log is noise unless a test fails; keep it aside.
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .process_group(0)
            .spawn()
            .expect("docker-registry installed (apt-get install docker-registry)");
        let mut registry = Self {
            child,
            port,
            _dir: dir,
        };
        registry.wait_ready(Duration::from_secs(30));
        registry
    }

    /// Polls `GET /v2/` until it answers 200.
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited: {status}");
            }
            if self.v2_status() == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "registry not ready in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn v2_status(&self) -> Option<u16> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_tag}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI layout under construction with umoci: `rootfs()` is the bundle's
/// tree; every `commit()` adds the changes since the last one as a layer.
struct ImageBuilder {
    layout: PathBuf,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
}

impl ImageBuilder {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let bundle = dir.path().join("bundle");
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:t", layout.display())));
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:t", layout.display()))
            .arg(&bundle));
        Self {
            layout,
            bundle,
            _dir: dir,
        }
    }

    fn image(&self) -> String {
        format!("{}:t", self.layout.display())
    }

    fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    fn commit(&self) {
        run(Command::new("umoci")
            // Without --refresh-bundle the next repack diffs against the
            // unpacked base again and emits no whiteouts.
            .args(["repack", "--refresh-bundle", "--image"])
            .arg(self.image())
            .arg(&self.bundle));
    }

    /// Sets image config fields; call after the last commit (the bundle
    /// is not re-unpacked).
    fn config(&self, args: &[&str]) {
        run(Command::new("umoci")
            .args(["config", "--image"])
            .arg(self.image())
            .args(args));
    }

    fn push(&self, reference: &str) {
        run(Command::new("skopeo")
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}", self.image()))
            .arg(format!("docker://{reference}")));
    }
}

fn write(root: &Path, rel: &str, body: &str, mode: u32) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One entry of `debugfs ls -p`.
#[derive(Debug, Clone)]
struct Inode {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The entries of directory `dir` of an ext4 image, read without mounting.
fn ls(image: &Path, dir: &str) -> BTreeMap<String, Inode> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("ls -p {dir}"))
        .arg(image)
        .output()
        .unwrap();
    // Lines look like `/12/100644/0/0/name/5/`.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            (f.len() >= 7).then(|| {
                (
                    f[5].to_owned(),
                    Inode {
                        ino: f[1].parse().unwrap(),
                        mode: u32::from_str_radix(f[2], 8).unwrap(),
                        uid: f[3].parse().unwrap(),
                        gid: f[4].parse().unwrap(),
                    },
                )
            })
        })
        .collect()
}

fn cat(image: &Path, path: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    extract_from_ext4(image, path, &out).ok()?;
    Some(std::fs::read_to_string(out).unwrap())
}

fn request(reference: String, envd: PathBuf, cache: &Path) -> PullRequest {
    PullRequest {
        reference,
        auth: None,
        insecure: true,
        envd,
        cache_dir: cache.to_owned(),
    }
}

/// Pulls, echoing and returning the progress lines.
async fn pull(req: &PullRequest) -> (Result<PulledImage, OciError>, Vec<String>) {
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |line: &str| {
        eprintln!("pull: {line}");
        lines.lock().unwrap().push(line.to_owned());
    };
    let result = pull_rootfs(req, &log).await;
    (result, lines.into_inner().unwrap())
}

#[tokio::test]
#[ignore = "needs docker-registry, umoci, skopeo: run by tests/run"]
async fn pulls_layers_with_whiteouts_into_a_bootable_disk() {
    let registry = Registry::start();
    let img = ImageBuilder::new();
    let root = img.rootfs();
    write(&root, "etc/oci-marker", "oci-marker-ok\n", 0o644);
    write(
        &root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    write(&root, "etc/group", "root:x:0:\n", 0o644);
    write(&root, "gone.txt", "bye\n", 0o644);
    write(&root, "opt/old/a", "a\n", 0o644);
    write(&root, "opt/old/b", "b\n", 0o644);
    write(&root, "data/inner", "inner\n", 0o644);
    write(&root, "bin/tool", "#!/bin/sh\necho tool\n", 0o750);
    std::fs::hard_link(root.join("bin/tool"), root.join("bin/tool-link")).unwrap();
    std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
    write(&root, "srv/owned", "mine\n", 0o640);
    std::os::unix::fs::chown(root.join("srv/owned"), Some(1234), Some(5678)).unwrap();
    img.commit();
    // Layer 2: a deleted file, a directory replaced by another, a directory
    // replaced by a file.
    std::fs::remove_file(root.join("gone.txt")).unwrap();
    std::fs::remove_dir_all(root.join("opt/old")).unwrap();
    write(&root, "opt/old/c", "c\n", 0o644);
    std::fs::remove_dir_all(root.join("data")).unwrap();
    write(&root, "data", "now a file\n", 0o644);
    img.commit();
    img.config(&[
        "--config.env",
        "FOO=bar",
        "--config.workingdir",
        "/srv",
        "--config.user",
        "user",
    ]);
    let reference = registry.reference("test/img:1");
    img.push(&reference);

    let work = tempfile::tempdir().unwrap();
    let envd = work.path().join("envd");
    std::fs::write(&envd, "#!/bin/sh\n# stand-in envd\n").unwrap();
    let cache = work.path().join("cache");
    let req = request(reference.clone(), envd, &cache);

    let (pulled, lines) = pull(&req).await;
    let pulled = pulled.expect("pull");
    // Both layers reached us, so the second one's whiteouts were applied.
    assert!(lines[0].ends_with("(2 layers)"), "{lines:?}");
    assert!(!pulled.cached);
    assert!(pulled.digest.starts_with("sha256:"), "{}", pulled.digest);
    assert_eq!(
        pulled.rootfs,
        cache
            .join("oci")
            .join(pulled.digest.replace(':', "-"))
            .join("rootfs.ext4")
    );
    assert_eq!(
        pulled.config.env.get("FOO").map(String::as_str),
        Some("bar")
    );
    assert_eq!(pulled.config.workdir.as_deref(), Some("/srv"));
    assert_eq!(pulled.config.user.as_deref(), Some("user"));
    let disk = &pulled.rootfs;

    // Layer content, whiteouts applied.
    assert_eq!(
        cat(disk, "/etc/oci-marker").as_deref(),
        Some("oci-marker-ok\n")
    );
    let top = ls(disk, "/");
    assert!(!top.contains_key("gone.txt"), "whited-out file: {top:?}");
    assert_eq!(top["data"].mode, 0o100_644, "directory replaced by a file");
    assert_eq!(cat(disk, "/data").as_deref(), Some("now a file\n"));
    let old: Vec<String> = ls(disk, "/opt/old")
        .into_keys()
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(
        old,
        ["c"],
        "replaced directory holds only the new layer's content"
    );
    let bin = ls(disk, "/bin");
    assert_eq!(bin["tool"].mode, 0o100_750);
    assert_eq!(bin["tool"].ino, bin["tool-link"].ino, "hard link kept");
    assert_eq!(bin["alias"].mode & 0o170_000, 0o120_000, "symlink kept");
    let owned = &ls(disk, "/srv")["owned"];
    assert_eq!((owned.uid, owned.gid, owned.mode), (1234, 5678, 0o100_640));

    // Made bootable.
    let envd_entry = &ls(disk, "/usr/local/bin")["envd"];
    assert_eq!((envd_entry.mode, envd_entry.uid), (0o100_755, 0));
    assert_eq!(
        cat(disk, "/usr/local/bin/envd").as_deref(),
        Some("#!/bin/sh\n# stand-in envd\n")
    );
    let passwd = cat(disk, "/etc/passwd").unwrap();
    assert!(
        passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"),
        "{passwd}"
    );
    assert!(
        passwd
            .lines()
            .any(|l| l == "user:x:1000:1000::/home/user:/bin/sh"),
        "{passwd}"
    );
    assert!(cat(disk, "/etc/group").unwrap().contains("user:x:1000:\n"));
    let home = &ls(disk, "/home")["user"];
    assert_eq!(
        (home.uid, home.gid, home.mode & 0o170_000),
        (1000, 1000, 0o040_000)
    );
    assert_eq!(top["tmp"].mode, 0o041_777);
    for dir in ["dev", "proc", "sys", "run"] {
        assert_eq!(top[dir].mode & 0o170_000, 0o040_000, "/{dir}");
    }
    assert!(cat(disk, "/etc/hosts").unwrap().contains("localhost"));

    // Second pull: same disk from the cache.
    let again = pull(&req).await.0.expect("cached pull");
    assert!(again.cached);
    assert_eq!(again.digest, pulled.digest);
    assert_eq!(again.rootfs, pulled.rootfs);
    assert_eq!(again.config, pulled.config);

    // A tag the registry does not have.
    let missing = registry.reference("test/img:nope");
    let err = pull(&request(missing.clone(), req.envd.clone(), &cache))
        .await
        .0
        .expect_err("unknown tag");
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");
}

#[tokio::test]
#[ignore = "needs docker-registry, umoci, skopeo: run by tests/run"]
async fn pulled_image_boots_and_runs_a_command() {
    if std::env::var_os("LELANTOS_IMAGE_MANIFEST").is_none() {
        eprintln!("skipped: LELANTOS_IMAGE_MANIFEST not set (no guest image to boot)");
        return;
    }
    let images = common::images();
    let registry = Registry::start();
    let img = ImageBuilder::new();
    let root = img.rootfs();
    // The builtin rootfs's tree (it has bash, which the harness runs
    // commands with), as the image's first layer.
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", root.display()))
        .arg(&images.rootfs));
    let _ = std::fs::remove_dir_all(root.join("lost+found"));
    // envd comes from our pull, not from the image.
    std::fs::remove_file(root.join("usr/local/bin/envd")).unwrap();
    img.commit();
    write(&root, "etc/oci-marker", "booted from an OCI image\n", 0o644);
    img.commit();
    let reference = registry.reference("test/boot:1");
    img.push(&reference);

    let work = tempfile::tempdir().unwrap();
    let envd = work.path().join("envd");
    extract_from_ext4(&images.rootfs, "/usr/local/bin/envd", &envd).unwrap();
    let pulled = pull(&request(reference, envd, &work.path().join("cache")))
        .await
        .0
        .expect("pull");

    let mut lab = common::Lab::new().await;
    lab.images.rootfs = pulled.rootfs.clone();
    let vm = lab.boot().await;
    let (code, out) = vm.run("cat /etc/oci-marker; whoami").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "booted from an OCI image\nuser\n");
    vm.shutdown(&lab.driver).await;
}
