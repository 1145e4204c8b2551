//! `EntryInfo` for a path: what Stat, ListDir, MakeDir, Move and watch events
//! return. Semantics follow E2B's envd: lstat-based, a symlink reports its
//! target's type and mode, `permissions` is Go's `os.FileMode` string of the
//! entry itself, and `user.e2b.*` xattrs become `metadata`.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envd_protocol::filesystem::{EntryInfo, FileType};

use crate::users::Accounts;

/// Prefix of the extended attributes that carry user metadata.
pub const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// Builds the `EntryInfo` of `path` (not following a final symlink for the
/// entry itself). Returns the io error of the `lstat` when it fails.
pub fn entry_info(path: &Path, accounts: &Accounts) -> std::io::Result<EntryInfo> {
    let meta = std::fs::symlink_metadata(path)?;
    let is_link = meta.file_type().is_symlink();
    // For a symlink, type and mode come from the target; a dangling link has
    // neither (type UNSPECIFIED, which the SDK's list() drops).
    let target_meta = if is_link {
        std::fs::metadata(path).ok()
    } else {
        Some(meta.clone())
    };
    let file_type = match &target_meta {
        Some(m) if m.is_dir() => FileType::FILE_TYPE_DIRECTORY,
        Some(m) if m.is_file() => FileType::FILE_TYPE_FILE,
        _ => FileType::FILE_TYPE_UNSPECIFIED,
    };
    let mode_source = target_meta.as_ref().unwrap_or(&meta);
    let symlink_target = if is_link {
        Some(
            std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
        )
    } else {
        None
    };
    let modified = UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.mtime()).unwrap_or(0),
            u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        );
    let mut info = EntryInfo {
        name: path
            .file_name()
            .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned()),
        path: path.display().to_string(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode: mode_source.permissions().mode() & 0o777,
        permissions: go_file_mode(&meta),
        owner: accounts.user_name(meta.uid()),
        group: accounts.group_name(meta.gid()),
        symlink_target,
        metadata: read_metadata(path).into_iter().collect(),
        ..EntryInfo::default()
    };
    info.r#type = file_type.into();
    info.modified_time = buffa_types::google::protobuf::Timestamp::from(modified).into();
    Ok(info)
}

/// Go's `os.FileMode.String()` for this entry: type and special-bit letters
/// first, then `rwxrwxrwx`.
pub fn go_file_mode(meta: &std::fs::Metadata) -> String {
    let ft = meta.file_type();
    let mode = meta.permissions().mode();
    let mut s = String::with_capacity(12);
    if ft.is_dir() {
        s.push('d');
    }
    if ft.is_symlink() {
        s.push('L');
    }
    if ft.is_block_device() {
        s.push('D');
    }
    if ft.is_fifo() {
        s.push('p');
    }
    if ft.is_socket() {
        s.push('S');
    }
    if mode & 0o4000 != 0 {
        s.push('u');
    }
    if mode & 0o2000 != 0 {
        s.push('g');
    }
    if ft.is_char_device() {
        // Go prints both letters for a character device.
        s.push('D');
        s.push('c');
    }
    if mode & 0o1000 != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    const RWX: &[u8; 9] = b"rwxrwxrwx";
    for (i, c) in RWX.iter().enumerate() {
        let bit = 1 << (8 - i);
        s.push(if mode & bit != 0 { char::from(*c) } else { '-' });
    }
    s
}

/// The `user.e2b.*` extended attributes of `path` (prefix stripped).
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(names) = xattr_list(path) else {
        return out;
    };
    for name in names {
        if let Some(key) = name.strip_prefix(METADATA_XATTR_PREFIX)
            && let Ok(value) = xattr_get(path, &name)
        {
            out.insert(key.to_owned(), String::from_utf8_lossy(&value).into_owned());
        }
    }
    out
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn xattr_list(path: &Path) -> std::io::Result<Vec<String>> {
    let p = c_path(path)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: `p` is a valid NUL-terminated string and `buf` is writable for its full length.
    let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn xattr_get(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = c_path(path)?;
    let n = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated; `buf` is writable for its full length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(len).unwrap_or(0));
    Ok(buf)
}

/// Replaces the whole `user.e2b.*` set of `path` with `metadata`.
pub fn write_metadata(path: &Path, metadata: &HashMap<String, String>) -> std::io::Result<()> {
    let p = c_path(path)?;
    for name in xattr_list(path).unwrap_or_default() {
        if name.starts_with(METADATA_XATTR_PREFIX) {
            let n = std::ffi::CString::new(name)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            // SAFETY: both arguments are NUL-terminated strings.
            unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
        }
    }
    for (k, v) in metadata {
        let n = std::ffi::CString::new(format!("{METADATA_XATTR_PREFIX}{k}"))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `n` is NUL-terminated; the value pointer/length pair describes `v`'s bytes.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Current time as a protobuf timestamp.
pub fn now_timestamp() -> buffa_types::google::protobuf::Timestamp {
    SystemTime::now().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mode_strings() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            go_file_mode(&std::fs::symlink_metadata(&f).unwrap()),
            "-rw-r--r--"
        );
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(
            go_file_mode(&std::fs::symlink_metadata(&d).unwrap()),
            "dtrwxrwxrwx"
        );
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert_eq!(
            go_file_mode(&std::fs::symlink_metadata(&l).unwrap()),
            "Lrwxrwxrwx"
        );
    }

    #[test]
    fn symlink_reports_target_type_and_absolute_target() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("real");
        std::fs::create_dir(&d).unwrap();
        let l = dir.path().join("link");
        std::os::unix::fs::symlink("real", &l).unwrap();
        let info = entry_info(&l, &Accounts::default()).unwrap();
        assert_eq!(info.r#type.as_known(), Some(FileType::FILE_TYPE_DIRECTORY));
        assert_eq!(
            info.symlink_target.as_deref(),
            Some(std::fs::canonicalize(&d).unwrap().to_str().unwrap())
        );
        assert!(info.permissions.starts_with('L'));
    }
}
