//! Kernel programs of mcpwarden; see the three binaries `main.rs` (the
//! session tracer), `watch.rs` (the host-wide exec watcher for unmanaged
//! servers) and `probes.rs` (feature probes for `mcpwarden doctor`).
#![no_std]
