//! `POST /files`: receive one or more files.
//!
//! The body is `application/octet-stream` (one file, `path` required) or
//! `multipart/form-data` (every part named `file` is a file; its destination
//! is the `path` query, else the part's full filename, which the SDKs set to
//! the destination path). Either may be gzip'ed as a whole
//! (`Content-Encoding: gzip`). Parts are consumed one at a time and each is
//! streamed to its staging file through a bounded buffer, so memory does not
//! grow with the upload size. Staging and publishing: `commit`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::pin::Pin;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use http::{HeaderMap, Uri, header};
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;

use super::commit::Staged;
use super::{Error, FilesQuery, authorize, gzip};
use crate::http::AppState;
use crate::http::signing::Operation;
use crate::users::User;

/// Write buffer between the network and the staging file: large enough to
/// turn many small body chunks into few syscalls, small enough not to matter.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Longest metadata key: xattr names are limited to 255 bytes, of which
/// `user.e2b.` takes 9.
const MAX_METADATA_KEY: usize = 246;

/// Largest total of metadata keys and values per file.
const MAX_METADATA_TOTAL: usize = 4096;

/// One written file, as the SDKs expect it back.
#[derive(Debug, Serialize)]
struct WriteInfo {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

/// The decoded request body.
type DataStream = Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// How the body carries its file(s).
enum BodyKind {
    /// One file, the raw body.
    Raw,
    /// multipart/form-data with this boundary.
    Multipart(String),
}

/// What is settled before the body is read.
struct Preflight {
    query: FilesQuery,
    user: User,
    metadata: BTreeMap<String, String>,
    kind: BodyKind,
    encoding: Encoding,
}

/// `POST /files`.
pub async fn upload(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let pre = match preflight(&state, &uri, &headers) {
        Ok(pre) => pre,
        Err(e) => {
            crate::http::drain(body).await;
            return e.into_response();
        }
    };
    match receive(&state, pre, body).await {
        Ok(written) => Json(written).into_response(),
        Err(e) => e.into_response(),
    }
}

fn preflight(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<Preflight, Error> {
    let query = FilesQuery::parse(uri)?;
    let user = authorize(&state.sandbox, headers, &query, Operation::Write)?;
    Ok(Preflight {
        user,
        metadata: parse_metadata(headers)?,
        kind: body_kind(headers)?,
        encoding: encoding(headers)?,
        query,
    })
}

async fn receive(state: &AppState, pre: Preflight, body: Body) -> Result<Vec<WriteInfo>, Error> {
    let Preflight {
        query: q,
        user,
        metadata,
        kind,
        encoding,
    } = pre;
    let data = decoded_body(encoding, body);
    let workdir = state.sandbox.settings().default_workdir;
    let resolve = |raw: &str| crate::paths::resolve(raw, &user, workdir.as_deref());
    let path_query = q.path.as_deref().filter(|p| !p.is_empty());

    match kind {
        BodyKind::Raw => {
            let dest = resolve(path_query.ok_or(Error::MissingPath)?)?;
            Ok(vec![write_one(dest, &user, &metadata, data).await?])
        }
        BodyKind::Multipart(boundary) => {
            let mut multipart = multer::Multipart::new(data, boundary);
            let mut seen = HashSet::new();
            let mut written = Vec::new();
            while let Some(field) = multipart.next_field().await? {
                // Other part names are skipped; multer discards their bytes
                // when the next field is requested.
                if field.name() != Some("file") {
                    continue;
                }
                let raw = match path_query {
                    Some(p) => p.to_owned(),
                    None => field
                        .file_name()
                        .filter(|f| !f.is_empty())
                        .ok_or(Error::MissingDestination)?
                        .to_owned(),
                };
                let dest = resolve(&raw)?;
                if !seen.insert(dest.clone()) {
                    return Err(Error::DuplicatePath(dest.display().to_string()));
                }
                written.push(write_one(dest, &user, &metadata, field.map_err(Error::from)).await?);
            }
            if written.is_empty() {
                return Err(Error::NoFileParts);
            }
            Ok(written)
        }
    }
}

/// Streams `data` into a staging file for `dest`, then publishes it.
async fn write_one<S>(
    dest: PathBuf,
    user: &User,
    metadata: &BTreeMap<String, String>,
    data: S,
) -> Result<WriteInfo, Error>
where
    S: Stream<Item = Result<Bytes, Error>>,
{
    let for_prepare = dest.clone();
    let staged = tokio::task::spawn_blocking(move || Staged::prepare(&for_prepare))
        .await
        .map_err(Error::Worker)??;
    let mut out = tokio::io::BufWriter::with_capacity(
        WRITE_BUFFER,
        tokio::fs::File::from_std(staged.writer()?),
    );
    let mut data = std::pin::pin!(data);
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        out.write_all(&chunk)
            .await
            .map_err(|e| Error::io("write", &dest, e))?;
    }
    // flush waits for the file's last in-flight write, so ENOSPC and
    // friends surface here rather than after we report success.
    out.flush()
        .await
        .map_err(|e| Error::io("write", &dest, e))?;
    drop(out);

    let (user, meta) = (user.clone(), metadata.clone());
    tokio::task::spawn_blocking(move || staged.commit(&user, &meta))
        .await
        .map_err(Error::Worker)??;
    Ok(WriteInfo {
        name: dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file",
        path: dest.display().to_string(),
        metadata: metadata.clone(),
    })
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "multipart/form-data" => Ok(BodyKind::Multipart(multer::parse_boundary(&content_type)?)),
        "application/octet-stream" => Ok(BodyKind::Raw),
        _ => Err(Error::UnsupportedContentType(content_type)),
    }
}

/// How the body is encoded as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
}

/// The request's `Content-Encoding`, if we can undo it.
fn encoding(headers: &HeaderMap) -> Result<Encoding, Error> {
    let encoding = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    match encoding.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        _ => Err(Error::UnsupportedContentEncoding(encoding)),
    }
}

/// The body with its encoding removed.
fn decoded_body(encoding: Encoding, body: Body) -> DataStream {
    let stream = body.into_data_stream();
    match encoding {
        Encoding::Identity => Box::pin(stream.map_err(Error::Body)),
        Encoding::Gzip => Box::pin(gzip::decode(stream)),
    }
}

/// `X-Metadata-<key>: <value>` headers as the new `user.e2b.*` set. Header
/// names arrive lowercased, which makes keys case-insensitive as in E2B.
fn parse_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("x-metadata-") else {
            continue;
        };
        if key.is_empty() {
            return Err(Error::Metadata("empty key".into()));
        }
        if key.len() > MAX_METADATA_KEY {
            return Err(Error::Metadata(format!(
                "key '{key}' is longer than {MAX_METADATA_KEY} bytes"
            )));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Metadata(format!(
                "key '{key}' is not printable ASCII"
            )));
        }
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| Error::Metadata(format!("value of '{key}' is not UTF-8")))?;
        total += key.len() + value.len();
        if total > MAX_METADATA_TOTAL {
            return Err(Error::Metadata(format!(
                "metadata is larger than {MAX_METADATA_TOTAL} bytes"
            )));
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn metadata_rules() {
        let m =
            parse_metadata(&headers(&[("X-Metadata-Owner", "Alice"), ("x-other", "y")])).unwrap();
        assert_eq!(
            m,
            BTreeMap::from([("owner".to_owned(), "Alice".to_owned())])
        );
        let long = format!("x-metadata-{}", "k".repeat(247));
        assert!(parse_metadata(&headers(&[(&long, "v")])).is_err());
        let ok = format!("x-metadata-{}", "k".repeat(246));
        assert!(parse_metadata(&headers(&[(&ok, "v")])).is_ok());
        let big = "v".repeat(3000);
        assert!(
            parse_metadata(&headers(&[("x-metadata-a", &big), ("x-metadata-b", &big)])).is_err()
        );
    }

    #[test]
    fn content_types() {
        assert!(matches!(
            body_kind(&headers(&[("content-type", "multipart/form-data; boundary=abc")])),
            Ok(BodyKind::Multipart(b)) if b == "abc"
        ));
        assert!(matches!(
            body_kind(&headers(&[("content-type", "application/octet-stream")])),
            Ok(BodyKind::Raw)
        ));
        assert!(matches!(
            body_kind(&headers(&[("content-type", "text/plain")])),
            Err(Error::UnsupportedContentType(_))
        ));
        assert!(matches!(
            body_kind(&HeaderMap::new()),
            Err(Error::UnsupportedContentType(_))
        ));
    }
}
