//! Kernel programs of mcpwarden; see the two binaries `main.rs` (the session
//! tracer) and `probes.rs` (feature probes for `mcpwarden doctor`).
#![no_std]
