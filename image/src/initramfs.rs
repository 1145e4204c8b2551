//! The initramfs: static busybox, the virtio (and vsock) modules of the
//! kernel package, and a shell `/init` that mounts the root disk and
//! `switch_root`s into envd, which then runs as PID 1.
//!
//! ```text
//!   /init ─ mount proc,sys,devtmpfs ─ insmod (recipe order) ─ poll /dev/vda
//!         ─ mount ext4 rw /newroot ─ move mounts ─ exec switch_root → envd
//! ```
//!
//! The archive is written with the `cpio` crate rather than Debian's `cpio`
//! tool: the crate writes a `dev/console` node, symlinks, uid 0 and fixed
//! mtimes straight from memory, so building needs no root, no staging tree,
//! and the same inputs always give a byte-identical archive.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use crate::kernel::{self, UnpackedKernel};

/// Bump when the archive layout changes in a way the hashed recipe below
/// does not capture (e.g. a new directory or file mode).
pub const RECIPE_VERSION: u32 = 1;

/// Debian package providing the static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Kernel arguments the initramfs needs (`root=`) plus the console and
/// panic behaviour a sandbox wants. The VM layer appends `envd.*` keys.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 root=/dev/vda";

const INIT_TEMPLATE: &str = include_str!("init.sh");
const MODULES_PLACEHOLDER: &str = "@MODULES@";

/// What happens when a recipe module is neither a `.ko` in the package nor
/// built into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Need {
    /// The build fails: the guest cannot boot without it.
    Required,
    /// Left out, and a failed load at boot only logs (vsock is a nicety).
    Optional,
}

/// One module of the recipe.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModuleSpec {
    /// Module name.
    pub name: &'static str,
    /// Whether boot depends on it.
    pub need: Need,
}

const fn required(name: &'static str) -> ModuleSpec {
    ModuleSpec {
        name,
        need: Need::Required,
    }
}

const fn optional(name: &'static str) -> ModuleSpec {
    ModuleSpec {
        name,
        need: Need::Optional,
    }
}

/// Modules in load order (dependencies first). A module compiled into the
/// kernel is skipped; each shipped `.ko` is loaded with busybox `insmod`.
pub const MODULES: &[ModuleSpec] = &[
    // ext4 and its helpers, for kernels that build them as modules. Debian's
    // cloud kernel has them all built in, so these normally load nothing.
    required("crc16"),
    required("mbcache"),
    required("jbd2"),
    required("crc32c_generic"),
    required("ext4"),
    // Disk and network over virtio-mmio (microvm, Cloud Hypervisor).
    required("virtio_ring"),
    required("virtio"),
    required("virtio_mmio"),
    required("virtio_blk"),
    required("failover"),
    required("net_failover"),
    required("virtio_net"),
    // vsock: wanted later for host↔guest channels, never needed to boot.
    optional("vsock"),
    optional("vmw_vsock_virtio_transport_common"),
    optional("vmw_vsock_virtio_transport"),
];

/// Busybox applets `/init` calls (each becomes a `/bin` symlink).
pub const APPLETS: &[&str] = &[
    "cat",
    "insmod",
    "mount",
    "poweroff",
    "sh",
    "sleep",
    "switch_root",
];

/// Errors of planning and writing the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required module is neither shipped nor built in.
    #[error("kernel has no module {module} (neither a .ko nor built in)")]
    MissingModule {
        /// Module name.
        module: String,
    },
    /// The recipe loads a module before one it depends on.
    #[error("module {module} depends on {dependency}, which the recipe does not load before it")]
    Order {
        /// Module name.
        module: String,
        /// Its unmet dependency.
        dependency: String,
    },
    /// Reading a module file failed.
    #[error("read module {path}")]
    ReadModule {
        /// The `.ko`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is too large for a newc header (4 GiB).
    #[error("{name} is too large for a cpio archive")]
    TooLarge {
        /// Archive path.
        name: String,
    },
    /// Writing the archive failed.
    #[error("write initramfs {path}")]
    Write {
        /// Output file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Everything that decides the initramfs besides the kernel and busybox
/// packages; its digest is part of the kernel artefact's cache key.
#[derive(Debug, Serialize)]
pub struct Recipe {
    /// [`RECIPE_VERSION`].
    pub recipe_version: u32,
    /// [`MODULES`].
    pub modules: &'static [ModuleSpec],
    /// [`APPLETS`].
    pub applets: &'static [&'static str],
    /// The `/init` template.
    pub init_template: &'static str,
    /// [`KERNEL_CMDLINE`].
    pub kernel_cmdline: &'static str,
}

/// The recipe this build of the builder uses.
pub const RECIPE: Recipe = Recipe {
    recipe_version: RECIPE_VERSION,
    modules: MODULES,
    applets: APPLETS,
    init_template: INIT_TEMPLATE,
    kernel_cmdline: KERNEL_CMDLINE,
};

/// Full hex SHA-256 of [`RECIPE`].
pub fn recipe_sha256() -> Result<String, serde_json::Error> {
    Ok(crate::hash::sha256_hex(&serde_json::to_vec(&RECIPE)?))
}

/// A module the initramfs loads.
#[derive(Debug, Clone)]
pub struct Load {
    /// Module name.
    pub name: String,
    /// The `.ko` bytes.
    pub bytes: Vec<u8>,
    /// Whether a failed load is tolerated.
    pub optional: bool,
}

/// The recipe applied to one kernel package.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Modules to insmod, in order.
    pub load: Vec<Load>,
    /// Recipe modules the kernel has built in.
    pub builtin: Vec<String>,
    /// Optional modules the kernel lacks.
    pub absent: Vec<String>,
}

impl Plan {
    /// Names of the modules loaded, in order.
    pub fn load_names(&self) -> Vec<String> {
        self.load.iter().map(|l| l.name.clone()).collect()
    }
}

/// Applies [`MODULES`] to `kernel`, checking that each loaded module's
/// `depends=` are all loaded before it (built-in ones never appear there).
pub fn plan(kernel: &UnpackedKernel) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    for spec in MODULES {
        if let Some(path) = kernel.module(spec.name) {
            let bytes = std::fs::read(path).map_err(|source| Error::ReadModule {
                path: path.to_owned(),
                source,
            })?;
            for dependency in kernel::module_depends(&bytes) {
                if !plan.load.iter().any(|l| l.name == dependency) {
                    return Err(Error::Order {
                        module: spec.name.to_owned(),
                        dependency,
                    });
                }
            }
            plan.load.push(Load {
                name: spec.name.to_owned(),
                bytes,
                optional: spec.need == Need::Optional,
            });
        } else if kernel.is_builtin(spec.name) {
            plan.builtin.push(spec.name.to_owned());
        } else if spec.need == Need::Optional {
            plan.absent.push(spec.name.to_owned());
        } else {
            return Err(Error::MissingModule {
                module: spec.name.to_owned(),
            });
        }
    }
    Ok(plan)
}

/// The `/init` script for `plan`.
pub fn init_script(plan: &Plan) -> String {
    let lines: Vec<String> = plan
        .load
        .iter()
        .map(|l| {
            let verb = if l.optional { "load_optional" } else { "load" };
            format!("{verb} {}", l.name)
        })
        .collect();
    INIT_TEMPLATE.replace(MODULES_PLACEHOLDER, &lines.join("\n"))
}

/// One archive member.
#[derive(Debug, Clone)]
pub enum Member {
    /// A directory (mode 0755).
    Dir,
    /// A regular file with its permission bits.
    File {
        /// Permission bits.
        mode: u32,
        /// Content.
        bytes: Vec<u8>,
    },
    /// A symlink to `target`.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// The archive's members, parents before children.
pub fn members(busybox: &[u8], plan: &Plan) -> Vec<(String, Member)> {
    let mut m: Vec<(String, Member)> =
        ["bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys"]
            .iter()
            .map(|d| ((*d).to_owned(), Member::Dir))
            .collect();
    // The kernel opens /dev/console for init before anything is mounted; the
    // node must be in the archive or init starts with no stdio.
    m.push((
        "dev/console".to_owned(),
        Member::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    ));
    m.push((
        "bin/busybox".to_owned(),
        Member::File {
            mode: 0o755,
            bytes: busybox.to_vec(),
        },
    ));
    for applet in APPLETS {
        m.push((
            format!("bin/{applet}"),
            Member::Symlink("busybox".to_owned()),
        ));
    }
    for l in &plan.load {
        m.push((
            format!("lib/modules/{}.ko", l.name),
            Member::File {
                mode: 0o644,
                bytes: l.bytes.clone(),
            },
        ));
    }
    m.push((
        "init".to_owned(),
        Member::File {
            mode: 0o755,
            bytes: init_script(plan).into_bytes(),
        },
    ));
    m
}

/// Writes `members` as a newc archive (uid/gid 0, mtime 0) to `out`.
pub fn write_cpio<W: Write>(members: &[(String, Member)], mut out: W) -> Result<W, WriteError> {
    for (ino, (name, member)) in (1u32..).zip(members) {
        let builder = cpio::NewcBuilder::new(name).ino(ino).uid(0).gid(0).mtime(0);
        let (builder, data): (_, &[u8]) = match member {
            Member::Dir => (builder.mode(S_IFDIR | 0o755).nlink(2), &[]),
            Member::File { mode, bytes } => (builder.mode(S_IFREG | mode), bytes),
            Member::Symlink(target) => (builder.mode(S_IFLNK | 0o777), target.as_bytes()),
            Member::CharDev { mode, major, minor } => (
                builder
                    .mode(S_IFCHR | mode)
                    .rdev_major(*major)
                    .rdev_minor(*minor),
                &[],
            ),
        };
        let size = u32::try_from(data.len()).map_err(|_| WriteError::TooLarge(name.clone()))?;
        let mut w = builder.write(out, size);
        w.write_all(data)?;
        out = w.finish()?;
    }
    Ok(cpio::newc::trailer(out)?)
}

/// Errors of [`write_cpio`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A member exceeds the newc size field.
    #[error("{0} is too large for a cpio archive")]
    TooLarge(String),
    /// The writer failed.
    #[error("write archive")]
    Io(#[from] io::Error),
}

/// Writes the gzip-compressed initramfs for `plan` to `path`.
pub fn write(path: &Path, busybox: &[u8], plan: &Plan) -> Result<(), Error> {
    let write_err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let file = File::create(path).map_err(write_err)?;
    // flate2's header carries no mtime or name, so output is reproducible.
    let gz = GzEncoder::new(BufWriter::new(file), Compression::best());
    let gz = write_cpio(&members(busybox, plan), gz).map_err(|e| match e {
        WriteError::TooLarge(name) => Error::TooLarge { name },
        WriteError::Io(source) => write_err(source),
    })?;
    let mut buf = gz.finish().map_err(write_err)?;
    buf.flush().map_err(write_err)?;
    buf.get_ref().sync_all().map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn sample_plan() -> Plan {
        Plan {
            load: vec![
                Load {
                    name: "virtio".to_owned(),
                    bytes: b"ko1".to_vec(),
                    optional: false,
                },
                Load {
                    name: "vsock".to_owned(),
                    bytes: b"ko2".to_vec(),
                    optional: true,
                },
            ],
            builtin: vec!["ext4".to_owned()],
            absent: vec![],
        }
    }

    #[test]
    fn init_script_lists_modules_in_order() {
        let script = init_script(&sample_plan());
        assert!(!script.contains(MODULES_PLACEHOLDER));
        let a = script.find("\nload virtio\n").expect("virtio line");
        let b = script.find("\nload_optional vsock\n").expect("vsock line");
        assert!(a < b);
        assert!(script.contains("exec switch_root /newroot /usr/local/bin/envd"));
    }

    #[test]
    fn init_script_is_valid_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("init");
        std::fs::write(&path, init_script(&sample_plan())).expect("write");
        let status = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .expect("run sh -n");
        assert!(status.success());
    }

    #[test]
    fn recipe_order_is_dependency_order() {
        // Hand-checked facts of the 6.1 cloud kernel: every module listed
        // must come after what it depends on.
        let pos = |n: &str| MODULES.iter().position(|m| m.name == n).expect("listed");
        for (module, dep) in [
            ("virtio", "virtio_ring"),
            ("virtio_mmio", "virtio"),
            ("virtio_blk", "virtio"),
            ("net_failover", "failover"),
            ("virtio_net", "net_failover"),
            ("vmw_vsock_virtio_transport_common", "vsock"),
            (
                "vmw_vsock_virtio_transport",
                "vmw_vsock_virtio_transport_common",
            ),
            ("ext4", "jbd2"),
        ] {
            assert!(pos(dep) < pos(module), "{dep} must precede {module}");
        }
    }

    #[test]
    fn archive_round_trips() {
        let gz = {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("initramfs.cpio.gz");
            write(&path, b"busybox-bytes", &sample_plan()).expect("write");
            std::fs::read(&path).expect("read back")
        };
        let mut cpio_bytes = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut cpio_bytes)
            .expect("gunzip");
        let mut rest: &[u8] = &cpio_bytes;
        let mut seen = Vec::new();
        loop {
            let mut reader = cpio::NewcReader::new(rest).expect("entry");
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            let (name, mode, rdev) = (e.name().to_owned(), e.mode(), e.rdev_major());
            let mut data = Vec::new();
            reader.read_to_end(&mut data).expect("data");
            seen.push((name, mode, rdev, data));
            rest = reader.finish().expect("next");
        }
        let find = |n: &str| seen.iter().find(|s| s.0 == n).expect("member present");
        assert_eq!(find("dev/console").1, S_IFCHR | 0o600);
        assert_eq!(find("dev/console").2, 5);
        assert_eq!(find("bin/busybox").3, b"busybox-bytes");
        assert_eq!(find("bin/sh").1, S_IFLNK | 0o777);
        assert_eq!(find("bin/sh").3, b"busybox");
        assert_eq!(find("lib/modules/vsock.ko").3, b"ko2");
        assert_eq!(find("init").1, S_IFREG | 0o755);
        // Parents come before children.
        let pos = |n: &str| seen.iter().position(|s| s.0 == n).expect("present");
        assert!(pos("lib") < pos("lib/modules"));
        assert!(pos("lib/modules") < pos("lib/modules/vsock.ko"));
    }

    #[test]
    fn archive_is_reproducible() {
        let a = write_cpio(&members(b"bb", &sample_plan()), Vec::new()).expect("a");
        let b = write_cpio(&members(b"bb", &sample_plan()), Vec::new()).expect("b");
        assert_eq!(a, b);
    }
}
