//! Part 5: what processes outside any session pay while 0, 1 or 4 sessions
//! of one daemon are live. The daemon's sessions share one tracer, so the
//! cost must not grow with their number.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{LOOPS, common, end, here, median, session_pids};

/// A daemon with its socket and state under `dir`.
fn daemon(dir: &Path) -> (Child, std::path::PathBuf) {
    let socket = dir.join("run/mcpwarden.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
        .args([
            "daemon",
            "--api",
            &format!("127.0.0.1:{}", common::free_port()),
            "--socket",
        ])
        .arg(&socket)
        .arg("--state")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, socket)
}

/// A session of the daemon whose server idles.
fn daemon_session(policy: &Path, socket: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
        .args(["run", "--policy"])
        .arg(policy)
        .args(["--", "/bin/sleep", "3600"])
        .env("MCPWARDEN_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a session")
}

/// Waits until `n` of the daemon's sessions have their server in their
/// cgroup (their programs then run for every open on the host).
fn wait_live(daemon: &Child, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while session_pids(daemon.id()).len() < n {
        assert!(Instant::now() < deadline, "{n} sessions never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Loaded copies of the open program, host-wide.
fn open_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("mcpw_openat"))
        .count()
}

pub fn many(policy: &Path, dir: &Path) {
    println!("5. open+close outside any session while N sessions of one daemon are live");
    let (mut daemon, socket) = daemon(&dir.join("daemon"));
    let counts = [0usize, 1, 4];
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    let mut programs = vec![0; counts.len()];
    for _ in 0..5 {
        for (i, &n) in counts.iter().enumerate() {
            let sessions: Vec<Child> = (0..n).map(|_| daemon_session(policy, &socket)).collect();
            wait_live(&daemon, n);
            programs[i] = open_programs();
            per[i].push(here("open", LOOPS));
            for s in sessions {
                end(s);
            }
            // The last session's end unloads the tracer, after its detach.
            let deadline = Instant::now() + Duration::from_secs(30);
            while open_programs() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let base = median(per[0].clone());
    for (i, n) in counts.iter().enumerate() {
        let v = median(per[i].clone());
        println!(
            "  {n} live: {v:.1} ns/op ({:+.1} %), {} copy(ies) of mcpw_openat loaded",
            (v - base) / base * 100.0,
            programs[i]
        );
    }
    common::stop(&mut daemon);
}
