//! What the bench binaries share: ports, waiting for a listener, memory,
//! latency reports.
#![allow(dead_code, reason = "each bench uses its own subset")]

use std::{
    process::Child,
    time::{Duration, Instant},
};

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`, while
/// `child` runs.
pub fn wait_for(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().expect("try_wait").is_none(), "exited");
        assert!(Instant::now() < deadline, "nothing on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of `pid` in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// SIGTERM, then wait.
pub fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Percentile `p` of sorted durations, in microseconds.
pub fn pct(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() - 1) * p / 100].as_secs_f64() * 1e6
}

/// Prints direct and proxied latencies side by side (sorts both).
pub fn report(label: &str, direct: &mut [Duration], proxied: &mut [Duration]) {
    direct.sort();
    proxied.sort();
    println!(
        "{label} ({} each): direct p50 {:.1} us p99 {:.1} us | through mcpwarden p50 {:.1} us p99 {:.1} us | added p50 {:.1} us p99 {:.1} us",
        direct.len(),
        pct(direct, 50),
        pct(direct, 99),
        pct(proxied, 50),
        pct(proxied, 99),
        pct(proxied, 50) - pct(direct, 50),
        pct(proxied, 99) - pct(direct, 99),
    );
}

/// Whether cargo runs us as a benchmark (`--bench`; `cargo test` runs bench
/// targets without it, and then they do nothing). Panics unless root: the
/// benches load kernel programs.
pub fn benching_as_root() -> bool {
    if !std::env::args().any(|a| a == "--bench") {
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "this benchmark needs root (mcpwarden run loads kernel programs)"
    );
    true
}
