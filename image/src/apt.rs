//! The host's apt, used as the one package source for every artefact.
//!
//! We resolve versions with `apt-cache`, fetch `.deb`s with `apt-get
//! download`, unpack them with `dpkg-deb -x`, and hand the host's configured
//! source files to mmdebstrap. Nothing here names a mirror: whichever apt
//! sources the machine has are the ones used. `apt-get update` runs at most
//! once per build, and only when a lookup failed in a way stale or missing
//! package lists explain.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;

/// Errors of talking to apt and dpkg.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `apt-cache show` failed for a package.
    #[error("look up package {package}")]
    Lookup {
        /// Package name.
        package: String,
        /// Why.
        #[source]
        source: cmd::Error,
    },
    /// `apt-cache show` printed nothing usable.
    #[error("apt-cache shows no {field} for package {package}")]
    MissingField {
        /// Package name.
        package: String,
        /// The missing control field.
        field: &'static str,
    },
    /// `apt-get update` failed.
    #[error("refresh package lists")]
    Update(#[source] cmd::Error),
    /// `apt-get download` failed.
    #[error("download {package}={version}")]
    Download {
        /// Package name.
        package: String,
        /// Exact version asked for.
        version: String,
        /// Why.
        #[source]
        source: cmd::Error,
    },
    /// The download directory did not hold exactly one `.deb`.
    #[error("download of {package} left no single .deb in {dir}")]
    NoDeb {
        /// Package name.
        package: String,
        /// Where it should be.
        dir: PathBuf,
    },
    /// `apt-get install` failed.
    #[error("install {packages}")]
    Install {
        /// Space-separated package names.
        packages: String,
        /// Why.
        #[source]
        source: cmd::Error,
    },
    /// `dpkg-deb -x` failed.
    #[error("extract {deb}")]
    Extract {
        /// The package file.
        deb: PathBuf,
        /// Why.
        #[source]
        source: cmd::Error,
    },
    /// Reading apt's configuration or the source files failed.
    #[error("read apt sources configuration")]
    Sources(#[source] cmd::Error),
    /// Listing a sources directory failed.
    #[error("list {dir}")]
    SourcesDir {
        /// Directory apt reads sources from.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host has no apt sources at all.
    #[error("the host has no apt sources configured")]
    NoSources,
    /// Creating a scratch directory failed.
    #[error("create {dir}")]
    Scratch {
        /// Directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A package version apt would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Package name.
    pub package: String,
    /// Candidate version.
    pub version: String,
    /// Raw `Depends:` field (empty when it has none).
    pub depends: String,
}

/// Result of [`Apt::candidates`].
#[derive(Debug, Clone, Default)]
pub struct Candidates(Vec<Candidate>);

impl Candidates {
    /// The candidate of `package`.
    pub fn get(&self, package: &str) -> Result<&Candidate, Error> {
        self.0
            .iter()
            .find(|c| c.package == package)
            .ok_or_else(|| Error::MissingField {
                package: package.to_owned(),
                field: "Version",
            })
    }
}

/// The host's apt, with a once-per-build `apt-get update` fallback.
#[derive(Debug, Default)]
pub struct Apt {
    updated: Cell<bool>,
}

/// Whether an apt failure is the kind that fresh package lists cure: the
/// package or version is unknown (no or old lists) or the file behind a
/// listed version is gone from the archive (old lists).
fn lists_may_be_stale(err: &cmd::Error) -> bool {
    const HINTS: [&str; 6] = [
        "No packages found",
        "Unable to locate package",
        "has no installation candidate",
        "Can't select",
        "not found",
        "404",
    ];
    let stderr = err.stderr();
    HINTS.iter().any(|h| stderr.contains(h))
}

impl Apt {
    /// A handle that has not refreshed the lists yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `op`; if it fails for what looks like missing or stale lists and
    /// we have not refreshed them in this build, runs `apt-get update` once
    /// and tries again.
    fn with_fresh_lists<T>(
        &self,
        op: impl Fn() -> Result<T, cmd::Error>,
    ) -> Result<Result<T, cmd::Error>, Error> {
        match op() {
            Err(e) if !self.updated.get() && lists_may_be_stale(&e) => {
                self.updated.set(true);
                cmd::output(Command::new("apt-get").args(["-q", "update"]))
                    .map_err(Error::Update)?;
                Ok(op())
            }
            other => Ok(other),
        }
    }

    /// The candidates of `packages`, looked up in one `apt-cache` run (each
    /// run re-reads every package list, which is most of a no-op build's
    /// time).
    pub fn candidates(&self, packages: &[&str]) -> Result<Candidates, Error> {
        let stdout = self
            .with_fresh_lists(|| {
                cmd::output(
                    Command::new("apt-cache")
                        .args(["show", "--no-all-versions"])
                        .args(packages),
                )
            })?
            .map_err(|source| Error::Lookup {
                package: packages.join(" "),
                source,
            })?;
        Ok(Candidates(parse_stanzas(&stdout)))
    }

    /// Downloads `package` at exactly `version` into `dir` (which must exist
    /// and be empty) and returns the path of the `.deb`.
    pub fn download(&self, dir: &Path, package: &str, version: &str) -> Result<PathBuf, Error> {
        let spec = format!("{package}={version}");
        self.with_fresh_lists(|| {
            cmd::output(
                Command::new("apt-get")
                    .args(["-q", "download", &spec])
                    .current_dir(dir),
            )
        })?
        .map_err(|source| Error::Download {
            package: package.to_owned(),
            version: version.to_owned(),
            source,
        })?;
        let no_deb = || Error::NoDeb {
            package: package.to_owned(),
            dir: dir.to_owned(),
        };
        let debs: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|_| no_deb())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        match debs.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(no_deb()),
        }
    }

    /// Downloads `package` at `version` into a fresh subdirectory of
    /// `scratch` and unpacks it into `dest`.
    pub fn fetch_and_extract(
        &self,
        scratch: &Path,
        package: &str,
        version: &str,
        dest: &Path,
    ) -> Result<(), Error> {
        let dl = scratch.join(format!("deb-{package}"));
        fs::create_dir_all(&dl).map_err(|source| Error::Scratch {
            dir: dl.clone(),
            source,
        })?;
        let deb = self.download(&dl, package, version)?;
        extract(&deb, dest)?;
        // The unpacked tree is what we keep; the archive is dead weight.
        let _ = fs::remove_dir_all(&dl);
        Ok(())
    }

    /// Installs host tools the pipeline needs (e.g. mmdebstrap).
    pub fn install(&self, packages: &[&str]) -> Result<(), Error> {
        let mut args = vec!["-q", "-y", "--no-install-recommends", "install"];
        args.extend_from_slice(packages);
        self.with_fresh_lists(|| {
            cmd::output(
                Command::new("apt-get")
                    .args(&args)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        })?
        .map_err(|source| Error::Install {
            packages: packages.join(" "),
            source,
        })?;
        Ok(())
    }
}

/// Unpacks a `.deb`'s data into `dest` (no maintainer scripts run).
pub fn extract(deb: &Path, dest: &Path) -> Result<(), Error> {
    cmd::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map_err(|source| {
        Error::Extract {
            deb: deb.to_owned(),
            source,
        }
    })?;
    Ok(())
}

/// Parses `apt-cache show` output; stanzas without a name or version are
/// skipped.
pub fn parse_stanzas(stdout: &str) -> Vec<Candidate> {
    stdout
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza.lines().find_map(|line| {
                    line.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .map(|v| v.trim().to_owned())
                })
            };
            Some(Candidate {
                package: field("Package")?,
                version: field("Version")?,
                depends: field("Depends").unwrap_or_default(),
            })
        })
        .collect()
}

/// The source files the host's apt reads (`sources.list` and the `*.list` /
/// `*.sources` parts), as apt itself locates them, skipping empty ones.
/// mmdebstrap accepts each path as a MIRROR argument and copies its content
/// into the new system, so the guest's apt points where the host's does.
pub fn host_source_files() -> Result<Vec<PathBuf>, Error> {
    let shell = cmd::output(Command::new("apt-config").args([
        "shell",
        "LIST",
        "Dir::Etc::sourcelist/f",
        "PARTS",
        "Dir::Etc::sourceparts/d",
    ]))
    .map_err(Error::Sources)?;
    let mut list = None;
    let mut parts = None;
    for line in shell.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = PathBuf::from(v.trim().trim_matches('\''));
            match k {
                "LIST" => list = Some(v),
                "PARTS" => parts = Some(v),
                _ => {}
            }
        }
    }
    let mut files = Vec::new();
    if let Some(list) = list {
        files.push(list);
    }
    if let Some(dir) = parts.filter(|d| d.is_dir()) {
        let entries = fs::read_dir(&dir).map_err(|source| Error::SourcesDir {
            dir: dir.clone(),
            source,
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            // apt itself reads only these two extensions from the parts
            // directory (everything else, e.g. `*.disabled`, is ignored).
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files.retain(|p| has_entries(p));
    if files.is_empty() {
        return Err(Error::NoSources);
    }
    Ok(files)
}

/// Whether a sources file has anything but comments and blank lines.
fn has_entries(path: &Path) -> bool {
    fs::read_to_string(path).is_ok_and(|text| {
        text.lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stanzas() {
        let out = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.172+1)\n\
                   Version: 6.1.172-1\nDepends: linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)\n\
                   Description: x\n\nPackage: busybox-static\nVersion: 1:1.35\n\n\
                   Package: broken\n";
        let got = parse_stanzas(out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].package, "linux-image-cloud-amd64");
        assert_eq!(got[0].version, "6.1.172-1");
        assert_eq!(
            got[0].depends,
            "linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)"
        );
        assert_eq!(got[1].package, "busybox-static");
        assert_eq!(got[1].version, "1:1.35");
        assert_eq!(got[1].depends, "");
    }

    #[test]
    fn comment_only_sources_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("a.list");
        fs::write(&empty, "# nothing\n\n").expect("write");
        let real = dir.path().join("b.sources");
        fs::write(&real, "Types: deb\n").expect("write");
        assert!(!has_entries(&empty));
        assert!(has_entries(&real));
        assert!(!has_entries(&dir.path().join("missing.list")));
    }
}
