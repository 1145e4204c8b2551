//! Where template definitions come from: a local directory (watched), or a
//! git repository (fetched on a timer or on demand). Either way a sync
//! yields a directory to read and the revision it shows.

use std::path::{Path, PathBuf};

use git2::{FetchOptions, RemoteCallbacks, Repository, build::CheckoutBuilder};
use lelantos_core::config::GitSource;
use sha2::{Digest, Sha256};

/// Why a source could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A git operation failed.
    #[error("git {what} ({url}): {source}")]
    Git {
        /// What was being done.
        what: &'static str,
        /// The repository.
        url: String,
        /// Why.
        #[source]
        source: git2::Error,
    },
    /// Reading the directory failed.
    #[error("read {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sync task died.
    #[error("sync task: {0}")]
    Task(String),
}

/// A definitions source.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory on this host.
    Dir(PathBuf),
    /// A git repository, checked out under `checkout`.
    Git {
        /// Where to fetch from.
        config: GitSource,
        /// Working tree the daemon owns.
        checkout: PathBuf,
    },
}

/// What a sync produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The directory holding the definitions.
    pub dir: PathBuf,
    /// `git:<commit>` or `dir:<content hash>`.
    pub revision: String,
}

impl Source {
    /// A git source checked out under `data_dir/git/<hash of the URL>`.
    pub fn git(config: GitSource, data_dir: &Path) -> Self {
        let id = hex(&Sha256::digest(config.url.as_bytes()))[..16].to_owned();
        Self::Git {
            checkout: data_dir.join("git").join(id),
            config,
        }
    }

    /// Brings the source up to date.
    pub async fn sync(&self) -> Result<Synced, SourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || match &this {
            Source::Dir(dir) => Ok(Synced {
                revision: format!("dir:{}", dir_hash(dir)?),
                dir: dir.clone(),
            }),
            Source::Git { config, checkout } => sync_git(config, checkout),
        })
        .await
        .map_err(|e| SourceError::Task(e.to_string()))?
    }

    /// The local directory to watch for changes (directory sources only).
    pub fn watch_dir(&self) -> Option<&Path> {
        match self {
            Source::Dir(d) => Some(d),
            Source::Git { .. } => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash of the definition files' names and contents (not recursive:
/// `copy` inputs are hashed per template when its build key is computed).
fn dir_hash(dir: &Path) -> Result<String, SourceError> {
    let io = |source| SourceError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        h.update(
            p.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update([0]);
        h.update(std::fs::read(&p).map_err(io)?);
        h.update([0]);
    }
    Ok(hex(&h.finalize())[..12].to_owned())
}

fn sync_git(config: &GitSource, checkout: &Path) -> Result<Synced, SourceError> {
    let err = |what: &'static str| {
        let url = config.url.clone();
        move |source| SourceError::Git { what, url, source }
    };
    std::fs::create_dir_all(checkout).map_err(|source| SourceError::Io {
        path: checkout.to_owned(),
        source,
    })?;
    let repo = match Repository::open(checkout) {
        Ok(r) => r,
        Err(_) => Repository::init(checkout).map_err(err("init"))?,
    };
    // The remote follows the config: a changed URL takes effect at once.
    if repo.find_remote("origin").is_ok() {
        repo.remote_set_url("origin", &config.url)
            .map_err(err("set remote"))?;
    } else {
        repo.remote("origin", &config.url)
            .map_err(err("add remote"))?;
    }
    let mut remote = repo.find_remote("origin").map_err(err("find remote"))?;
    let mut callbacks = RemoteCallbacks::new();
    let cfg = config.clone();
    callbacks.credentials(move |_url, user_from_url, allowed| {
        let user = cfg.username.as_deref().or(user_from_url).unwrap_or("git");
        if allowed.contains(git2::CredentialType::SSH_KEY)
            && let Some(key) = &cfg.ssh_key
        {
            return git2::Cred::ssh_key(user, None, key, None);
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
            && let Some(file) = &cfg.password_file
        {
            let password = std::fs::read_to_string(file)
                .map_err(|e| git2::Error::from_str(&format!("read {}: {e}", file.display())))?;
            return git2::Cred::userpass_plaintext(user, password.trim());
        }
        git2::Cred::default()
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    let refspec = format!("+refs/heads/{b}:refs/remotes/origin/{b}", b = config.branch);
    remote
        .fetch(&[refspec.as_str()], Some(&mut opts), None)
        .map_err(err("fetch"))?;
    let reference = repo
        .find_reference(&format!("refs/remotes/origin/{}", config.branch))
        .map_err(err("find branch"))?;
    let commit = reference.peel_to_commit().map_err(err("resolve branch"))?;
    repo.checkout_tree(
        commit.as_object(),
        Some(CheckoutBuilder::new().force().remove_untracked(true)),
    )
    .map_err(err("checkout"))?;
    repo.set_head_detached(commit.id())
        .map_err(err("set HEAD"))?;
    Ok(Synced {
        dir: checkout.join(&config.path),
        revision: format!("git:{}", commit.id()),
    })
}
