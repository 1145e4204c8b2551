//! envd: the daemon inside every Lelantos sandbox.
//!
//! It speaks E2B's envd protocol natively, so the stock E2B SDKs drive it
//! without knowing they are not talking to E2B:
//!
//! ```text
//!   SDK ──HTTP/1.1──▶ host proxy ──bytes──▶ envd :49983
//!                                            ├─ /process.Process/*        (Connect, process/)
//!                                            ├─ /filesystem.Filesystem/*  (Connect, filesystem/)
//!                                            └─ /health /init /envs /metrics /files  (http/)
//! ```
//!
//! Owners: `process` owns every child it starts (spawn, output fan-out,
//! signals, PTYs); `filesystem` owns watchers; `http` owns uploads and
//! downloads; `sandbox` holds what `/init` configures (token, env, default
//! user); `auth` decides who a request runs as. `pid1` is only used when
//! envd is the VM's init. Nothing here depends on the host appliance.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod entry;
pub mod filesystem;
pub mod http;
pub mod paths;
pub mod pid1;
pub mod process;
pub mod rpc;
pub mod sandbox;
pub mod server;
pub mod users;

/// The envd protocol version this daemon reports (`X-Envd-Version`, and what
/// the appliance advertises as `envdVersion`). The SDKs gate features on it;
/// 0.6.13 enables everything they use.
pub const ENVD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `err: source: source…` on one line: where an error becomes a string (a
/// Connect message, a log field), so the OS error underneath is kept.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// E2B's well-known envd port.
pub const DEFAULT_PORT: u16 = 49983;
