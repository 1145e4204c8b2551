//! Accounts, read straight from `/etc/passwd` and `/etc/group`.
//!
//! envd is linked statically, and glibc's NSS does not work reliably from a
//! static binary; inside a sandbox rootfs every account lives in these two
//! files anyway, so we read them ourselves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One account from `/etc/passwd`, with its supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
    /// Supplementary group ids (groups that list the user as a member).
    pub groups: Vec<u32>,
}

/// Errors reading the account databases.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named user is not in `/etc/passwd`.
    #[error("invalid username: '{0}'")]
    UnknownUser(String),
    /// `/etc/passwd` or `/etc/group` could not be read.
    #[error("read account database {path}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A snapshot of both account files, for name↔id lookups.
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    users: Vec<User>,
    groups: Vec<(String, u32, Vec<String>)>,
}

impl Accounts {
    /// Reads `<root>/etc/passwd` and `<root>/etc/group`. A missing group file
    /// is tolerated (ids then print numerically).
    pub fn load_from(root: &Path) -> Result<Self, Error> {
        let passwd_path = root.join("etc/passwd");
        let passwd = std::fs::read_to_string(&passwd_path).map_err(|source| Error::Read {
            path: passwd_path,
            source,
        })?;
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
        Ok(Self::parse(&passwd, &group))
    }

    /// Reads the system's account files.
    pub fn load() -> Result<Self, Error> {
        Self::load_from(Path::new("/"))
    }

    /// Parses the text of the two files; malformed lines are skipped.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let groups: Vec<(String, u32, Vec<String>)> = group
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 4 {
                    return None;
                }
                let gid = f[2].parse().ok()?;
                let members = f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect();
                Some((f[0].to_owned(), gid, members))
            })
            .collect();
        let users = passwd
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 7 {
                    return None;
                }
                let name = f[0].to_owned();
                let gid: u32 = f[3].parse().ok()?;
                let mut extra: Vec<u32> = groups
                    .iter()
                    .filter(|(_, g, members)| *g != gid && members.contains(&name))
                    .map(|(_, g, _)| *g)
                    .collect();
                extra.sort_unstable();
                extra.dedup();
                Some(User {
                    uid: f[2].parse().ok()?,
                    gid,
                    home: PathBuf::from(f[5]),
                    shell: f[6].to_owned(),
                    groups: extra,
                    name,
                })
            })
            .collect();
        Self { users, groups }
    }

    /// Looks a user up by login name.
    pub fn user(&self, name: &str) -> Result<User, Error> {
        self.users
            .iter()
            .find(|u| u.name == name)
            .cloned()
            .ok_or_else(|| Error::UnknownUser(name.to_owned()))
    }

    /// Name for a uid, or the number as text.
    pub fn user_name(&self, uid: u32) -> String {
        self.users
            .iter()
            .find(|u| u.uid == uid)
            .map_or_else(|| uid.to_string(), |u| u.name.clone())
    }

    /// Name for a gid, or the number as text.
    pub fn group_name(&self, gid: u32) -> String {
        self.groups
            .iter()
            .find(|(_, g, _)| *g == gid)
            .map_or_else(|| gid.to_string(), |(n, _, _)| n.clone())
    }

    /// Map of user name to uid, for callers that need many lookups.
    pub fn uids(&self) -> HashMap<String, u32> {
        self.users.iter().map(|u| (u.name.clone(), u.uid)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        user:x:1000:1000::/home/user:/bin/bash\nbroken line\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nsudo:x:27:user,other\n";

    #[test]
    fn parses_users_and_supplementary_groups() {
        let a = Accounts::parse(PASSWD, GROUP);
        let u = a.user("user").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, PathBuf::from("/home/user"));
        assert_eq!(u.groups, vec![27]);
        assert_eq!(a.group_name(27), "sudo");
        assert_eq!(a.user_name(4242), "4242");
        assert!(matches!(a.user("nobody"), Err(Error::UnknownUser(_))));
    }
}
