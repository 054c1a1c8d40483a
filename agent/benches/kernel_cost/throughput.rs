//! Part 3: sustained event throughput. Two loops run in one session and
//! mcpwarden reads what they cause; the kernel's lost counter must stay 0.
//! Two generators: open/close of `/dev/null` (two syscalls per event) and
//! opens of a missing path (one syscall per event, so the producers leave
//! more of the two cores to the pipeline being measured).
use std::{
    io::BufRead as _,
    io::BufReader,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
};

use crate::{LOOPS, common, strip_ansi};

pub(crate) fn sustained(policy: &Path, dir: &Path, worker_bin: &Path) {
    println!("3. sustained events: two loops in one session, {LOOPS}0 events each");
    for (kind, what) in [
        ("open", "open/close loops"),
        ("missing", "failing-open loops (ENOENT)"),
    ] {
        let (events, dropped, secs) = run(policy, dir, worker_bin, kind);
        println!(
            "  {what}: {events} events received in {secs:.2} s: {:.0} events/s; lost in the kernel: {dropped}",
            as_f64(events) / secs
        );
    }
}

fn as_f64(v: u64) -> f64 {
    f64::from(u32::try_from(v).unwrap_or(u32::MAX))
}

/// One run: the session's events and dropped counts, and the seconds the
/// slower of the two loops took.
fn run(policy: &Path, dir: &Path, worker_bin: &Path, kind: &str) -> (u64, u64, f64) {
    let script = dir.join(format!("two-{kind}.sh"));
    let bin = worker_bin.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{bin} --worker {kind} {LOOPS}0 &\n{bin} --worker {kind} {LOOPS}0\nwait\nexec /bin/sleep 3600\n"
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
        .args(["run", "--policy"])
        .arg(policy)
        .arg("--")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let mut reader = BufReader::new(stderr);
    let mut elapsed_ms: u64 = 0;
    let mut done = 0;
    let mut line = String::new();
    while done < 2 && reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if let Some(rest) = line.strip_prefix("worker: ") {
            done += 1;
            let ms = rest.split_whitespace().nth(2).and_then(|m| m.parse().ok());
            elapsed_ms = elapsed_ms.max(ms.unwrap_or(0));
        }
        line.clear();
    }
    drop(child.stdin.take());
    common::stop(&mut child);
    let mut log = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut log);
    let log = strip_ansi(&log);
    let field = |name: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("session ended"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or_else(|| panic!("no {name}= in the session log"))
    };
    (field("events"), field("dropped"), as_f64(elapsed_ms) / 1e3)
}
