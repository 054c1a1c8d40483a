//! What the kernel programs cost and how fast they act, in one run:
//! 1. processes outside any session: an open/close and a connect loop, a
//!    gcc compile loop and `git status` on a 10,000-file tree (wall time,
//!    and instructions retired, which this VM repeats where wall time
//!    does not), with no session vs while one session is live (its
//!    syscall tracepoints attached). With no session live nothing of mcpwarden is in the
//!    kernel: programs load with a session and unload with it.
//! 2. a process inside a session: the open/close loop in a session
//!    (programs attached) vs in the same sandbox without them
//!    (`mcpwarden sandbox run`);
//! 3. sustained event throughput: two loops in one session (open/close, then
//!    failing opens: one syscall per event), the events mcpwarden received
//!    per second and the kernel's lost counter;
//! 4. time from a forbidden open to the process gone (kernel event time to
//!    pidfd readable);
//! 5. processes outside any session while 0, 1 or 4 sessions of one daemon
//!    are live (they share one tracer);
//! 6. what each kind of syscall hook (per-syscall tracepoints, raw
//!    `sys_enter`/`sys_exit`) costs those processes, the check alone.
//!
//!     cargo bench --bench kernel_cost          (as root; prints a table)
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, ChildStderr, Command, Stdio},
    time::{Duration, Instant},
};

mod common;
#[path = "kernel_cost/counters.rs"]
mod counters;
#[path = "kernel_cost/hooks.rs"]
mod hooks;
#[path = "kernel_cost/sessions.rs"]
mod sessions;
#[path = "kernel_cost/throughput.rs"]
mod throughput;

const LOOPS: u64 = 300_000;
/// A path that does not exist, for the one-syscall-per-event loop.
const MISSING: &str = "/usr/lib/mcpwarden-bench-missing";

/// Runs `n` iterations of the open/close (`open`) or refused-connect
/// (`connect`) loop; returns how long they took.
fn syscall_loop(kind: &str, n: u64) -> Duration {
    let start = Instant::now();
    if kind == "open" {
        for _ in 0..n {
            drop(std::fs::File::open("/dev/null").expect("open"));
        }
    } else if kind == "missing" {
        // One syscall per event: an open that fails (ENOENT) is still
        // reported, at syscall entry.
        for _ in 0..n {
            assert!(std::fs::File::open(MISSING).is_err(), "{MISSING} exists");
        }
    } else {
        let closed = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        for _ in 0..n {
            let _ = std::net::TcpStream::connect(closed);
        }
    }
    start.elapsed()
}

/// ns per operation of a loop of `n`.
fn per_op(took: Duration, n: u64) -> f64 {
    took.as_secs_f64() * 1e9 / f64::from(u32::try_from(n).expect("fits"))
}

/// The worker: runs inside or outside a session, prints one result line.
fn worker(args: &[String]) {
    match args {
        [kind, n] if ["open", "missing", "connect"].contains(&kind.as_str()) => {
            let n: u64 = n.parse().expect("count");
            let took = syscall_loop(kind, n);
            eprintln!(
                "worker: {:.0} ns/op {} ms",
                per_op(took, n),
                took.as_millis()
            );
        }
        [kind, path] if kind == "forbidden" => {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = std::fs::File::open(path);
            eprintln!("worker: survived");
        }
        [kind] if kind == "ptrace" => {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            // SAFETY: PTRACE_ATTACH to our parent; the sandbox hands the
            // call to mcpwarden, which kills us while it waits.
            unsafe { libc::ptrace(libc::PTRACE_ATTACH, libc::getppid(), 0, 0) };
            eprintln!("worker: survived");
        }
        _ => panic!("unknown worker {args:?}"),
    }
}

/// ns per operation of the open or connect loop, run here.
fn here(kind: &str, n: u64) -> f64 {
    per_op(syscall_loop(kind, n), n)
}

/// A live session whose server idles: its tracepoints are attached.
fn idle_session(policy: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
        .args(["run", "--policy"])
        .arg(policy)
        .args(["--", "/bin/sleep", "3600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a session");
    // Attached once the server runs in its cgroup.
    server_pid(&child);
    child
}

/// The host pid of the server of the session mcpwarden `child` runs, once
/// it is in its cgroup.
fn server_pid(child: &Child) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(&pid) = session_pids(child.id()).first() {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the session's server did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Host pids in the traced cgroup of the session run by mcpwarden `pid`.
fn session_pids(pid: u32) -> Vec<u32> {
    let Ok(hierarchy) = mcpwarden_sandbox::Hierarchy::discover() else {
        return Vec::new();
    };
    let dir = hierarchy.sessions_dir();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("session-{pid}-"))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn end(mut child: Child) {
    drop(child.stdin.take());
    common::stop(&mut child);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Wall time of a workload, ms.
fn wall(f: &dyn Fn()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e3
}

/// `results`: the same policy with `[kernel] call_results`, whose session
/// also attaches the syscall exit hook.
fn outside(policy: &Path, results: &Path, dir: &Path) {
    println!(
        "1. processes outside any session: no session vs one session live (default policy; with [kernel] call_results)"
    );
    let c_file = dir.join("unit.c");
    std::fs::write(&c_file, C_SOURCE).expect("c source");
    let gcc = || {
        for _ in 0..10 {
            let ok = Command::new("gcc")
                .args(["-O2", "-c", "-o"])
                .arg(dir.join("unit.o"))
                .arg(&c_file)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "gcc failed");
        }
    };
    let tree = dir.join("tree");
    make_tree(&tree);
    let git = || {
        for _ in 0..5 {
            let ok = Command::new("git")
                .arg("-C")
                .arg(&tree)
                .args(["status", "--porcelain"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "git status failed");
        }
    };
    let has_gcc = Command::new("gcc").arg("--version").output().is_ok();
    // Millions of instructions of a workload and its children.
    let instructions = |f: &dyn Fn()| match counters::instructions(f) {
        Ok(n) => u32::try_from(n / 1_000).map_or(f64::NAN, |k| f64::from(k) / 1e3),
        Err(e) => {
            println!("  (no instruction count: {e})");
            f64::NAN
        }
    };
    // Per row: no session, default session, call_results session.
    let mut rows: Vec<(&str, [Vec<f64>; 3])> = [
        "open+close (ns/op)",
        "connect refused (ns/op)",
        "gcc -O2 -c, 10 runs (ms)",
        "git status, 10k files, 5 runs (ms)",
        "gcc -O2 -c, 10 runs (M instructions)",
        "git status, 10k files, 5 runs (M instructions)",
    ]
    .into_iter()
    .map(|what| (what, Default::default()))
    .collect();
    for _ in 0..5 {
        for (state, session_policy) in [None, Some(policy), Some(results)].into_iter().enumerate() {
            let session = session_policy.map(idle_session);
            let values = [
                here("open", LOOPS),
                here("connect", LOOPS / 10),
                if has_gcc { wall(&gcc) } else { f64::NAN },
                wall(&git),
                if has_gcc {
                    instructions(&gcc)
                } else {
                    f64::NAN
                },
                instructions(&git),
            ];
            for ((_, samples), v) in rows.iter_mut().zip(values) {
                samples[state].push(v);
            }
            if let Some(s) = session {
                end(s);
            }
        }
    }
    for (what, [off, on, exit]) in rows {
        // The spread of each state's rounds, to tell a change from noise.
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            format!("[{lo:.1}-{hi:.1}]")
        };
        let spreads = [spread(&off), spread(&on), spread(&exit)];
        let (off, on, exit) = (median(off), median(on), median(exit));
        println!(
            "  {what}: no session {off:.1} {} | session live {on:.1} {} {:+.2} % | with call_results {exit:.1} {} {:+.2} %",
            spreads[0],
            spreads[1],
            (on - off) / off * 100.0,
            spreads[2],
            (exit - off) / off * 100.0
        );
    }
}

/// A git repository of 10,000 small files in 100 directories.
fn make_tree(tree: &Path) {
    for d in 0..100 {
        let sub = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..100 {
            std::fs::write(sub.join(format!("f{f}.txt")), format!("{d} {f}\n")).expect("write");
        }
    }
    for args in [
        vec!["init", "-q"],
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-qm",
            "tree",
        ],
    ] {
        let ok = Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(&args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "git {args:?}");
    }
}

/// Runs the worker confined, with or without the kernel programs; returns
/// its result lines.
fn confined(policy: &Path, worker_bin: &Path, args: &[&str], traced: bool) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcpwarden"));
    if traced {
        cmd.arg("run");
    } else {
        cmd.args(["sandbox", "run"]);
    }
    let mut child = cmd
        .arg("--policy")
        .arg(policy)
        .arg("--")
        .arg(worker_bin)
        .arg("--worker")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = read_until_worker_done(stderr);
    if traced {
        // While the session's programs are still loaded: what the kernel
        // counted for the entry hook (needs kernel.bpf_stats_enabled). The
        // handlers it tail-calls count as part of its runs.
        lines.extend(program_stats("mcpw_sys_enter"));
    }
    end(child);
    lines
}

/// "stats: RUNS NS" of the loaded program `name`, from the kernel's own
/// per-program counters.
fn program_stats(name: &str) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.name_as_str() == Some(name))
        .map(|p| format!("stats: {} {}", p.run_count(), p.run_time().as_nanos()))
}

/// Mean nanoseconds per run of the program, from a "stats:" line.
fn ns_per_run(lines: &[String]) -> Option<f64> {
    let l = lines.iter().find_map(|l| l.strip_prefix("stats: "))?;
    let mut it = l.split_whitespace().map(|v| v.parse::<f64>().ok());
    let (runs, ns) = (it.next()??, it.next()??);
    (runs > 0.0).then(|| ns / runs)
}

/// mcpwarden's stderr (and the worker's) until the worker reported.
fn read_until_worker_done(stderr: ChildStderr) -> Vec<String> {
    let mut out = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let done = line.starts_with("worker:");
        out.push(strip_ansi(&line));
        if done {
            break;
        }
    }
    out
}

pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ns_per_op(lines: &[String]) -> f64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("worker: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("a worker result")
}

fn inside(policy: &Path, worker_bin: &Path) {
    println!("2. a process inside a session: sandbox alone vs sandbox + kernel programs");
    let (mut bare, mut traced, mut per_run) = (Vec::new(), Vec::new(), Vec::new());
    let n = LOOPS.to_string();
    for _ in 0..5 {
        bare.push(ns_per_op(&confined(
            policy,
            worker_bin,
            &["open", &n],
            false,
        )));
        traced.push(ns_per_op(&confined(
            policy,
            worker_bin,
            &["open", &n],
            true,
        )));
    }
    // Apart: the kernel's run-time counters cost two clock reads per
    // program run; they stay on only while this fd is open.
    if let Ok(stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        for _ in 0..3 {
            per_run.extend(ns_per_run(&confined(
                policy,
                worker_bin,
                &["open", &n],
                true,
            )));
        }
        drop(stats);
    }
    let (b, t) = (median(bare), median(traced));
    println!(
        "  open+close (ns/op): sandbox {b:.1} | sandbox + programs {t:.1} | {:+.1} %",
        (t - b) / b * 100.0
    );
    if !per_run.is_empty() {
        println!(
            "  mcpw_sys_enter with its handlers, the kernel's own count: {:.1} ns per run, \
             every syscall of the host (median of {} sessions)",
            median(per_run.clone()),
            per_run.len()
        );
    }
}

fn kill_latency(dir: &Path, worker_bin: &Path) {
    println!(
        "4. forbidden call to process gone (the kill event's time to pidfd readable)\n  \
         open of a denied path (the kernel program's SIGKILL at syscall entry):"
    );
    let secret = dir.join("secret");
    std::fs::create_dir_all(&secret).expect("mkdir");
    std::fs::write(secret.join("key"), "k").expect("write");
    let policy = dir.join("kill.toml");
    let events = dir.join("events.jsonl");
    std::fs::write(
        &policy,
        format!(
            "mode = \"enforce\"\n[files]\ndeny = [\"{}\"]\n[sandbox]\nexec = [\"{}\"]\nread = [\"{}\"]\n",
            secret.display(),
            worker_bin.parent().expect("dir").display(),
            dir.display()
        ),
    )
    .expect("policy");
    let key = secret.join("key");
    let key = key.to_str().expect("utf-8 path");
    kills(&policy, &events, worker_bin, &["forbidden", key]);
    println!(
        "  ptrace (seccomp hands it to mcpwarden, which kills while the call waits; \
         the event's time is when mcpwarden received it):"
    );
    kills(&policy, &events, worker_bin, &["ptrace"]);
}

/// 30 sessions whose worker (`--worker` `args`) does a forbidden thing
/// when told: the time from each kill event to the process being gone.
fn kills(policy: &Path, events: &Path, worker_bin: &Path, args: &[&str]) {
    let mut took = Vec::new();
    for _ in 0..30 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
            .args(["run", "--policy"])
            .arg(policy)
            .arg("--events")
            .arg(events)
            .arg("--")
            .arg(worker_bin)
            .arg("--worker")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start");
        let pid = server_pid(&child);
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; the fd is closed below.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(pidfd >= 0, "pidfd_open");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, r#"{{"jsonrpc":"2.0","method":"go"}}"#).expect("go");
        stdin.flush().expect("flush");
        let mut pfd = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a 10 s timeout.
        let ready = unsafe { libc::poll(&raw mut pfd, 1, 10_000) };
        let gone = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
        let gone_ns = gone.tv_sec() as u64 * 1_000_000_000 + gone.tv_nsec() as u64;
        // SAFETY: closing the fd pidfd_open returned.
        unsafe { libc::close(pidfd) };
        assert_eq!(ready, 1, "the worker was not killed");
        drop(stdin);
        common::stop(&mut child);
        let text = std::fs::read_to_string(events).expect("events");
        let kill_ts = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["action"] == "killed")
            .and_then(|e| e["ts"].as_u64())
            .expect("a kill event");
        took.push(Duration::from_nanos(gone_ns.saturating_sub(kill_ts)));
    }
    took.sort();
    println!(
        "  30 kills: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        common::pct(&took, 50),
        common::pct(&took, 99),
        took.last().expect("kills").as_secs_f64() * 1e6
    );
}

const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { struct node *next; int key; char name[32]; };
static struct node *push(struct node *head, int key) {
    struct node *n = malloc(sizeof *n);
    n->next = head; n->key = key;
    snprintf(n->name, sizeof n->name, "n%d", key);
    return n;
}
int sum(struct node *h) { int s = 0; for (; h; h = h->next) s += h->key * (int)strlen(h->name); return s; }
int run(int n) { struct node *h = 0; for (int i = 0; i < n; i++) h = push(h, i); return sum(h); }
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        worker(&args[2..]);
        return;
    }
    if !common::benching_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The worker runs confined as nobody: a world-readable copy of us.
    let worker_dir = dir.path().join("bin");
    std::fs::create_dir(&worker_dir).expect("mkdir");
    let worker_bin = worker_dir.join("worker");
    std::fs::copy(std::env::current_exe().expect("exe"), &worker_bin).expect("copy");
    std::fs::set_permissions(&worker_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let policy = dir.path().join("policy.toml");
    let text = format!(
        "mode = \"enforce\"\n[files]\ndeny = [\"/etc/shadow\"]\n[sandbox]\nexec = [\"{}\"]\n[kernel]\nevents_per_second = 0\n",
        dir.path().display()
    );
    std::fs::write(&policy, &text).expect("policy");
    let results = dir.path().join("results.toml");
    std::fs::write(&results, format!("{text}call_results = true\n")).expect("policy");
    println!(
        "kernel programs' cost, {} (release build)",
        std::env::consts::ARCH
    );
    // `KERNEL_COST_PARTS=2,4` runs only those parts.
    let parts = std::env::var("KERNEL_COST_PARTS").unwrap_or_default();
    let part = |n: &str| parts.is_empty() || parts.split(',').any(|p| p.trim() == n);
    if part("1") {
        outside(&policy, &results, dir.path());
    }
    if part("2") {
        inside(&policy, &worker_bin);
    }
    if part("3") {
        throughput::sustained(&policy, dir.path(), &worker_bin);
    }
    if part("4") {
        kill_latency(dir.path(), &worker_bin);
    }
    if part("5") {
        sessions::many(&policy, dir.path());
    }
    if part("6") {
        hooks::hooks();
    }
}
