//! The stdio proxy's cost: added latency per message and throughput of
//! `mcpwarden run` (kernel programs loaded, server sandboxed) against the
//! same server spoken to directly, in one run.
//!
//!     cargo bench --bench proxy_stdio          (as root; prints a table)
//!
//! The server is `sed` turning each `ping` request into its response, a C
//! program, so that what is measured is the proxy, not the server.
use std::{
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

mod common;

const SED: [&str; 3] = ["/bin/sed", "-u", r#"s/"method":"ping"}$/"result":{}}/"#];

fn spawn(proxied: Option<&std::path::Path>) -> (Child, ChildStdin, BufReader<ChildStdout>) {
    let mut cmd = match proxied {
        None => Command::new(SED[0]),
        Some(policy) => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_mcpwarden"));
            c.args(["run", "--policy"])
                .arg(policy)
                .arg("--")
                .arg(SED[0]);
            c
        }
    };
    cmd.args(&SED[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (child, stdin, stdout)
}

fn ping(id: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)
}

/// Sequential round trips; returns each one's duration.
fn latencies(proxied: Option<&std::path::Path>, n: u64) -> Vec<Duration> {
    let (mut child, mut stdin, mut stdout) = spawn(proxied);
    let mut line = String::new();
    // Warm-up: the first exchange includes the server's start.
    for id in 0..100 {
        writeln!(stdin, "{}", ping(id)).expect("write");
        stdin.flush().expect("flush");
        line.clear();
        stdout.read_line(&mut line).expect("read");
    }
    let mut out = Vec::with_capacity(n as usize);
    for id in 100..100 + n {
        let start = Instant::now();
        writeln!(stdin, "{}", ping(id)).expect("write");
        stdin.flush().expect("flush");
        line.clear();
        stdout.read_line(&mut line).expect("read");
        out.push(start.elapsed());
        assert!(
            line.contains(&format!("\"id\":{id},\"result\"")),
            "unexpected reply {line:?}"
        );
    }
    drop(stdin);
    child.wait().expect("wait");
    out
}

/// Pipelined messages; returns messages per second.
fn throughput(proxied: Option<&std::path::Path>, n: u64) -> f64 {
    let (mut child, stdin, mut stdout) = spawn(proxied);
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut w = BufWriter::new(stdin);
        for id in 0..n {
            writeln!(w, "{}", ping(id)).expect("write");
        }
        w.flush().expect("flush");
        w
    });
    let mut line = String::new();
    for _ in 0..n {
        line.clear();
        stdout.read_line(&mut line).expect("read");
    }
    let rate = f64::from(u32::try_from(n).expect("message count fits u32"))
        / start.elapsed().as_secs_f64();
    drop(writer.join().expect("writer"));
    child.wait().expect("wait");
    rate
}

fn main() {
    if !common::benching_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "mode = \"enforce\"\n").expect("policy");
    println!(
        "stdio proxy, sed as the server, {} (release build)",
        std::env::consts::ARCH
    );
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        direct.extend(latencies(None, 2000));
        proxied.extend(latencies(Some(&policy), 2000));
    }
    common::report("latency per round trip", &mut direct, &mut proxied);
    let n = 100_000;
    let d = throughput(None, n);
    let p = throughput(Some(&policy), n);
    println!(
        "throughput, {n} pipelined messages: direct {d:.0} msg/s | through mcpwarden {p:.0} msg/s"
    );
}
