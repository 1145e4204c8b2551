//! Query of `GET /v2/sandboxes` (and the deprecated `GET /sandboxes`),
//! decoded as `e2b-protocol.md` §2.4 describes.
//!
//! The `metadata` filter is encoded twice by the SDKs on top of the query
//! encoding: each key and value is percent-encoded, the pairs joined as
//! `k=v&k2=v2`, and that string percent-encoded again. Decoding mirrors
//! infra: the query layer decodes once, the whole string is unescaped once
//! more, then it is split on `&` and `=` and each key and value unescaped.
//! Unknown parameters are ignored (newer SDKs may add some).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::next_token::{NextToken, NextTokenError};
use super::sandboxes::ListedSandboxState;

/// Largest and default page size.
pub const MAX_LIMIT: u32 = 100;

/// Why a listing query was rejected (answered with 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListQueryError {
    /// `metadata` is not a double-encoded `k=v&…` list.
    #[error("invalid metadata filter: {reason}")]
    Metadata {
        /// What was wrong.
        reason: &'static str,
    },
    /// `state` holds something other than `running`/`paused`.
    #[error("invalid state '{0}': expected running or paused")]
    State(String),
    /// `limit` is not an integer in 1..=100.
    #[error("invalid limit '{0}': expected 1 to {MAX_LIMIT}")]
    Limit(String),
    /// `order` is not `asc` or `desc`.
    #[error("invalid order '{0}': expected asc or desc")]
    Order(String),
    /// `startedAfter` is not RFC 3339.
    #[error("invalid startedAfter '{0}': expected an RFC 3339 timestamp")]
    StartedAfter(String),
    /// `nextToken` could not be decoded.
    #[error("invalid nextToken")]
    NextToken(#[source] NextTokenError),
}

/// Sort direction by start time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListOrder {
    /// Oldest first.
    Asc,
    /// Newest first (the default).
    #[default]
    Desc,
}

/// A decoded listing query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Sandboxes must carry all these metadata pairs.
    pub metadata: BTreeMap<String, String>,
    /// States to include; both when the query names none.
    pub states: BTreeSet<ListedSandboxState>,
    /// Template id or alias to match.
    pub template: Option<String>,
    /// Only sandboxes started at or after this instant.
    pub started_after: Option<Timestamp>,
    /// Sort direction by start time.
    pub order: ListOrder,
    /// Page size, 1..=100.
    pub limit: u32,
    /// Where the page starts.
    pub next_token: Option<NextToken>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            metadata: BTreeMap::new(),
            states: all_states(),
            template: None,
            started_after: None,
            order: ListOrder::Desc,
            limit: MAX_LIMIT,
            next_token: None,
        }
    }
}

fn all_states() -> BTreeSet<ListedSandboxState> {
    BTreeSet::from([ListedSandboxState::Running, ListedSandboxState::Paused])
}

impl ListQuery {
    /// Decodes the raw query string (the part after `?`, still
    /// percent-encoded). Empty parameters count as absent.
    pub fn parse(raw_query: Option<&str>) -> Result<Self, ListQueryError> {
        let mut q = Self::default();
        let Some(raw) = raw_query else {
            return Ok(q);
        };
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            if value.is_empty() {
                continue;
            }
            match name.as_ref() {
                "metadata" => q.metadata = decode_metadata(&value)?,
                "state" => q.states = parse_states(&value)?,
                "template" => q.template = Some(value.into_owned()),
                "startedAfter" => {
                    q.started_after = Some(
                        value
                            .parse()
                            .map_err(|_| ListQueryError::StartedAfter(value.to_string()))?,
                    );
                }
                "order" => {
                    q.order = match value.as_ref() {
                        "asc" => ListOrder::Asc,
                        "desc" => ListOrder::Desc,
                        other => return Err(ListQueryError::Order(other.to_string())),
                    };
                }
                "limit" => {
                    q.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| ListQueryError::Limit(value.to_string()))?;
                }
                "nextToken" => {
                    q.next_token =
                        Some(NextToken::decode(&value).map_err(ListQueryError::NextToken)?);
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

fn unescape(s: &str) -> Result<String, ListQueryError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ListQueryError::Metadata {
            reason: "not UTF-8 after decoding",
        })
}

/// Decodes a `metadata` value the query layer has already decoded once.
pub fn decode_metadata(value: &str) -> Result<BTreeMap<String, String>, ListQueryError> {
    let whole = unescape(value)?;
    let mut out = BTreeMap::new();
    for pair in whole.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or(ListQueryError::Metadata {
            reason: "pair without '='",
        })?;
        let key = unescape(k)?;
        if key.is_empty() {
            return Err(ListQueryError::Metadata {
                reason: "empty key",
            });
        }
        out.insert(key, unescape(v)?);
    }
    Ok(out)
}

fn parse_states(value: &str) -> Result<BTreeSet<ListedSandboxState>, ListQueryError> {
    let mut states = BTreeSet::new();
    for s in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        states.insert(match s {
            "running" => ListedSandboxState::Running,
            "paused" => ListedSandboxState::Paused,
            other => return Err(ListQueryError::State(other.to_string())),
        });
    }
    Ok(if states.is_empty() {
        all_states()
    } else {
        states
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn absent_query_is_default() {
        let q = ListQuery::parse(None).unwrap();
        assert_eq!(q, ListQuery::default());
        assert_eq!(q.limit, 100);
        assert_eq!(q.order, ListOrder::Desc);
        assert_eq!(q.states, all_states());
        assert_eq!(ListQuery::parse(Some("")).unwrap(), q);
    }

    #[test]
    fn py_2_45_list_query() {
        let tok = NextToken {
            started_at: "2026-12-04T15:00:00Z".parse().unwrap(),
            sandbox_id: lelantos_core::SandboxId::try_from("isbx0001".to_string()).unwrap(),
        };
        let raw = format!(
            "metadata=k%3Dv%252520w%26x%252526y%3D1&state=running%2Cpaused&nextToken={}&limit=10",
            tok.encode()
        );
        let q = ListQuery::parse(Some(&raw)).unwrap();
        assert_eq!(q.metadata, map(&[("k", "v w"), ("x&y", "1")]));
        assert_eq!(q.states, all_states());
        assert_eq!(q.limit, 10);
        assert_eq!(q.next_token, Some(tok));
    }

    #[test]
    fn js_2_45_list_query() {
        let q =
            ListQuery::parse(Some("metadata=k%3Dv%252520w&state=running,paused&limit=10")).unwrap();
        assert_eq!(q.metadata, map(&[("k", "v w")]));
        assert_eq!(q.states, all_states());
        let q = ListQuery::parse(Some("state=paused")).unwrap();
        assert_eq!(q.states, BTreeSet::from([ListedSandboxState::Paused]));
    }

    #[test]
    fn metadata_edge_cases() {
        // '=' inside a key, '+' kept literal, '%' in a value.
        let q = ListQuery::parse(Some("metadata=a%25253Db%3D1%25252B2%26p%3D100%252525")).unwrap();
        assert_eq!(q.metadata, map(&[("a=b", "1+2"), ("p", "100%")]));
        assert_eq!(
            ListQuery::parse(Some("metadata=novalue")),
            Err(ListQueryError::Metadata {
                reason: "pair without '='"
            })
        );
        assert!(ListQuery::parse(Some("metadata=%3D1")).is_err());
        assert!(ListQuery::parse(Some("metadata=k%3D%2525FF")).is_err());
    }

    #[test]
    fn other_filters() {
        let q = ListQuery::parse(Some(
            "order=asc&startedAfter=2026-12-04T15%3A00%3A00Z&template=base&extra=1",
        ))
        .unwrap();
        assert_eq!(q.order, ListOrder::Asc);
        assert_eq!(
            q.started_after,
            Some("2026-12-04T15:00:00Z".parse().unwrap())
        );
        assert_eq!(q.template.as_deref(), Some("base"));
        let q = ListQuery::parse(Some("startedAfter=2026-12-04T16:00:00%2B01:00")).unwrap();
        assert_eq!(
            q.started_after,
            Some("2026-12-04T15:00:00Z".parse().unwrap())
        );
        assert_eq!(ListQuery::parse(Some("limit=100")).unwrap().limit, 100);
        assert_eq!(ListQuery::parse(Some("limit=1")).unwrap().limit, 1);
    }

    #[test]
    fn bad_values_are_typed_errors() {
        for (raw, want) in [
            ("limit=0", ListQueryError::Limit("0".into())),
            ("limit=101", ListQueryError::Limit("101".into())),
            ("limit=ten", ListQueryError::Limit("ten".into())),
            ("order=up", ListQueryError::Order("up".into())),
            (
                "state=running,stopped",
                ListQueryError::State("stopped".into()),
            ),
            (
                "startedAfter=yesterday",
                ListQueryError::StartedAfter("yesterday".into()),
            ),
        ] {
            assert_eq!(ListQuery::parse(Some(raw)), Err(want), "{raw}");
        }
        assert!(matches!(
            ListQuery::parse(Some("nextToken=tok")),
            Err(ListQueryError::NextToken(_))
        ));
    }
}
