//! The sandbox proxy: one listener, every sandbox behind it.
//!
//! Requests are routed to a sandbox port by [`route::route`]; the proxy
//! never changes lifecycle state, it only reads where a sandbox lives.
//! (The forwarding itself lands with the control plane.)

pub mod route;
