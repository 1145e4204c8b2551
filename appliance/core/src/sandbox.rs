//! The sandbox lifecycle: states, events, and the one function that says
//! which transitions are legal.
//!
//! ```text
//!                 ┌──────── Ready(pool) ───────▶ Warm ──Claim──┐
//!   Provisioning ─┤                                            ▼
//!                 └──────── Ready(direct) ───────────────▶  Running ◀─────────┐
//!                                                             │  Pause         │ Resumed
//!                                                             ▼                │
//!                                                          Pausing ─Paused─▶ Paused ─Resume─▶ Resuming
//!
//!   any non-terminal ──Stop──▶ Stopping ──Stopped──▶ Stopped      (kill, timeout, template drained)
//!   any non-terminal ──Fail──▶ Failed                            (reason recorded by the caller)
//! ```
//!
//! The table in [`SandboxState::on`] is an exhaustive `match` without a
//! wildcard arm: adding a state or an event does not compile until every
//! pair has been decided. The owner of sandbox state (the per-sandbox actor
//! in the daemon) is the only caller.

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// VM being created and booted, envd not yet healthy.
    Provisioning,
    /// Booted and healthy in a warm pool, not handed out.
    Warm,
    /// Handed out and running.
    Running,
    /// Pause in progress.
    Pausing,
    /// Frozen (in RAM or as a snapshot).
    Paused,
    /// Resume in progress.
    Resuming,
    /// Being torn down.
    Stopping,
    /// Gone (terminal).
    Stopped,
    /// Broken (terminal); the reason is recorded beside the state.
    Failed,
}

/// What can happen to a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxEvent {
    /// envd became healthy after a boot for a pool.
    ReadyForPool,
    /// envd became healthy after a direct create.
    Ready,
    /// A warm sandbox was claimed by a create request.
    Claim,
    /// A pause was requested.
    Pause,
    /// The VM is frozen.
    Paused,
    /// A resume was requested.
    Resume,
    /// The VM runs again.
    Resumed,
    /// Kill, timeout or drain.
    Stop,
    /// Teardown finished.
    Stopped,
    /// Something broke.
    Fail,
}

impl SandboxState {
    /// Every state, in lifecycle order.
    pub const ALL: [SandboxState; 9] = [
        SandboxState::Provisioning,
        SandboxState::Warm,
        SandboxState::Running,
        SandboxState::Pausing,
        SandboxState::Paused,
        SandboxState::Resuming,
        SandboxState::Stopping,
        SandboxState::Stopped,
        SandboxState::Failed,
    ];

    /// The stored name (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Provisioning => "provisioning",
            SandboxState::Warm => "warm",
            SandboxState::Running => "running",
            SandboxState::Pausing => "pausing",
            SandboxState::Paused => "paused",
            SandboxState::Resuming => "resuming",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
        }
    }

    /// Parses [`SandboxState::as_str`] output.
    pub fn parse(name: &str) -> Option<SandboxState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The state after `event`, or `None` when `event` is not legal now.
    pub fn on(self, event: SandboxEvent) -> Option<SandboxState> {
        use SandboxEvent as E;
        use SandboxState as S;
        match (self, event) {
            (S::Provisioning, E::ReadyForPool) => Some(S::Warm),
            (S::Provisioning, E::Ready) | (S::Warm, E::Claim) => Some(S::Running),
            (S::Running, E::Pause) => Some(S::Pausing),
            (S::Pausing, E::Paused) => Some(S::Paused),
            (S::Paused, E::Resume) => Some(S::Resuming),
            (S::Resuming, E::Resumed) => Some(S::Running),
            (
                S::Provisioning | S::Warm | S::Running | S::Pausing | S::Paused | S::Resuming,
                E::Stop,
            ) => Some(S::Stopping),
            (S::Stopping, E::Stopped) => Some(S::Stopped),
            (
                S::Provisioning
                | S::Warm
                | S::Running
                | S::Pausing
                | S::Paused
                | S::Resuming
                | S::Stopping,
                E::Fail,
            ) => Some(S::Failed),
            (
                S::Provisioning,
                E::Claim | E::Pause | E::Paused | E::Resume | E::Resumed | E::Stopped,
            )
            | (
                S::Warm,
                E::ReadyForPool
                | E::Ready
                | E::Pause
                | E::Paused
                | E::Resume
                | E::Resumed
                | E::Stopped,
            )
            | (
                S::Running,
                E::ReadyForPool
                | E::Ready
                | E::Claim
                | E::Paused
                | E::Resume
                | E::Resumed
                | E::Stopped,
            )
            | (
                S::Pausing,
                E::ReadyForPool
                | E::Ready
                | E::Claim
                | E::Pause
                | E::Resume
                | E::Resumed
                | E::Stopped,
            )
            | (
                S::Paused,
                E::ReadyForPool
                | E::Ready
                | E::Claim
                | E::Pause
                | E::Paused
                | E::Resumed
                | E::Stopped,
            )
            | (
                S::Resuming,
                E::ReadyForPool
                | E::Ready
                | E::Claim
                | E::Pause
                | E::Paused
                | E::Resume
                | E::Stopped,
            )
            | (
                S::Stopping,
                E::ReadyForPool
                | E::Ready
                | E::Claim
                | E::Pause
                | E::Paused
                | E::Resume
                | E::Resumed
                | E::Stop,
            )
            | (
                S::Stopped | S::Failed,
                E::ReadyForPool
                | E::Ready
                | E::Claim
                | E::Pause
                | E::Paused
                | E::Resume
                | E::Resumed
                | E::Stop
                | E::Stopped
                | E::Fail,
            ) => None,
        }
    }

    /// Whether the sandbox is gone for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, SandboxState::Stopped | SandboxState::Failed)
    }

    /// A transitional state, whose row must be driven forward (or failed)
    /// after a daemon restart.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            SandboxState::Provisioning
                | SandboxState::Pausing
                | SandboxState::Resuming
                | SandboxState::Stopping
        )
    }

    /// What E2B's API calls this state, for states the API shows.
    pub fn api_state(self) -> Option<&'static str> {
        match self {
            SandboxState::Running | SandboxState::Resuming => Some("running"),
            SandboxState::Pausing | SandboxState::Paused => Some("paused"),
            SandboxState::Provisioning
            | SandboxState::Warm
            | SandboxState::Stopping
            | SandboxState::Stopped
            | SandboxState::Failed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [SandboxState; 9] = SandboxState::ALL;
    const EVENTS: [SandboxEvent; 10] = [
        SandboxEvent::ReadyForPool,
        SandboxEvent::Ready,
        SandboxEvent::Claim,
        SandboxEvent::Pause,
        SandboxEvent::Paused,
        SandboxEvent::Resume,
        SandboxEvent::Resumed,
        SandboxEvent::Stop,
        SandboxEvent::Stopped,
        SandboxEvent::Fail,
    ];

    #[test]
    fn every_pair_matches_the_diagram() {
        use SandboxEvent as E;
        use SandboxState as S;
        let expected: &[(S, E, S)] = &[
            (S::Provisioning, E::ReadyForPool, S::Warm),
            (S::Provisioning, E::Ready, S::Running),
            (S::Provisioning, E::Stop, S::Stopping),
            (S::Provisioning, E::Fail, S::Failed),
            (S::Warm, E::Claim, S::Running),
            (S::Warm, E::Stop, S::Stopping),
            (S::Warm, E::Fail, S::Failed),
            (S::Running, E::Pause, S::Pausing),
            (S::Running, E::Stop, S::Stopping),
            (S::Running, E::Fail, S::Failed),
            (S::Pausing, E::Paused, S::Paused),
            (S::Pausing, E::Stop, S::Stopping),
            (S::Pausing, E::Fail, S::Failed),
            (S::Paused, E::Resume, S::Resuming),
            (S::Paused, E::Stop, S::Stopping),
            (S::Paused, E::Fail, S::Failed),
            (S::Resuming, E::Resumed, S::Running),
            (S::Resuming, E::Stop, S::Stopping),
            (S::Resuming, E::Fail, S::Failed),
            (S::Stopping, E::Stopped, S::Stopped),
            (S::Stopping, E::Fail, S::Failed),
        ];
        let allowed: Vec<(S, E, S)> = STATES
            .iter()
            .flat_map(|s| {
                EVENTS
                    .iter()
                    .filter_map(move |e| s.on(*e).map(|n| (*s, *e, n)))
            })
            .collect();
        assert_eq!(allowed, expected);
        for s in STATES {
            if s.is_terminal() {
                assert!(
                    EVENTS.iter().all(|e| s.on(*e).is_none()),
                    "{s:?} is terminal"
                );
            }
        }
    }

    #[test]
    fn api_shows_only_running_and_paused() {
        let shown: Vec<_> = STATES.iter().filter_map(|s| s.api_state()).collect();
        for s in STATES {
            // The stored name is the serde name, and parses back.
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
        }
        assert!(shown.iter().all(|s| *s == "running" || *s == "paused"));
    }
}
