//! Back-pressure: a peer that floods and a peer that does not read must not
//! make mcpwarden buffer without bound. Each case runs `mcpwarden run`
//! (kernel programs loaded, server sandboxed) for a few seconds under a
//! flood and samples its resident memory (VmRSS) every 250 ms.
//!
//!     cargo bench --bench proxy_flood          (as root; prints the samples)
//!
//! 1. The server floods 1 KiB notifications (`yes`), the stdio client
//!    reads one line per millisecond.
//! 2. The stdio client floods `ping` requests, the server never reads
//!    (`sleep`).
//! 3. The server floods notifications to an HTTP client whose GET stream
//!    reads one event per millisecond.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::rss_kib;

/// Seconds per case (`FLOOD_SECONDS` to change).
fn seconds() -> u64 {
    std::env::var("FLOOD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn notification() -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","data":"{}"}}}}"#,
        "x".repeat(1000)
    )
}

/// KiB as MiB (RSS fits u32 KiB easily: 4 TiB).
fn mib(kib: u64) -> f64 {
    f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0
}

/// Samples the RSS of `pid` every 250 ms for [`seconds`] while `work` runs
/// on another thread; prints the samples in MiB.
fn sample(label: &str, pid: u32, work: impl FnOnce() -> String + Send + 'static) {
    let worker = std::thread::spawn(work);
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds()) {
        std::thread::sleep(Duration::from_millis(250));
        samples.push(rss_kib(pid));
    }
    let first = samples[1];
    let last = *samples.last().expect("samples");
    let max = *samples.iter().max().expect("samples");
    // One sample a second: enough to see the shape.
    let shown: Vec<String> = samples
        .iter()
        .step_by(4)
        .map(|k| format!("{:.1}", mib(*k)))
        .collect();
    println!("{label}");
    println!("  RSS MiB each second: {}", shown.join(" "));
    println!(
        "  at 0.5 s {:.1} MiB, at {} s {:.1} MiB, max {:.1} MiB",
        mib(first),
        seconds(),
        mib(last),
        mib(max)
    );
    // The worker stops when mcpwarden does (its pipes close).
    let _ = worker;
}

fn mcpwarden(policy: &std::path::Path, flags: &[&str], cmd: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
        .args(["run", "--policy"])
        .arg(policy)
        .args(flags)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mcpwarden")
}

fn stop(mut child: Child) {
    drop(child.stdin.take());
    common::stop(&mut child);
}

fn slow_stdio_client(policy: &std::path::Path) {
    let note = notification();
    let mut child = mcpwarden(policy, &[], &["/usr/bin/yes", &note]);
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id();
    sample(
        "1. server floods 1 KiB notifications, stdio client reads 1 line/ms",
        pid,
        move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut n = 0u64;
            while reader.read_line(&mut line).is_ok_and(|r| r > 0) {
                line.clear();
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            format!("{n} lines")
        },
    );
    stop(child);
}

fn server_never_reads(policy: &std::path::Path) {
    let mut child = mcpwarden(policy, &[], &["/bin/sleep", "3600"]);
    let mut stdin = child.stdin.take().expect("stdin");
    let pid = child.id();
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let written = std::sync::Arc::clone(&counter);
    sample(
        "2. stdio client floods pings, the server never reads",
        pid,
        move || {
            let mut id = 0u64;
            loop {
                let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n");
                if stdin.write_all(line.as_bytes()).is_err() {
                    break;
                }
                id += 1;
                written.store(id, std::sync::atomic::Ordering::Relaxed);
            }
            format!("{id} pings")
        },
    );
    println!(
        "  the client got {} pings out before mcpwarden stopped reading (its queues are full)",
        counter.load(std::sync::atomic::Ordering::Relaxed)
    );
    stop(child);
}

fn slow_http_client(policy: &std::path::Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // Answers initialize, then floods.
    let script = format!(
        "read -r line; echo '{}'; exec /usr/bin/yes '{}'",
        r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"flood","version":"0"}}}"#,
        notification()
    );
    let child = mcpwarden(
        policy,
        &["--listen", &format!("127.0.0.1:{port}")],
        &["/bin/sh", "-c", &script],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mcpwarden does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    sample(
        "3. server floods notifications, HTTP client reads its GET stream at 1 event/ms",
        pid,
        move || {
            let request = |body: &str, extra: &str| {
                format!(
                    "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            let mut init = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let body = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"flood","version":"0"}}}"#;
            init.write_all(request(body, "").as_bytes())
                .expect("initialize");
            let mut head = [0u8; 4096];
            let n = init.read(&mut head).expect("answer");
            let head = String::from_utf8_lossy(&head[..n]).to_string();
            let session = head
                .lines()
                .find_map(|l| l.strip_prefix("mcp-session-id: "))
                .expect("a session id")
                .trim()
                .to_owned();
            let mut get = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            get.write_all(
                format!(
                    "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: text/event-stream\r\nmcp-session-id: {session}\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("get");
            let mut reader = BufReader::new(get);
            let mut line = String::new();
            let mut events = 0u64;
            while reader.read_line(&mut line).is_ok_and(|r| r > 0) {
                if line.starts_with("data: {") {
                    events += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                line.clear();
            }
            format!("{events} events")
        },
    );
    stop(child);
}

fn main() {
    if !common::benching_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "mode = \"enforce\"\n").expect("policy");
    println!(
        "back-pressure under a flood, {} s each (release build)",
        seconds()
    );
    slow_stdio_client(&policy);
    server_never_reads(&policy);
    slow_http_client(&policy);
}
