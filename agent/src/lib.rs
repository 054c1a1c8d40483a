//! mcpwarden: a host-level defence for AI agents' MCP tool servers.
//!
//! The walking skeleton wires one path through the whole product: the proxy
//! ([`proxy`], stdio or Streamable HTTP on either side) relays MCP between a
//! client and a tool server started in a cgroup of its own
//! ([`mcpwarden_sandbox`]); kernel programs ([`kernel`])
//! report what that server's process tree does; each kernel event is tied to
//! the request in flight ([`session`]) and checked against the policy
//! ([`policy`]), and a denied open kills the tree.
pub mod admin;
pub mod daemon;
pub mod doctor;
pub mod identity;
pub mod inspect;
pub mod kernel;
pub mod launch;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod session;
pub mod store;
pub mod trust;
pub mod unmanaged;

/// The exit code of an administrative command: its own, or 2 with the
/// error on stderr.
#[must_use]
pub fn exit_code(result: Result<std::process::ExitCode, String>) -> std::process::ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::ExitCode::from(2)
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`, so
/// kernel event times and proxy times compare directly.
///
/// # Panics
/// Never on Linux, where `CLOCK_MONOTONIC` always exists.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
