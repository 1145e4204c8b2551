//! Streaming gzip for `/files`: encode a file being downloaded, decode an
//! upload body, both chunk by chunk so memory stays bounded whatever the
//! size. flate2 is synchronous, so each direction drives its `Write`
//! adapter over a `Vec` and hands the drained output on as one chunk.

use std::io::Write as _;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::Error;

/// Size of the reads from the file being compressed.
const ENCODE_READ: usize = 64 * 1024;

/// Compressed input fed to the decoder per step. Deflate expands at most
/// about 1032:1, so one step yields at most ~4 MiB even for a crafted
/// "zip bomb" body; a larger slice would let one network chunk balloon.
const DECODE_SLICE: usize = 4 * 1024;

/// Gzip-encodes everything `reader` yields.
pub(super) fn encode<R>(mut reader: R) -> impl Stream<Item = std::io::Result<Bytes>> + Send
where
    R: AsyncRead + Unpin + Send + 'static,
{
    async_stream::try_stream! {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut buf = vec![0u8; ENCODE_READ];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            enc.write_all(buf.get(..n).unwrap_or_default())?;
            let out = std::mem::take(enc.get_mut());
            if !out.is_empty() {
                yield Bytes::from(out);
            }
        }
        let out = enc.finish()?;
        if !out.is_empty() {
            yield Bytes::from(out);
        }
    }
}

/// Gzip-decodes a request body (any number of concatenated members, as
/// RFC 1952 allows). A corrupt or truncated stream ends in [`Error::Gzip`].
pub(super) fn decode<S>(mut body: S) -> impl Stream<Item = Result<Bytes, Error>> + Send
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin + Send + 'static,
{
    async_stream::try_stream! {
        let mut dec = flate2::write::MultiGzDecoder::new(Vec::new());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Error::Body)?;
            for piece in chunk.chunks(DECODE_SLICE) {
                dec.write_all(piece).map_err(Error::Gzip)?;
                let out = std::mem::take(dec.get_mut());
                if !out.is_empty() {
                    yield Bytes::from(out);
                }
            }
        }
        // try_finish fails when the trailer (CRC + length) never arrived,
        // which is how a truncated upload is told apart from a complete one.
        dec.try_finish().map_err(Error::Gzip)?;
        let out = std::mem::take(dec.get_mut());
        if !out.is_empty() {
            yield Bytes::from(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn run_decode(chunks: Vec<Vec<u8>>) -> Result<Vec<u8>, Error> {
        let body = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, axum::Error>(Bytes::from(c))),
        );
        let mut out = Vec::new();
        let mut s = std::pin::pin!(decode(body));
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn decodes_split_and_multi_member_bodies() {
        let mut body = gz(b"hello ");
        body.extend(gz(b"world"));
        let chunks = body.chunks(3).map(<[u8]>::to_vec).collect();
        assert_eq!(run_decode(chunks).await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn truncated_body_is_an_error() {
        let mut body = gz(&[7u8; 10_000]);
        body.truncate(body.len() - 4);
        assert!(matches!(run_decode(vec![body]).await, Err(Error::Gzip(_))));
    }

    #[tokio::test]
    async fn encode_round_trips() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let mut s = std::pin::pin!(encode(std::io::Cursor::new(data.clone())));
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        let mut d = flate2::write::GzDecoder::new(Vec::new());
        d.write_all(&out).unwrap();
        assert_eq!(d.finish().unwrap(), data);
    }
}
