//! The `X-Next-Token` pagination cursor of `GET /v2/sandboxes`: opaque to
//! clients, base64url of `"<RFC 3339 startedAt, nanosecond precision>__<sandboxID>"`
//! (the format infra uses). It names the last sandbox of the previous page.

use std::fmt;

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jiff::Timestamp;
use lelantos_core::SandboxId;

/// Unpadded on output; accepts padded tokens too (infra pads).
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a `nextToken` was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NextTokenError {
    /// Not base64url, or not UTF-8 once decoded.
    #[error("next token is not valid base64url text")]
    Encoding,
    /// No `__` separator.
    #[error("next token has no separator")]
    Separator,
    /// The timestamp part is not RFC 3339.
    #[error("next token has an invalid timestamp '{0}'")]
    Timestamp(String),
    /// The sandbox id part is not a valid id.
    #[error("next token has an invalid sandbox id '{0}'")]
    SandboxId(String),
}

/// Position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextToken {
    /// `startedAt` of the last sandbox on the previous page.
    pub started_at: Timestamp,
    /// Its id (breaks ties between equal start times).
    pub sandbox_id: SandboxId,
}

impl NextToken {
    /// The opaque header value.
    pub fn encode(&self) -> String {
        ENGINE.encode(format!("{}__{}", self.started_at, self.sandbox_id))
    }

    /// Parses a token a client echoed back.
    pub fn decode(token: &str) -> Result<Self, NextTokenError> {
        let bytes = ENGINE
            .decode(token.trim())
            .map_err(|_| NextTokenError::Encoding)?;
        let text = String::from_utf8(bytes).map_err(|_| NextTokenError::Encoding)?;
        let (ts, id) = text.split_once("__").ok_or(NextTokenError::Separator)?;
        let started_at = ts
            .parse::<Timestamp>()
            .map_err(|_| NextTokenError::Timestamp(ts.to_string()))?;
        let sandbox_id = SandboxId::try_from(id.to_string())
            .map_err(|_| NextTokenError::SandboxId(id.to_string()))?;
        Ok(Self {
            started_at,
            sandbox_id,
        })
    }
}

impl fmt::Display for NextToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(ts: &str, id: &str) -> NextToken {
        NextToken {
            started_at: ts.parse().unwrap(),
            sandbox_id: SandboxId::try_from(id.to_string()).unwrap(),
        }
    }

    #[test]
    fn round_trip_keeps_nanoseconds() {
        let t = token("2026-12-04T15:00:00.123456789Z", "isbx0001");
        let enc = t.encode();
        assert!(!enc.contains(['+', '/', '=']), "{enc}");
        let raw = String::from_utf8(ENGINE.decode(&enc).unwrap()).unwrap();
        assert_eq!(raw, "2026-12-04T15:00:00.123456789Z__isbx0001");
        assert_eq!(NextToken::decode(&enc).unwrap(), t);
        let t = token("2026-12-04T15:00:00Z", "abc");
        assert_eq!(NextToken::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn accepts_padded_infra_tokens() {
        let padded =
            base64::engine::general_purpose::URL_SAFE.encode("2026-12-04T15:00:00.5Z__isbx0001");
        assert_eq!(
            NextToken::decode(&padded).unwrap(),
            token("2026-12-04T15:00:00.5Z", "isbx0001")
        );
    }

    #[test]
    fn bad_tokens_are_typed_errors() {
        let b64 = |s: &str| ENGINE.encode(s);
        assert_eq!(NextToken::decode("tok"), Err(NextTokenError::Encoding));
        assert_eq!(NextToken::decode("!!!"), Err(NextTokenError::Encoding));
        assert_eq!(
            NextToken::decode(&b64("no-separator")),
            Err(NextTokenError::Separator)
        );
        assert_eq!(
            NextToken::decode(&b64("yesterday__isbx0001")),
            Err(NextTokenError::Timestamp("yesterday".into()))
        );
        assert_eq!(
            NextToken::decode(&b64("2026-12-04T15:00:00Z__BAD ID")),
            Err(NextTokenError::SandboxId("BAD ID".into()))
        );
        assert_eq!(
            NextToken::decode(&ENGINE.encode([0xff, 0xfe])),
            Err(NextTokenError::Encoding)
        );
    }
}
