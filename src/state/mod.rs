//! What the gateway knows and keeps, with no sockets and no upstream calls: the model
//! catalog and the whitelist applied to it, the memory block, and the session files.

pub mod catalog;
pub mod listed;
pub mod memory;
pub mod session;
