//! The content-addressed cache outside the checkout.
//!
//! ```text
//!   <cache>/images/kernel-<key>/{vmlinuz, initramfs.cpio.gz, artefact.json}
//!   <cache>/images/rootfs-<key>/{rootfs.ext4, artefact.json}
//!   <cache>/images/manifest-<key>.json
//!   <cache>/tmp/                         staging (same filesystem, so rename is atomic)
//! ```
//!
//! An artefact directory is published by renaming a finished staging
//! directory into place, so it exists complete or not at all; a key that
//! exists is a cache hit. Two builders racing on one key both build, the
//! first rename wins, and the loser drops its copy and uses the winner's.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;

/// Name of the record file inside each artefact directory.
pub const RECORD: &str = "artefact.json";

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cache directory could be derived from the environment.
    #[error("no cache directory: set LELANTOS_CACHE, XDG_CACHE_HOME or HOME, or pass --cache-dir")]
    NoDefault,
    /// Creating a cache directory failed.
    #[error("create cache directory {path}")]
    Create {
        /// Directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Publishing a staged artefact failed.
    #[error("publish {path}")]
    Publish {
        /// Final path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading an artefact record failed.
    #[error("read record {path}")]
    ReadRecord {
        /// Record path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An artefact record does not parse.
    #[error("parse record {path}")]
    ParseRecord {
        /// Record path.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Writing a JSON file failed.
    #[error("write {path}")]
    WriteJson {
        /// File path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The default cache directory: `$LELANTOS_CACHE`, else
/// `$XDG_CACHE_HOME/lelantos`, else `$HOME/.cache/lelantos`. `var` reads
/// the environment (injected for tests); empty values count as unset, and
/// a relative `XDG_CACHE_HOME` is ignored as the XDG spec says.
pub fn default_dir(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, Error> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("LELANTOS_CACHE") {
        return Ok(dir);
    }
    if let Some(xdg) = set("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("lelantos"));
    }
    set("HOME")
        .map(|home| home.join(".cache").join("lelantos"))
        .ok_or(Error::NoDefault)
}

/// Artefact kinds, each with its own directory prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kernel + initramfs.
    Kernel,
    /// Root filesystem image.
    Rootfs,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Rootfs => "rootfs",
        }
    }
}

/// An opened cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Self, Error> {
        for dir in [root.join("images"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(|source| Error::Create { path: dir, source })?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where artefacts and manifests live.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Directory name of an artefact, relative to [`Cache::images`].
    pub fn dir_name(kind: Kind, key: &str) -> String {
        format!("{}-{key}", kind.prefix())
    }

    /// The artefact's record if it is in the cache.
    pub fn lookup<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<T>, Error> {
        let path = self.images().join(Self::dir_name(kind, key)).join(RECORD);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::ReadRecord { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::ParseRecord { path, source })
    }

    /// A fresh staging directory for building `kind`.
    pub fn staging(&self, kind: Kind) -> Result<TempDir, Error> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("{}-", kind.prefix()))
            .tempdir_in(&tmp)
            .map_err(|source| Error::Create { path: tmp, source })
    }

    /// Writes `record` into `staging`, then renames `staging` to the
    /// artefact's final directory, and returns the record now in place. If
    /// another builder published the same key first, ours is discarded and
    /// the winner's record is returned: it describes the files that are
    /// actually there (a rootfs is not bit-reproducible, so the digests of
    /// two builds of one key differ).
    pub fn publish<T: Serialize + DeserializeOwned>(
        &self,
        staging: TempDir,
        kind: Kind,
        key: &str,
        record: T,
    ) -> Result<T, Error> {
        write_json(&staging.path().join(RECORD), &record)?;
        let dest = self.images().join(Self::dir_name(kind, key));
        let staged = staging.keep();
        match fs::rename(&staged, &dest) {
            Ok(()) => {
                sync_dir(&self.images());
                Ok(record)
            }
            Err(source) => {
                let _ = fs::remove_dir_all(&staged);
                match self.lookup(kind, key)? {
                    Some(winner) => Ok(winner),
                    None => Err(Error::Publish { path: dest, source }),
                }
            }
        }
    }

    /// Writes the manifest for `key` atomically and returns its path. The
    /// content is a function of the inputs, so rewriting it is harmless.
    pub fn write_manifest<T: Serialize>(&self, key: &str, manifest: &T) -> Result<PathBuf, Error> {
        let path = self.images().join(format!("manifest-{key}.json"));
        write_json(&path, manifest)?;
        Ok(path)
    }
}

/// Writes pretty JSON to `path` via a temporary file in the same directory
/// and a rename, so readers never see a partial file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let err = |source| Error::WriteJson {
        path: path.to_owned(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(value).map_err(|e| err(io::Error::other(e)))?;
    json.push(b'\n');
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(&json).map_err(err)?;
    // NamedTempFile is 0600; records and manifests are for every reader
    // (the VM layer may not run as the user who built the image).
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Best effort: makes a rename durable. A crash that loses it only loses a
/// cache entry, which the next build recreates.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn default_dir_precedence() {
        let all = env(&[
            ("LELANTOS_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(default_dir(all).expect("dir"), PathBuf::from("/c"));
        let xdg = env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(default_dir(xdg).expect("dir"), PathBuf::from("/x/lelantos"));
        let relative_xdg = env(&[("XDG_CACHE_HOME", "x"), ("HOME", "/h")]);
        assert_eq!(
            default_dir(relative_xdg).expect("dir"),
            PathBuf::from("/h/.cache/lelantos")
        );
        let empty = env(&[("LELANTOS_CACHE", ""), ("HOME", "/h")]);
        assert_eq!(
            default_dir(empty).expect("dir"),
            PathBuf::from("/h/.cache/lelantos")
        );
        assert!(matches!(default_dir(env(&[])), Err(Error::NoDefault)));
    }

    #[test]
    fn publish_then_lookup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path()).expect("open");
        assert_eq!(
            cache
                .lookup::<serde_json::Value>(Kind::Rootfs, "k")
                .expect("lookup"),
            None
        );
        let staging = cache.staging(Kind::Rootfs).expect("staging");
        fs::write(staging.path().join("rootfs.ext4"), b"img").expect("write");
        let kept = cache
            .publish(staging, Kind::Rootfs, "k", serde_json::json!({"a": 1}))
            .expect("publish");
        assert_eq!(kept, serde_json::json!({"a": 1}));
        assert!(
            cache
                .images()
                .join(Cache::dir_name(Kind::Rootfs, "k"))
                .join("rootfs.ext4")
                .is_file()
        );
        assert_eq!(
            cache
                .lookup::<serde_json::Value>(Kind::Rootfs, "k")
                .expect("lookup"),
            Some(serde_json::json!({"a": 1}))
        );
        // A second publish of the same key loses the race and gets the
        // winner's record, which describes the files in place.
        let again = cache.staging(Kind::Rootfs).expect("staging");
        let winner = cache
            .publish(again, Kind::Rootfs, "k", serde_json::json!({"a": 2}))
            .expect("publish again");
        assert_eq!(winner, serde_json::json!({"a": 1}));
        assert_eq!(
            cache
                .lookup::<serde_json::Value>(Kind::Rootfs, "k")
                .expect("lookup"),
            Some(serde_json::json!({"a": 1}))
        );
        // Nothing is left in staging.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).expect("ls").count(), 0);
    }
}
