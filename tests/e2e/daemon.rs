//! The daemon and its API, for real: `mcpwarden daemon` holds the store and
//! serves the API on its Unix socket (peer credentials from the kernel)
//! and on TCP; the command line goes through it; every route refuses the
//! unauthenticated and the wrongly scoped; an identity registered through
//! the API works and is revoked through it, audited under its caller.
use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::support::{free_port, http_exchange_with, mcpwarden, outcome};

/// A daemon on a socket and port of its own, stopped (SIGTERM) on drop.
/// Its log goes to a file (`log()`), never to a pipe that could fill.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub port: u16,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// A daemon with more arguments (`--config FILE`...).
    pub fn start_with_args(extra: &[&str]) -> Self {
        Self::start_with(&[], extra)
    }

    fn start_with_env(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, &[])
    }

    fn start_with(env: &[(&str, &str)], extra: &[&str]) -> Self {
        // The socket's directory must let any uid reach the socket (the
        // test connects as nobody too); tempfile directories are 0700.
        let dir = tempfile::Builder::new()
            .prefix("mcpwarden-e2e-daemon-")
            .tempdir()
            .expect("dir")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let socket = dir.join("run/mcpwarden.sock");
        let state = dir.join("state");
        let port = free_port();
        let child = Self::spawn_with(&dir, (&socket, &state, port), env, extra);
        let daemon = Self {
            child,
            dir,
            socket,
            state,
            port,
        };
        daemon.wait_until_listening();
        daemon
    }

    fn spawn_with(
        dir: &Path,
        (socket, state, port): (&Path, &Path, u16),
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("log file");
        mcpwarden()
            .args(["daemon", "--api", &format!("127.0.0.1:{port}"), "--socket"])
            .arg(socket)
            .arg("--state")
            .arg(state)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon")
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the daemon dies at once, cleaning nothing up.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().expect("wait");
    }

    /// Starts it again on the same socket, port and store.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// [`Daemon::restart`] with more arguments.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.child = Self::spawn_with(
            &self.dir,
            (&self.socket, &self.state, self.port),
            &[],
            extra,
        );
        self.wait_until_listening();
    }

    /// Stops it (SIGTERM) and waits.
    pub fn stop_quietly(&mut self) {
        let (status, log) = self.stop();
        assert!(status.success(), "{status}: {log}");
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `mcpwarden ARGS` through this daemon (no --state).
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        outcome(
            mcpwarden()
                .env("MCPWARDEN_SOCKET", &self.socket)
                .env(
                    "MCPWARDEN_STATE_DIR",
                    self.dir.join("not-the-daemons-store"),
                )
                .envs(env.iter().copied())
                .args(args)
                .stdin(Stdio::null()),
        )
    }

    /// SIGTERM, then its exit status and log.
    pub fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request to the TCP API: (status, JSON body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.map(Value::to_string);
    let answer = http_exchange_with(
        &mut std::io::BufReader::new(tcp),
        method,
        path,
        &auth,
        body.as_deref(),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (
        answer.status,
        serde_json::from_str(&answer.body).unwrap_or(Value::Null),
    )
}

/// A route to call: method, path, body.
type Route = (&'static str, &'static str, Option<Value>);

/// Every route: (method, path, body), read-only first.
fn routes() -> (Vec<Route>, Vec<Route>) {
    let read = vec![
        ("GET", "/api/v1/health", None),
        ("GET", "/api/v1/identities", None),
        (
            "POST",
            "/api/v1/identities/verify",
            Some(json!({"op": "verify_token", "token": "mcpw_x"})),
        ),
        ("GET", "/api/v1/certs", None),
        ("GET", "/api/v1/trust", None),
        ("GET", "/api/v1/trust/agent:ci-bot", None),
        ("GET", "/api/v1/audit?last=5", None),
        ("GET", "/api/v1/audit/verify", None),
        ("GET", "/api/v1/tools", None),
        (
            "POST",
            "/api/v1/policies/check",
            Some(json!({"op": "check_policy", "text": "mode = \"enforce\""})),
        ),
        ("GET", "/api/v1/sessions", None),
        ("GET", "/api/v1/events?kind=open", None),
        ("GET", "/api/v1/alerts", None),
        ("GET", "/api/v1/policies", None),
        // Streams: the answer's head is read, then the connection dropped.
        ("GET", "/api/v1/events/stream", None),
        ("GET", "/api/v1/alerts/stream?verdict=killed", None),
        ("GET", "/metrics", None),
    ];
    let admin = vec![
        (
            "POST",
            "/api/v1/identities",
            Some(json!({"op": "register", "name": "x", "expires": "1d"})),
        ),
        ("DELETE", "/api/v1/identities/bot", None),
        (
            "POST",
            "/api/v1/ca",
            Some(json!({"op": "ca_init", "name": "ca"})),
        ),
        (
            "POST",
            "/api/v1/ca/server",
            Some(json!({"op": "ca_server"})),
        ),
        (
            "POST",
            "/api/v1/certs",
            Some(json!({"op": "issue_cert", "name": "bot", "expires": "1d"})),
        ),
        ("DELETE", "/api/v1/certs/bot", None),
        ("DELETE", "/api/v1/trust/agent:bot", None),
        (
            "POST",
            "/api/v1/tools/approve",
            Some(json!({"op": "approve_tools", "server": "s"})),
        ),
        ("DELETE", "/api/v1/tools?server=s", None),
        (
            "PUT",
            "/api/v1/sessions/session-1-0/policy",
            Some(json!({"text": "mode = \"enforce\""})),
        ),
    ];
    (read, admin)
}

/// Connects to the socket as uid 65534 (nobody) and asks for the
/// identities, with or without a token; the HTTP status.
fn as_nobody(socket: &Path, token: Option<&str>) -> u16 {
    const ASK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
auth = f"Authorization: Bearer {sys.argv[2]}\r\n" if len(sys.argv) > 2 else ""
s.sendall(f"GET /api/v1/identities HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
print(s.recv(64).decode().split()[1])
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", ASK])
        .arg(socket)
        .args(token)
        .uid(65534)
        .gid(65534);
    let out = cmd.output().expect("python as nobody");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no status: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Every route refuses callers without a valid token (401) and identities
/// without the scope (403), over TCP and on the socket for non-root uids.
fn every_route_checks_its_caller(d: &Daemon, viewer: &str, bot: &str) {
    let (read, admin) = routes();
    for (method, path, body) in read.iter().chain(&admin) {
        let (status, _) = http(d.port, method, path, None, body.as_ref());
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = http(
            d.port,
            method,
            path,
            Some("mcpw_0000000000000000_00"),
            body.as_ref(),
        );
        assert_eq!(status, 401, "{method} {path} with a forged token");
        let (status, _) = http(d.port, method, path, Some(bot), body.as_ref());
        assert_eq!(
            status, 403,
            "{method} {path} by an identity without a scope"
        );
    }
    for (method, path, body) in &read {
        let (status, answer) = http(d.port, method, path, Some(viewer), body.as_ref());
        assert_eq!(status, 200, "{method} {path} read: {answer}");
    }
    for (method, path, body) in &admin {
        let (status, answer) = http(d.port, method, path, Some(viewer), body.as_ref());
        assert_eq!(status, 403, "{method} {path} by a reader: {answer}");
    }
    // A session is never started over TCP, whoever asks: no kernel there
    // to say which user the server should run as.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
    write!(
        tcp,
        "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {viewer}\r\n\
         Connection: Upgrade\r\nUpgrade: mcpwarden-session/1\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send");
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).expect("answer");
    assert_eq!(&head, b"HTTP/1.1 403", "a session over TCP");
    assert_eq!(as_nobody(&d.socket, None), 401, "nobody without a token");
    assert_eq!(
        as_nobody(&d.socket, Some(viewer)),
        200,
        "nobody with a token"
    );
}

pub fn register(d: &Daemon, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["agent", "register", name];
    args.extend_from_slice(extra);
    let (ok, out, err) = d.cli(&args, &[]);
    assert!(ok, "{err}");
    out.trim().to_owned()
}

#[test]
fn the_daemon_serves_the_command_line_and_an_authenticated_api() {
    // Serial like every test that starts a daemon or a session: each start
    // reaps what a dead mcpwarden left, which another test may be looking
    // at (see pins.rs).
    let _serial = crate::support::serial();
    let mut d = Daemon::start();
    // A second daemon on the same socket is refused.
    let second = mcpwarden()
        .args(["daemon", "--no-api", "--socket"])
        .arg(&d.socket)
        .arg("--state")
        .arg(d.dir.join("other"))
        .output()
        .expect("second daemon");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already answers"));

    let (ok, out, err) = d.cli(&["status"], &[]);
    assert!(
        ok && out.contains(&d.state.display().to_string()),
        "{out}{err}"
    );
    // Root on the socket administers: registrations go through the daemon
    // (its store, not MCPWARDEN_STATE_DIR).
    let ops = register(&d, "ops", &["--api", "admin"]);
    let viewer = register(&d, "viewer", &["--api", "read"]);
    let bot = register(&d, "bot", &[]);
    let (ok, out, _) = d.cli(&["agent", "list", "--json"], &[]);
    let list: Value = serde_json::from_str(&out).expect("json");
    assert!(
        ok && list.as_array().is_some_and(|l| l.len() == 3),
        "{list}"
    );
    assert!(!d.dir.join("not-the-daemons-store").exists());

    every_route_checks_its_caller(&d, &viewer, &bot);

    // An administrator registers an identity through the API; its token
    // works, until the API revokes it.
    let (status, made) = http(
        d.port,
        "POST",
        "/api/v1/identities",
        Some(&ops),
        Some(&json!({"op": "register", "name": "api-made", "roles": ["builder"], "expires": "1d"})),
    );
    assert_eq!(status, 200, "{made}");
    let token = made["token"].as_str().expect("token").to_owned();
    let (ok, out, err) = d.cli(&["agent", "verify"], &[("MCPWARDEN_TOKEN", &token)]);
    assert!(ok && out.contains("api-made"), "{out}{err}");
    let (status, _) = http(
        d.port,
        "DELETE",
        "/api/v1/identities/api-made",
        Some(&ops),
        None,
    );
    assert_eq!(status, 200);
    let (ok, _, err) = d.cli(&["agent", "verify"], &[("MCPWARDEN_TOKEN", &token)]);
    assert!(!ok && err.contains("revoked"), "{err}");
    let (status, again) = http(
        d.port,
        "DELETE",
        "/api/v1/identities/nobody-here",
        Some(&ops),
        None,
    );
    assert_eq!(status, 404, "{again}");

    let (_, audit) = http(d.port, "GET", "/api/v1/audit?last=50", Some(&viewer), None);
    let by_ops: Vec<&str> = audit
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["actor"]["name"] == "ops")
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(by_ops, ["identity.register", "identity.revoke"], "{audit}");
    let (_, verdict) = http(d.port, "GET", "/api/v1/audit/verify", Some(&viewer), None);
    assert_eq!(verdict["intact"], true, "{verdict}");

    // A session of its own (--state) on the daemon's store is refused
    // with the reason (not after waiting for the store's lock).
    let run = mcpwarden()
        .env("MCPWARDEN_SOCKET", &d.socket)
        .arg("run")
        .arg("--state")
        .arg(&d.state)
        .arg("--policy")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example.toml"))
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("holds the store"),
        "{err}"
    );

    let (status, log) = d.stop();
    assert!(status.success(), "{status}: {log}");
    assert!(!d.socket.exists(), "the socket is removed on stop");
    let (ok, _, err) = d.cli(&["status"], &[]);
    assert!(!ok && err.contains("no mcpwarden daemon"), "{err}");
    // Without the daemon the same commands work on the store itself.
    let out = mcpwarden()
        .env("MCPWARDEN_SOCKET", &d.socket)
        .args(["audit", "verify", "--state"])
        .arg(&d.state)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_daemon_speaks_systemds_notify_protocol() {
    let _serial = crate::support::serial();
    // systemd's side of Type=notify: a datagram socket in NOTIFY_SOCKET.
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).expect("bind");
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let notify_path = notify.display().to_string();
    let mut d =
        Daemon::start_with_env(&[("NOTIFY_SOCKET", &notify_path), ("WATCHDOG_USEC", "200000")]);
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while !heard.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = listener.recv(&mut buf).expect("a notification");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(heard[0].contains("READY=1"), "{heard:?}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let mut stopping = false;
    while let Ok(n) = listener.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}

#[test]
fn the_systemd_unit_verifies() {
    // systemd-analyze checks the unit's keys and that ExecStart exists:
    // the unit is checked as shipped, with the binary under test in place
    // of /usr/bin/mcpwarden.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/mcpwarden.service"),
    )
    .expect("the unit");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mcpwarden.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/mcpwarden", env!("CARGO_BIN_EXE_mcpwarden")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
