//! What the gateway knows and keeps, with no sockets and no upstream calls: the model
//! catalog and the whitelist applied to it, the client keys, the memory block, and the session
//! files.

pub mod catalog;
pub mod keys;
pub mod listed;
pub mod memory;
pub mod session;
