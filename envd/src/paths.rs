//! Path resolution shared by every RPC and `/files`.
//!
//! Empty ⇒ the default workdir (else home); `~` and `~/x` ⇒ the user's home;
//! relative ⇒ joined to home; absolute ⇒ unchanged. The result is cleaned
//! lexically (`.`/`..` removed) without touching the filesystem.

use std::path::{Component, Path, PathBuf};

use crate::users::User;

/// Why a path could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `~other` forms are not supported.
    #[error("path '{0}' uses another user's home, which is not supported")]
    OtherUsersHome(String),
}

/// Resolves `raw` for `user`; see the module docs for the rules.
pub fn resolve(raw: &str, user: &User, default_workdir: Option<&Path>) -> Result<PathBuf, Error> {
    if raw.is_empty() {
        return Ok(clean(default_workdir.unwrap_or(&user.home)));
    }
    let joined = if raw == "~" {
        user.home.clone()
    } else if let Some(rest) = raw.strip_prefix("~/") {
        user.home.join(rest)
    } else if raw.starts_with('~') {
        return Err(Error::OtherUsersHome(raw.to_owned()));
    } else if Path::new(raw).is_absolute() {
        PathBuf::from(raw)
    } else {
        user.home.join(raw)
    };
    Ok(clean(&joined))
}

/// Removes `.` and `..` components lexically; `..` above the root stays at root.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
            groups: vec![],
        }
    }

    #[test]
    fn resolution_rules() {
        let u = user();
        let r = |p: &str| resolve(p, &u, None).unwrap();
        assert_eq!(r(""), PathBuf::from("/home/user"));
        assert_eq!(r("~"), PathBuf::from("/home/user"));
        assert_eq!(r("~/a/b"), PathBuf::from("/home/user/a/b"));
        assert_eq!(r("a/../b"), PathBuf::from("/home/user/b"));
        assert_eq!(r("/x/./y/"), PathBuf::from("/x/y"));
        assert_eq!(r("/../.."), PathBuf::from("/"));
        assert_eq!(
            resolve("", &u, Some(Path::new("/work"))).unwrap(),
            PathBuf::from("/work")
        );
        assert!(resolve("~root/x", &u, None).is_err());
    }
}
