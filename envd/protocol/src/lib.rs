//! Wire types and Connect service traits for E2B's envd protocol.
//!
//! Generated at build time from `proto/process.proto` and
//! `proto/filesystem.proto`, which were written from the protocol
//! description the stock E2B SDKs follow: same packages (`process`,
//! `filesystem`), service, message names and field numbers. The JSON
//! mapping is proto3's canonical one (camelCase names, enum names, int64 as
//! strings, base64 bytes), which is what the SDKs speak.
//!
//! This crate owns no behaviour; the daemon in `envd` implements the traits.
//! [`signing`] is here because both ends need it: envd checks signed `/files`
//! URLs, and the appliance's proxy routes header-less ones by signature.

pub mod signing;

#[allow(missing_docs, clippy::all)]
mod generated {
    connectrpc::include_generated!();
}
pub use generated::*;
