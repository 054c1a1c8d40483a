//! Spawn-to-first-response cost of the sandbox, against an unconfined spawn
//! of the same server, alternating in one run (so machine noise hits both).
//!
//!     cargo bench --bench sandbox_spawn        (as root; prints a table)
//!
//! Servers: `/bin/cat` (the response is the request echoed: pure start-up
//! cost) and the Python MCP SDK test server (`initialize` and its result).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const VENV_PYTHON: &str = "/opt/mcpwarden-dev/venv/bin/python";
const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;

/// Spawns `cmd`, writes one line, returns the time to the first line back.
fn first_response(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{INIT}").expect("write");
    stdin.flush().expect("flush");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let elapsed = start.elapsed();
    assert!(
        line.contains("\"id\":1"),
        "unexpected first response: {line:?}"
    );
    drop(stdin);
    child.wait().expect("wait");
    elapsed
}

fn confined(policy: &Path, server: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcpwarden"));
    cmd.args(["sandbox", "run", "--policy"])
        .arg(policy)
        .arg("--")
        .args(server);
    cmd
}

/// The same environment the sandbox gives a server (no passthrough), so
/// that only confinement differs between the two runs.
fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp")
}

fn plain(server: &[&str]) -> Command {
    let mut cmd = Command::new(server[0]);
    clean_env(&mut cmd).args(&server[1..]);
    cmd
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    sorted[(sorted.len() - 1) * percent / 100]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// bubblewrap with a comparable set-up (new namespaces, read-only root, its
/// own /proc, /dev, /tmp), for calibration when it is installed.
fn bwrap(server: &[&str]) -> Command {
    let mut cmd = Command::new("bwrap");
    clean_env(&mut cmd)
        .args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
        ])
        .args(["--unshare-all", "--die-with-parent", "--new-session", "--"])
        .args(server);
    cmd
}

fn measure_bwrap(name: &str, rounds: usize, server: &[&str]) {
    if Command::new("bwrap").arg("--version").output().is_err() {
        println!("{name:<24} (bubblewrap not installed: apt-get install bubblewrap to compare)");
        return;
    }
    first_response(bwrap(server));
    let mut added = Vec::new();
    for _ in 0..rounds {
        let d = first_response(plain(server));
        let b = first_response(bwrap(server));
        added.push(ms(b) - ms(d));
    }
    added.sort_by(f64::total_cmp);
    println!(
        "{name:<24} rounds {rounds:>3}  bubblewrap 0.8 added (paired) p25 {:>6.2} p50 {:>6.2} p75 {:>6.2} ms",
        added[added.len() / 4],
        added[added.len() / 2],
        added[added.len() * 3 / 4],
    );
}

fn measure(name: &str, rounds: usize, policy: &Path, server: &[&str]) {
    let (mut direct, mut sandboxed, mut added) = (Vec::new(), Vec::new(), Vec::new());
    // Warm both paths (page cache, dynamic linker) before timing.
    first_response(plain(server));
    first_response(confined(policy, server));
    for _ in 0..rounds {
        let d = first_response(plain(server));
        let s = first_response(confined(policy, server));
        direct.push(d);
        sandboxed.push(s);
        // Paired difference: robust to drift in machine load between rounds.
        added.push(ms(s) - ms(d));
    }
    added.sort_by(f64::total_cmp);
    direct.sort();
    sandboxed.sort();
    let (d50, s50) = (percentile(&direct, 50), percentile(&sandboxed, 50));
    let _ = s50;
    println!(
        "{name:<24} rounds {rounds:>3}  direct p50 {:>7.2} ms p90 {:>7.2} ms | sandboxed p50 {:>7.2} ms p90 {:>7.2} ms | added (paired) p25 {:>6.2} p50 {:>6.2} p75 {:>6.2} ms",
        ms(d50),
        ms(percentile(&direct, 90)),
        ms(percentile(&sandboxed, 50)),
        ms(percentile(&sandboxed, 90)),
        added[added.len() / 4],
        added[added.len() / 2],
        added[added.len() * 3 / 4],
    );
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the sandbox benchmark needs root"
    );
    // Not under /tmp, which bubblewrap covers with its own tmpfs.
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let server = dir.path().join("server.py");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/server.py"),
        &server,
    )
    .expect("copy");
    let policy = dir.path().join("policy.toml");
    let venv = Path::new(VENV_PYTHON).ancestors().nth(2).expect("venv");
    std::fs::write(
        &policy,
        format!(
            "[sandbox]\nprofile = \"python\"\nread = [\"{}\", \"{}\"]\n",
            dir.path().display(),
            venv.display()
        ),
    )
    .expect("write policy");
    println!(
        "sandbox spawn-to-first-response, {} (release build)",
        std::env::consts::ARCH
    );
    measure("/bin/cat (echo)", 200, &policy, &["/bin/cat"]);
    measure_bwrap("/bin/cat (echo)", 200, &["/bin/cat"]);
    let server = server.display().to_string();
    measure(
        "Python MCP SDK server",
        60,
        &policy,
        &[VENV_PYTHON, &server],
    );
    measure_bwrap("Python MCP SDK server", 60, &[VENV_PYTHON, &server]);
}
