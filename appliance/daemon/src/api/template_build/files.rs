//! Uploaded COPY contents: `<data_dir>/template-files/<hash>.tar.gz`, one
//! archive per client hash, written once and kept (the hash is the SDK's
//! cache key: a later build with the same files skips the upload).
//!
//! Nothing about an archive is checked but its size: the hash is the
//! client's, not ours, and the files only ever land in a build VM.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

/// Largest archive accepted.
pub const MAX_UPLOAD_BYTES: u64 = 4 << 30;

/// Why storing or unpacking files failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The archive is larger than [`MAX_UPLOAD_BYTES`].
    #[error("upload larger than {MAX_UPLOAD_BYTES} bytes")]
    TooLarge,
    /// The request body broke off.
    #[error("read the upload body")]
    Body(#[source] axum::Error),
    /// Writing the archive failed.
    #[error("store {path}")]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A build names an upload this server does not hold.
    #[error("no uploaded files for hash {0}")]
    Missing(String),
    /// Unpacking an archive failed.
    #[error("unpack {path}")]
    Unpack {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where uploads live.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("template-files")
}

/// The archive for `hash` (a checked hex string).
pub fn archive(data_dir: &Path, hash: &str) -> PathBuf {
    dir(data_dir).join(format!("{hash}.tar.gz"))
}

/// Streams `body` into the archive for `hash`: first a temporary file, then
/// a rename, so a broken upload never looks present.
pub async fn store(
    data_dir: &Path,
    hash: &str,
    body: axum::body::Body,
    content_length: Option<u64>,
) -> Result<u64, FilesError> {
    if content_length.is_some_and(|n| n > MAX_UPLOAD_BYTES) {
        return Err(FilesError::TooLarge);
    }
    let final_path = archive(data_dir, hash);
    let store_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Store { path, source }
    };
    let parent = dir(data_dir);
    tokio::fs::create_dir_all(&parent)
        .await
        .map_err(store_err(&parent))?;
    let tmp = {
        use rand::Rng as _;
        let n: u64 = rand::rng().random();
        parent.join(format!(".{hash}.{n:016x}.part"))
    };
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(store_err(&tmp))?;
        let mut stream = body.into_data_stream();
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(FilesError::Body)?;
            total += chunk.len() as u64;
            if total > MAX_UPLOAD_BYTES {
                return Err(FilesError::TooLarge);
            }
            file.write_all(&chunk).await.map_err(store_err(&tmp))?;
        }
        file.sync_all().await.map_err(store_err(&tmp))?;
        tokio::fs::rename(&tmp, &final_path)
            .await
            .map_err(store_err(&final_path))?;
        Ok(total)
    }
    .await;
    if result.is_err() {
        // Best effort: a leftover part file is only wasted space.
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Unpacks the archive for each hash into `dest` (gzip or plain tar: the
/// SDK's `gzip=False` sends plain tar). Entries cannot escape `dest`: the
/// tar crate refuses `..` and absolute paths. Blocking; call it off the
/// async threads.
pub fn unpack_all(data_dir: &Path, hashes: &[String], dest: &Path) -> Result<(), FilesError> {
    std::fs::create_dir_all(dest).map_err(|source| FilesError::Unpack {
        path: dest.to_owned(),
        source,
    })?;
    for hash in hashes {
        let path = archive(data_dir, hash);
        if !path.is_file() {
            return Err(FilesError::Missing(hash.clone()));
        }
        let unpack_err = |source| FilesError::Unpack {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(unpack_err)?;
        let mut magic = [0u8; 2];
        let gz = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        drop(file);
        let file = std::fs::File::open(&path).map_err(unpack_err)?;
        let reader: Box<dyn std::io::Read> = if gz {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.set_overwrite(true);
        tar.unpack(dest).map_err(unpack_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tarball(gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let data = b"hello\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "sub/f.txt", &data[..]).unwrap();
        let raw = b.into_inner().unwrap();
        if !gzip {
            return raw;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    #[tokio::test]
    async fn store_then_unpack_gzip_and_plain() {
        let data = tempfile::tempdir().unwrap();
        for (hash, gzip) in [("aa", true), ("bb", false)] {
            let n = store(
                data.path(),
                hash,
                axum::body::Body::from(tarball(gzip)),
                None,
            )
            .await
            .unwrap();
            assert!(n > 0);
            assert!(archive(data.path(), hash).is_file());
        }
        let ctx = data.path().join("ctx");
        unpack_all(data.path(), &["aa".into(), "bb".into()], &ctx).unwrap();
        assert_eq!(
            std::fs::read_to_string(ctx.join("sub/f.txt")).unwrap(),
            "hello\n"
        );
        assert!(matches!(
            unpack_all(data.path(), &["cc".into()], &ctx),
            Err(FilesError::Missing(_))
        ));
        assert!(matches!(
            store(
                data.path(),
                "dd",
                axum::body::Body::empty(),
                Some(MAX_UPLOAD_BYTES + 1)
            )
            .await,
            Err(FilesError::TooLarge)
        ));
    }
}
