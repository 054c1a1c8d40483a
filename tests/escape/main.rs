//! The escape battery: real escape attempts by a real program (Python,
//! through raw syscalls where needed) inside `mcpwarden sandbox run`, each
//! paired with an allowed twin. Every attempt must fail and every twin must
//! work, so neither a sandbox that allows everything nor one that refuses
//! everything passes. Run as root (cgroups, namespaces, uid changes).
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

/// Numbers the host-side names of concurrently running tests.
static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Everything an attempt needs from the host side.
struct Host {
    fixture: tempfile::TempDir,
    outside: tempfile::TempDir,
    ctx: Value,
    _listeners: Vec<std::net::TcpListener>,
    _abstract: std::os::unix::net::UnixListener,
    sleeper: std::process::Child,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn dir(prefix: &str, parent: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

impl Host {
    fn new() -> Self {
        use std::os::linux::net::SocketAddrExt as _;
        let fixture = dir("mcpw-escape-", "/tmp");
        let f = fixture.path();
        std::fs::write(f.join("granted.txt"), "granted\n").expect("write");
        std::fs::create_dir(f.join("out")).expect("mkdir");
        std::fs::set_permissions(f.join("out"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        std::fs::create_dir(f.join("bin")).expect("mkdir");
        std::fs::copy("/usr/bin/id", f.join("bin/setuid-id")).expect("copy id");
        std::fs::set_permissions(
            f.join("bin/setuid-id"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .expect("setuid");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/escape/attempts.py"),
            f.join("attempts.py"),
        )
        .expect("copy attempts");

        // Outside the grants but visible in the sandbox's view (unlike /tmp,
        // which is private): only landlock stands between it and the server.
        let outside = dir("mcpw-outside-", "/var/tmp");
        let o = outside.path();
        std::fs::write(o.join("secret.txt"), "outside secret\n").expect("write");
        std::fs::create_dir(o.join(".ssh")).expect("mkdir");
        std::fs::write(o.join(".ssh/id_ed25519"), "PRIVATE KEY\n").expect("write");
        for p in [
            o.join("secret.txt"),
            o.join(".ssh/id_ed25519"),
            f.join("granted.txt"),
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }

        let granted = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let denied = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let abstract_name = format!("mcpwarden-escape-host-{}-{n}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name)
            .expect("abstract name");
        let abstract_listener =
            std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract");
        let sleeper = Command::new("sleep")
            .arg("120")
            .spawn()
            .expect("spawn sleep");
        let ctx = json!({
            "fixture": f,
            "outside": o,
            "granted_port": granted.local_addr().expect("addr").port(),
            "denied_port": denied.local_addr().expect("addr").port(),
            "granted_bind": free_port(),
            "denied_bind": free_port(),
            "abstract": abstract_name,
            "host_pid": sleeper.id(),
            "marker": format!("mcpwarden-escape-marker-{}-{n}", std::process::id()),
        });
        Self {
            fixture,
            outside,
            ctx,
            _listeners: vec![granted, denied],
            _abstract: abstract_listener,
            sleeper,
        }
    }

    fn f(&self) -> &Path {
        self.fixture.path()
    }

    /// A policy granting the fixture; `extra` goes at the end of [sandbox].
    fn policy(&self, name: &str, extra: &str) -> PathBuf {
        let f = self.f();
        let text = format!(
            "mode = \"enforce\"\n[sandbox]\nprofile = \"python\"\nread = [\"{f}\"]\nwrite = [\"{f}/out\"]\nexec = [\"{f}/bin\"]\n{extra}",
            f = f.display()
        );
        let path = f.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write policy");
        path
    }

    fn networked_policy(&self) -> PathBuf {
        let extra = format!(
            "[sandbox.network]\nconnect = [{}]\nbind = [{}]\n",
            self.ctx["granted_port"], self.ctx["granted_bind"]
        );
        self.policy("networked", &extra)
    }

    /// Runs one group of attempts in the sandbox and returns its report.
    fn run(&self, policy: &Path, group: &str) -> serde_json::Map<String, Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
            .args(["sandbox", "run", "--policy"])
            .arg(policy)
            .args(["--", "/usr/bin/python3"])
            .arg(self.f().join("attempts.py"))
            .arg(self.ctx.to_string())
            .arg(group)
            .output()
            .expect("run mcpwarden sandbox run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sandbox run failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("no report ({e}): {stdout}"));
        report.as_object().expect("object").clone()
    }
}

/// Asserts every attempt failed and every twin worked; returns the count.
fn assert_contained(group: &str, report: &serde_json::Map<String, Value>) -> usize {
    let mut broken = Vec::new();
    for (name, r) in report {
        if r["attempt"][0] != json!(false) {
            broken.push(format!("ESCAPED  {name}: {}", r["attempt"][1]));
        }
        if r["twin"][0] != json!(true) {
            broken.push(format!("TWIN DENIED  {name}: {}", r["twin"][1]));
        }
    }
    if std::env::var_os("MCPWARDEN_ESCAPE_REPORT").is_some() {
        for (name, r) in report {
            eprintln!(
                "{group:<11} {name:<48} attempt: {:<60} twin: {}",
                r["attempt"][1], r["twin"][1]
            );
        }
    }
    assert!(broken.is_empty(), "{group}:\n{}", broken.join("\n"));
    assert!(!report.is_empty(), "{group}: no attempts ran");
    report.len()
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the escape battery needs root: run it as root"
    );
}

#[test]
fn file_system_escapes_fail() {
    require_root();
    let host = Host::new();
    let report = host.run(&host.networked_policy(), "filesystem");
    assert_contained("filesystem", &report);
    let marker = Path::new("/tmp").join(host.ctx["marker"].as_str().expect("marker"));
    assert!(
        !marker.exists(),
        "the sandbox's /tmp leaked to the host: {}",
        marker.display()
    );
    assert!(
        !host.f().join("out/hard-out").exists(),
        "a hard link out was made"
    );
    assert_eq!(
        std::fs::read_to_string(host.f().join("granted.txt")).expect("read"),
        "granted\n"
    );
    assert!(host.outside.path().join("secret.txt").exists());
}

#[test]
fn dangerous_syscalls_fail() {
    require_root();
    let host = Host::new();
    let report = host.run(&host.networked_policy(), "syscalls");
    assert_contained("syscalls", &report);
}

#[test]
fn network_escapes_fail() {
    require_root();
    let host = Host::new();
    let report = host.run(&host.networked_policy(), "network");
    assert_contained("network", &report);
    let isolated = host.run(&host.policy("isolated", ""), "no-network");
    assert_contained("no-network", &isolated);
}

#[test]
fn process_escapes_fail() {
    require_root();
    let host = Host::new();
    let report = host.run(&host.networked_policy(), "processes");
    assert_contained("processes", &report);
}

#[test]
fn resource_exhaustion_is_contained() {
    require_root();
    let host = Host::new();
    let pids = host.run(
        &host.policy("pids", "[sandbox.limits]\npids = 16\n"),
        "pids",
    );
    assert_contained("pids", &pids);
    let memory = host.run(
        &host.policy("memory", "[sandbox.limits]\nmemory = \"64M\"\n"),
        "memory",
    );
    assert_contained("memory", &memory);
}

#[test]
fn the_battery_has_at_least_thirty_attempts() {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/escape/attempts.py"),
    )
    .expect("attempts.py");
    // Each attempt is one `"name": (attempt, twin)` entry of a group.
    let attempts = script
        .lines()
        .filter(|l| l.trim_start().starts_with('"') && l.contains("\": ("))
        .count();
    assert!(attempts >= 30, "only {attempts} attempts");
}
