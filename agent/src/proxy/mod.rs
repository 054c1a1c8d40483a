//! The MCP proxy's building blocks, transport by transport.
//!
//! [`message`] classifies each JSON-RPC message without rewriting it,
//! [`tracker`] keeps the requests in flight, [`lines`] reads stdio lines with
//! a size limit; for Streamable HTTP, [`sse`] reads and writes event
//! streams, [`streams`] routes messages to an HTTP client's streams, and
//! [`upstream`] talks to an HTTP server.
pub mod lines;
pub mod message;
pub mod sse;
pub mod streams;
pub mod tracker;
pub mod upstream;
