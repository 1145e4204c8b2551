//! [`BuildRegistry`]: every build this process has been asked for, with its
//! status and log, plus the one-time upload tokens.
//!
//! Kept in memory only: build status and logs survive exactly as long as the
//! daemon process. After a restart the SDK's poll of an older build gets
//! 404; templates a build published stay in the catalog only until restart
//! too (they are not written to `templates.d`). Bounded: finished builds
//! beyond [`MAX_FINISHED_BUILDS`] are forgotten oldest first, a build's log
//! keeps its first [`MAX_LOG_ENTRIES`] lines, and tokens expire.
//!
//! ```text
//!   POST /v3/templates        POST …/builds/{id}        job ends
//!   ─────────────────▶ waiting ─────────────────▶ building ──┬──▶ ready
//!                                                            └──▶ error (reason)
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::wire::{BuildLogEntry, BuildStatus, BuildStatusReason};

/// Finished builds remembered for status polls.
pub const MAX_FINISHED_BUILDS: usize = 256;
/// Log lines kept per build (later ones are dropped, with one note).
pub const MAX_LOG_ENTRIES: usize = 20_000;
/// Upload tokens alive at once (the oldest go first).
pub const MAX_TOKENS: usize = 4096;
/// How long an upload URL stays valid.
pub const TOKEN_TTL_MS: i64 = 60 * 60 * 1000;
/// Log lines copied into an error's `reason`.
const REASON_TAIL: usize = 20;

/// One build as the status endpoint reports it.
#[derive(Debug, Clone)]
pub struct BuildRecord {
    /// The template it builds.
    pub template_id: String,
    /// Tags requested for it.
    pub tags: Vec<String>,
    /// vCPUs requested for the template's sandboxes.
    pub cpu_count: Option<u32>,
    /// Memory requested for the template's sandboxes.
    pub memory_mb: Option<u32>,
    /// Where it is.
    pub status: BuildStatus,
    /// Everything it logged.
    pub log: Vec<BuildLogEntry>,
    /// Why it failed.
    pub reason: Option<BuildStatusReason>,
}

/// What an upload token allows: one `PUT` of the files for `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    hash: String,
    expires_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    builds: HashMap<String, BuildRecord>,
    /// Finished build ids, oldest first (for eviction).
    finished: VecDeque<String>,
    tokens: HashMap<String, Token>,
    token_order: VecDeque<String>,
}

/// Shared, in-memory build state (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct BuildRegistry {
    inner: Arc<Mutex<Inner>>,
}

impl BuildRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a panic in
        // another holder does not make the data unusable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a requested build (`waiting`).
    pub fn insert(&self, build_id: &str, record: BuildRecord) {
        self.lock().builds.insert(build_id.to_owned(), record);
    }

    /// A copy of one build.
    pub fn get(&self, build_id: &str) -> Option<BuildRecord> {
        self.lock().builds.get(build_id).cloned()
    }

    /// Whether any build (any status) is for `template_id`.
    pub fn knows_template(&self, template_id: &str) -> bool {
        self.lock()
            .builds
            .values()
            .any(|b| b.template_id == template_id)
    }

    /// Moves `waiting` → `building`. Fails with the current status if the
    /// build was already started, with `None` if it is unknown.
    pub fn start(&self, build_id: &str) -> Result<(), Option<BuildStatus>> {
        let mut g = self.lock();
        match g.builds.get_mut(build_id) {
            Some(b) if b.status == BuildStatus::Waiting => {
                b.status = BuildStatus::Building;
                Ok(())
            }
            Some(b) => Err(Some(b.status)),
            None => Err(None),
        }
    }

    /// Appends a log line.
    pub fn log(&self, build_id: &str, entry: BuildLogEntry) {
        let mut g = self.lock();
        if let Some(b) = g.builds.get_mut(build_id) {
            match b.log.len() {
                n if n < MAX_LOG_ENTRIES => b.log.push(entry),
                n if n == MAX_LOG_ENTRIES => b.log.push(BuildLogEntry {
                    message: format!("(log truncated after {MAX_LOG_ENTRIES} lines)"),
                    level: "warn".into(),
                    ..entry
                }),
                _ => {}
            }
        }
    }

    /// Settles a build as `ready`, or `error` with `reason` (its recent
    /// log lines are attached here). Evicts the oldest finished builds.
    pub fn finish(&self, build_id: &str, failure: Option<(String, Option<String>)>) {
        let mut g = self.lock();
        let Some(b) = g.builds.get_mut(build_id) else {
            return;
        };
        match failure {
            None => b.status = BuildStatus::Ready,
            Some((message, step)) => {
                b.status = BuildStatus::Error;
                let tail = b.log.len().saturating_sub(REASON_TAIL);
                b.reason = Some(BuildStatusReason {
                    message,
                    step,
                    log_entries: b.log[tail..].to_vec(),
                });
            }
        }
        g.finished.push_back(build_id.to_owned());
        while g.finished.len() > MAX_FINISHED_BUILDS {
            if let Some(old) = g.finished.pop_front() {
                g.builds.remove(&old);
            }
        }
    }

    /// A new one-time token for uploading `hash`.
    pub fn issue_token(&self, hash: &str, now_ms: i64) -> String {
        use rand::Rng as _;
        let bytes: [u8; 24] = rand::rng().random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut g = self.lock();
        g.tokens.insert(
            token.clone(),
            Token {
                hash: hash.to_owned(),
                expires_ms: now_ms + TOKEN_TTL_MS,
            },
        );
        g.token_order.push_back(token.clone());
        // Expired and surplus tokens go, oldest first; `tokens` may already
        // lack some (used ones), which is fine.
        while let Some(first) = g.token_order.front().cloned() {
            let expired = g.tokens.get(&first).is_none_or(|t| t.expires_ms <= now_ms);
            if expired || g.token_order.len() > MAX_TOKENS {
                g.token_order.pop_front();
                g.tokens.remove(&first);
            } else {
                break;
            }
        }
        token
    }

    /// Consumes `token` if it is live and was issued for `hash`.
    pub fn take_token(&self, token: &str, hash: &str, now_ms: i64) -> bool {
        let mut g = self.lock();
        match g.tokens.get(token) {
            Some(t) if t.hash == hash && t.expires_ms > now_ms => {
                g.tokens.remove(token);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record() -> BuildRecord {
        BuildRecord {
            template_id: "t".into(),
            tags: vec![],
            cpu_count: None,
            memory_mb: None,
            status: BuildStatus::Waiting,
            log: vec![],
            reason: None,
        }
    }

    fn line(m: &str) -> BuildLogEntry {
        BuildLogEntry {
            timestamp: jiff::Timestamp::UNIX_EPOCH,
            message: m.into(),
            level: "info".into(),
            step: None,
        }
    }

    #[test]
    fn lifecycle_and_reason() {
        let r = BuildRegistry::new();
        r.insert("b", record());
        assert!(r.knows_template("t"));
        assert_eq!(r.start("b"), Ok(()));
        assert_eq!(r.start("b"), Err(Some(BuildStatus::Building)));
        assert_eq!(r.start("nope"), Err(None));
        r.log("b", line("one"));
        r.finish("b", Some(("step 1 failed".into(), Some("1".into()))));
        let b = r.get("b").unwrap();
        assert_eq!(b.status, BuildStatus::Error);
        let reason = b.reason.unwrap();
        assert_eq!(reason.step.as_deref(), Some("1"));
        assert_eq!(reason.log_entries.len(), 1);
    }

    #[test]
    fn tokens_are_one_time_and_bound_to_a_hash() {
        let r = BuildRegistry::new();
        let t = r.issue_token("aa", 0);
        assert!(!r.take_token(&t, "bb", 1));
        assert!(r.take_token(&t, "aa", 1));
        assert!(!r.take_token(&t, "aa", 1));
        let t = r.issue_token("aa", 0);
        assert!(!r.take_token(&t, "aa", TOKEN_TTL_MS));
    }

    #[test]
    fn finished_builds_are_evicted() {
        let r = BuildRegistry::new();
        for i in 0..=MAX_FINISHED_BUILDS {
            r.insert(&i.to_string(), record());
            r.finish(&i.to_string(), None);
        }
        assert!(r.get("0").is_none());
        assert!(r.get("1").is_some());
    }
}
