//! The MCP proxy: newline-delimited JSON-RPC over stdio, relayed unchanged.
//!
//! [`message`] classifies each line without rewriting it, [`tracker`] keeps
//! the requests in flight, [`lines`] reads lines with a size limit.
pub mod lines;
pub mod message;
pub mod tracker;
