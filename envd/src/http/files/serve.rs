//! `GET /files`: stream one file to the client.
//!
//! Mirrors what E2B's envd gets from Go's `http.ServeContent`: raw bytes as
//! `application/octet-stream`, `Content-Disposition: inline; filename="…"`,
//! an exact `Content-Length` (0 for empty files: the js SDK checks it), and a
//! single byte `Range`. The file is read in 64 KiB pieces, never whole.

use std::io::SeekFrom;
use std::path::Path;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use super::{Error, FilesQuery, authorize, gzip};
use crate::http::AppState;
use crate::http::signing::Operation;

/// Read size for identity responses.
const CHUNK: usize = 64 * 1024;

/// RFC 5987 `attr-char`: everything else is percent-encoded in `filename*`.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `GET /files`.
pub async fn download(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    match serve(&state, &uri, &headers).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn serve(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<Response, Error> {
    let q = FilesQuery::parse(uri)?;
    let user = authorize(&state.sandbox, headers, &q, Operation::Read)?;
    let workdir = state.sandbox.settings().default_workdir;
    let path = crate::paths::resolve(q.path.as_deref().unwrap_or(""), &user, workdir.as_deref())?;
    let shown = path.display().to_string();

    // O_NONBLOCK so that opening a FIFO cannot hang the request (it is
    // rejected after the fstat); it changes nothing for regular files.
    let file = match tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .await
    {
        Ok(f) => f,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Err(Error::NotFound(shown));
        }
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    // fstat of the opened file, not a second lookup of the path: no race.
    let meta = file
        .metadata()
        .await
        .map_err(|e| Error::io("stat", &path, e))?;
    if meta.is_dir() {
        return Err(Error::IsDirectory(shown));
    }
    if !meta.is_file() {
        return Err(Error::NotRegularFile(shown));
    }
    let size = meta.len();

    let range = if headers.contains_key(header::IF_RANGE) {
        // We send no validators, so an If-Range can never be shown to hold:
        // the safe answer is the whole file.
        ByteRange::Full
    } else {
        headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map_or(ByteRange::Full, |v| parse_range(v, size))
    };
    let mut coding = negotiate(
        headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    )?;
    if matches!(range, ByteRange::Partial { .. }) || size == 0 {
        // A range addresses identity bytes; an empty file gains nothing from
        // gzip and must answer Content-Length: 0.
        coding = Coding::Identity;
    }

    let mut res = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_DISPOSITION, content_disposition(&path))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::VARY, "accept-encoding");
    let (start, len) = match range {
        ByteRange::Full => (0, size),
        ByteRange::Partial { start, end } => {
            res = res
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (start, end - start + 1)
        }
        ByteRange::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size }),
    };
    let mut file = file;
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| Error::io("seek", &path, e))?;
    }
    // take(len): a file that grows while we stream must not overrun the
    // Content-Length we announced (a shrinking one makes hyper abort instead).
    let reader = file.take(len);
    let body = match coding {
        Coding::Identity => {
            res = res.header(header::CONTENT_LENGTH, len);
            Body::from_stream(ReaderStream::with_capacity(reader, CHUNK))
        }
        Coding::Gzip => {
            res = res.header(header::CONTENT_ENCODING, "gzip");
            Body::from_stream(gzip::encode(reader))
        }
    };
    res.body(body).map_err(|e| Error::Io {
        step: "build response for",
        path: shown,
        source: std::io::Error::other(e),
    })
}

/// `inline; filename="<base>"`, with an RFC 5987 `filename*` when the name
/// cannot travel as a plain quoted string.
fn content_disposition(path: &Path) -> HeaderValue {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plain = |c: char| c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\');
    let value = if name.chars().all(plain) {
        format!("inline; filename=\"{name}\"")
    } else {
        let fallback: String = name
            .chars()
            .map(|c| if plain(c) { c } else { '_' })
            .collect();
        let encoded = percent_encoding::utf8_percent_encode(&name, ATTR_CHAR);
        format!("inline; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

/// Response content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
}

/// Picks the response coding from `Accept-Encoding`.
///
/// Gzip only when the client asked for gzip alone (the py SDK's `gzip=True`
/// sends exactly `gzip`) or refuses identity. Clients' defaults such as
/// `gzip, deflate` get identity: the bytes are already on disk, compression
/// only costs CPU on a loopback-class link, and identity keeps an exact
/// Content-Length. Nothing acceptable ⇒ 406.
fn negotiate(accept: Option<&str>) -> Result<Coding, Error> {
    let Some(accept) = accept else {
        return Ok(Coding::Identity);
    };
    let (mut gzip, mut identity, mut star, mut other) = (None, None, None, false);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if coding.is_empty() {
            continue;
        }
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "identity" => identity = Some(q),
            "*" => star = Some(q),
            _ => other |= q > 0.0,
        }
    }
    let gzip_ok = gzip.or(star).is_some_and(|q| q > 0.0);
    // RFC 9110: identity is acceptable unless excluded explicitly or by `*;q=0`.
    let identity_ok = identity.or(star).is_none_or(|q| q > 0.0);
    let gzip_only = gzip.is_some_and(|q| q > 0.0)
        && !other
        && identity.is_none_or(|q| q <= 0.0)
        && star.is_none_or(|q| q <= 0.0);
    if gzip_ok && (gzip_only || !identity_ok) {
        Ok(Coding::Gzip)
    } else if identity_ok {
        Ok(Coding::Identity)
    } else {
        Err(Error::NotAcceptable)
    }
}

/// What a `Range` header asks of a file of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// No (usable) range: send everything with 200.
    Full,
    /// One range, inclusive bounds, within the file.
    Partial { start: u64, end: u64 },
    /// The range starts beyond the end: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range. Anything we do not serve (other units,
/// several ranges, syntax errors) is ignored, as RFC 9110 permits.
fn parse_range(header: &str, size: u64) -> ByteRange {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = last.parse::<u64>() else {
            return ByteRange::Full;
        };
        if n == 0 || size == 0 {
            return ByteRange::Unsatisfiable;
        }
        return ByteRange::Partial {
            start: size.saturating_sub(n),
            end: size - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return ByteRange::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return ByteRange::Full,
        }
    };
    if start >= size {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Partial {
        start,
        end: end.min(size - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None).unwrap(), Coding::Identity);
        assert_eq!(negotiate(Some("gzip")).unwrap(), Coding::Gzip);
        assert_eq!(negotiate(Some("x-gzip;q=0.5")).unwrap(), Coding::Gzip);
        assert_eq!(negotiate(Some("gzip, deflate")).unwrap(), Coding::Identity);
        assert_eq!(negotiate(Some("zstd,gzip,br")).unwrap(), Coding::Identity);
        assert_eq!(negotiate(Some("gzip, identity;q=0")).unwrap(), Coding::Gzip);
        assert_eq!(
            negotiate(Some("br, *;q=0")).unwrap_err().to_string(),
            Error::NotAcceptable.to_string()
        );
        assert_eq!(negotiate(Some("identity")).unwrap(), Coding::Identity);
        assert_eq!(negotiate(Some("gzip;q=0")).unwrap(), Coding::Identity);
        assert_eq!(negotiate(Some("")).unwrap(), Coding::Identity);
    }

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
    }

    #[test]
    fn disposition_quotes_or_encodes() {
        assert_eq!(
            content_disposition(Path::new("/a/b c.txt")),
            "inline; filename=\"b c.txt\""
        );
        assert_eq!(
            content_disposition(Path::new("/a/ü\".txt")),
            "inline; filename=\"__.txt\"; filename*=UTF-8''%C3%BC%22.txt"
        );
    }
}
