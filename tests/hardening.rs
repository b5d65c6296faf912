//! Issue 17's attacks, each against the real server on port 0: what one careless or hostile
//! client (or a misbehaving provider) could do to the gateway for everyone else. Each test
//! failed before its fix.
//!
//! - [`errors`]: error bodies keep the server's paths and the OS's errors to themselves.
//! - [`sessions`]: session files that cannot collide, stay private and stay bounded.
//! - [`upstream`]: calls that stop when the client leaves, bounded sends and waits, pooled
//!   streams, no retry of a billed answer.
//! - [`connections`]: refused peers, per-address caps, the request-body budget, slow readers.

mod connections;
mod errors;
mod half_close;
mod sessions;
mod upstream;
