//! Helpers for the end-to-end tests.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

mod http;
pub use self::http::{
    Answer, Endpoint, free_port, http_exchange, http_exchange_with, wait_for_port,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// The Python with the official MCP SDK, installed by `./setup.sh`.
pub const VENV_PYTHON: &str = "/opt/mcpwarden-dev/venv/bin/python";

/// One kernel-touching test at a time: they check that the kernel holds no
/// program of ours afterwards, which a concurrent test would break.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

pub fn python() -> PathBuf {
    let py = PathBuf::from(VENV_PYTHON);
    assert!(
        py.exists(),
        "{} is missing: run ./setup.sh first",
        py.display()
    );
    py
}

fn server_cmd() -> Vec<String> {
    vec![
        python().display().to_string(),
        repo().join("tests/e2e/server.py").display().to_string(),
    ]
}

/// The mcpwarden binary under test.
pub fn mcpwarden() -> Command {
    assert!(
        nix_is_root(),
        "the end-to-end tests load kernel programs: run them as root"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcpwarden"));
    // Pins, identities and trust of runs without `--state` go to a store
    // of this test process, never to the host's /var/lib/mcpwarden.
    cmd.env("MCPWARDEN_STATE_DIR", test_state_dir());
    // Nor do admin commands reach a daemon the host may be running.
    cmd.env("MCPWARDEN_SOCKET", test_state_dir().join("no-daemon.sock"));
    cmd
}

/// The Python virtual environment the test server runs from (the
/// sandbox must let it read there).
fn venv_dir() -> String {
    Path::new(VENV_PYTHON)
        .ancestors()
        .nth(2)
        .expect("venv dir")
        .display()
        .to_string()
}

/// A state directory for this test process (removed at the next run).
fn test_state_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("mcpwarden-e2e-state");
        let _ = std::fs::remove_dir_all(&dir);
        dir
    })
    .clone()
}

/// The path of the mcpwarden binary under test.
pub fn mcpwarden_path() -> String {
    env!("CARGO_BIN_EXE_mcpwarden").to_owned()
}

fn nix_is_root() -> bool {
    // Effective uid, the third field of `Uid:`.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

/// A temporary directory with a policy, an allowed file, a secret and a
/// copy of the test server. Everything in it is world-readable: sandboxed
/// servers run as an unprivileged user. The policy lets the server read the
/// directory and the SDK's venv; `sandbox_extra` is appended to it.
pub struct Fixture {
    dir: tempfile::TempDir,
    pub policy: PathBuf,
    pub events: PathBuf,
}

impl Fixture {
    pub fn new(mode: &str) -> Self {
        Self::with_sandbox(mode, "")
    }

    pub fn with_sandbox(mode: &str, sandbox_extra: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("mcpw-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::create_dir(root.join("secret")).expect("mkdir");
        std::fs::create_dir(root.join("public")).expect("mkdir");
        std::fs::write(root.join("secret/key"), "the secret\n").expect("write");
        std::fs::write(root.join("allowed.txt"), "the allowed file\n").expect("write");
        std::fs::copy(repo().join("tests/e2e/server.py"), root.join("server.py"))
            .expect("copy server");
        let venv = venv_dir();
        let policy = root.join("policy.toml");
        let text = format!(
            "mode = \"{mode}\"\n[files]\ndeny = [\"{secret}\"]\n\
             [sandbox]\nprofile = \"python\"\nread = [\"{root}\", \"{venv}\"]\n{sandbox_extra}",
            secret = root.join("secret").display(),
            root = root.display(),
        );
        std::fs::write(&policy, text).expect("write policy");
        let events = root.join("events.jsonl");
        Self {
            dir,
            policy,
            events,
        }
    }

    /// Rewrites the policy as a v1 document for server `name` (same
    /// sandbox and denied directory), with `spec_extra` (TOML under
    /// `[spec...]` keys) appended.
    pub fn write_v1_policy(&self, name: &str, mode: &str, spec_extra: &str) {
        let root = self.dir.path();
        let venv = venv_dir();
        let text = format!(
            "apiVersion = \"mcpwarden.dev/v1\"\nkind = \"ServerPolicy\"\n[metadata]\nname = \"{name}\"\n\
             [spec]\nmode = \"{mode}\"\n[spec.files]\ndeny = [\"{secret}\"]\n\
             [spec.sandbox]\nprofile = \"python\"\nread = [\"{root}\", \"{venv}\"]\n{spec_extra}",
            secret = root.join("secret").display(),
            root = root.display(),
        );
        // Write and rename: a reload never reads a half-written file.
        let tmp = root.join(".policy.tmp");
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, &self.policy).expect("install policy");
    }

    /// The fixture's tool registry (pins of v1 policies).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The fixture directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server command, run from the fixture's copy.
    pub fn server_cmd(&self) -> Vec<String> {
        vec![
            VENV_PYTHON.to_owned(),
            self.dir.path().join("server.py").display().to_string(),
        ]
    }

    pub fn allowed(&self) -> String {
        self.dir.path().join("allowed.txt").display().to_string()
    }

    pub fn secret(&self) -> String {
        self.dir.path().join("secret/key").display().to_string()
    }

    /// The secret, named through `..` so it does not start with the denied
    /// prefix (the file is readable under this name).
    pub fn sneaky_secret(&self) -> String {
        self.dir
            .path()
            .join("public/../secret/key")
            .display()
            .to_string()
    }
}

/// `mcpwarden run FLAGS --policy <fixture's> -- SERVER...` as an argv.
pub fn run_command(fx: &Fixture, flags: &[&str], server: Vec<String>) -> Vec<String> {
    let mut command = vec![env!("CARGO_BIN_EXE_mcpwarden").to_owned(), "run".into()];
    command.extend(flags.iter().map(|f| (*f).to_owned()));
    command.extend([
        "--policy".into(),
        fx.policy.display().to_string(),
        "--state".into(),
        fx.state().display().to_string(),
        "--".into(),
    ]);
    command.extend(server);
    command
}

/// The outcome of one client run (see tests/e2e/client.py).
pub struct Run {
    pub out: Value,
    pub raw: String,
    pub sent: Vec<Value>,
}

impl Run {
    /// The SDK client talking stdio to `command`.
    pub fn client(scenario: &Value, command: Vec<String>) -> Self {
        Self::client_env(scenario, command, &[])
    }

    /// [`Run::client`] with extra environment variables for the client
    /// (it passes its environment on to the command it starts).
    pub fn client_env(scenario: &Value, command: Vec<String>, env: &[(&str, &str)]) -> Self {
        let mut target = vec!["--".to_owned()];
        target.extend(command);
        Self::client_with(scenario, &target, env)
    }

    /// The SDK client talking Streamable HTTP to `url`.
    pub fn over_http(scenario: &Value, url: &str) -> Self {
        Self::client_with(scenario, &["--url".to_owned(), url.to_owned()], &[])
    }

    /// [`Run::over_http`] sending `Authorization: Bearer TOKEN`.
    pub fn over_http_with_token(scenario: &Value, url: &str, token: &str) -> Self {
        Self::over_http_env(scenario, url, &[("MCP_BEARER", token)])
    }

    /// [`Run::over_http`] with extra environment for the client (e.g.
    /// MCP_TLS_CA, MCP_TLS_CERT, MCP_TLS_KEY: see client.py).
    pub fn over_http_env(scenario: &Value, url: &str, env: &[(&str, &str)]) -> Self {
        Self::client_with(scenario, &["--url".to_owned(), url.to_owned()], env)
    }

    /// [`Run::client_env`] with the client running as user and group `id`
    /// (not root), as an ordinary user's MCP client does.
    pub fn client_as(
        id: u32,
        scenario: &Value,
        command: Vec<String>,
        env: &[(&str, &str)],
    ) -> Self {
        use std::os::unix::process::CommandExt as _;
        let mut target = vec!["--".to_owned()];
        target.extend(command);
        let mut cmd = Self::client_cmd(scenario, &target, env);
        cmd.uid(id).gid(id).env("HOME", "/tmp");
        Self::finish(&mut cmd)
    }

    fn client_with(scenario: &Value, target: &[String], env: &[(&str, &str)]) -> Self {
        Self::finish(&mut Self::client_cmd(scenario, target, env))
    }

    fn client_cmd(scenario: &Value, target: &[String], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(python());
        // The client passes its environment on to the command it starts.
        cmd.env("MCPWARDEN_STATE_DIR", test_state_dir());
        cmd.envs(env.iter().copied());
        cmd.arg(repo().join("tests/e2e/client.py"))
            .arg(scenario.to_string())
            .args(target);
        cmd
    }

    fn finish(cmd: &mut Command) -> Self {
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .expect("run the Python MCP client");
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "client failed ({}): {raw}",
            out.status
        );
        let out: Value = serde_json::from_str(&raw)
            .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {raw}"));
        let sent = out["sent"].as_array().expect("sent").clone();
        Self { out, raw, sent }
    }

    /// The SDK client talking to the server directly.
    pub fn direct(scenario: &Value) -> Self {
        Self::client(scenario, server_cmd())
    }

    /// The SDK client talking to `server` through `mcpwarden run FLAGS`.
    pub fn through_mcpwarden_with(
        fx: &Fixture,
        scenario: &Value,
        flags: &[&str],
        server: Vec<String>,
    ) -> Self {
        Self::client(scenario, run_command(fx, flags, server))
    }

    /// The SDK client talking to the server through `mcpwarden run`.
    pub fn through_mcpwarden(fx: &Fixture, scenario: &Value) -> Self {
        let events = fx.events.display().to_string();
        let command = run_command(fx, &["--events", &events], fx.server_cmd());
        assert!(
            nix_is_root(),
            "the end-to-end tests load kernel programs: run them as root"
        );
        Self::client(scenario, command)
    }

    pub fn step(&self, i: usize) -> &Value {
        &self.out["steps"][i]
    }

    /// The text of step `i`'s successful tool result.
    pub fn text(&self, i: usize) -> String {
        let step = self.step(i);
        assert!(step.get("error").is_none(), "step {i} failed: {step}");
        step["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text in {step}"))
            .to_owned()
    }

    /// The JSON-RPC id of the `nth` (from 0) `tools/call` of `tool`.
    pub fn call_id(&self, tool: &str, nth: usize) -> Value {
        self.sent
            .iter()
            .filter(|m| m["method"] == "tools/call" && m["params"]["name"] == tool)
            .nth(nth)
            .unwrap_or_else(|| panic!("no {tool} call #{nth} in {:?}", self.sent))["id"]
            .clone()
    }

    /// The JSON-RPC id the client used for `tools/call name {path}`.
    pub fn request_id(&self, tool: &str, path: &str) -> Value {
        self.sent
            .iter()
            .find(|m| {
                m["method"] == "tools/call"
                    && m["params"]["name"] == tool
                    && m["params"]["arguments"]["path"] == path
            })
            .unwrap_or_else(|| panic!("no {tool} call for {path} in {:?}", self.sent))["id"]
            .clone()
    }

    /// The host pids recorded by a `procs` step at `i`.
    pub fn procs(&self, i: usize) -> Vec<u64> {
        self.step(i)["procs"]
            .as_array()
            .expect("procs step")
            .iter()
            .map(|p| p.as_u64().expect("pid"))
            .collect()
    }

    /// The `whoami` result at step `i`: the server's pid and cgroups.
    pub fn whoami(&self, i: usize) -> Value {
        serde_json::from_str(&self.text(i)).expect("whoami returns JSON")
    }

    /// The session cgroup directory, from a `whoami` result at step `i`.
    pub fn session_cgroup(&self, i: usize) -> PathBuf {
        let cgroups = self.whoami(i)["cgroup"]
            .as_str()
            .expect("cgroup")
            .to_owned();
        let v2 = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line");
        assert!(
            v2.starts_with("/mcpwarden/session-"),
            "server not in a session cgroup: {v2}"
        );
        cgroup_root().join(v2.trim_start_matches('/'))
    }
}

/// The cgroup v2 mount point, read from the kernel's mount table.
pub fn cgroup_root() -> PathBuf {
    mcpwarden_sandbox::Hierarchy::discover()
        .expect("a cgroup v2 mount")
        .root()
        .to_owned()
}

/// The events file, one JSON value per line.
pub fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("events file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line ({e}): {l}")))
        .collect()
}

/// Asks the kernel (not mcpwarden) whether anything of a session remains:
/// the cgroup directory, and any loaded program with one of our names.
pub fn assert_nothing_left_behind(cgroup: Option<&Path>) {
    if let Some(cg) = cgroup {
        assert!(
            !cg.exists(),
            "session cgroup {} was left behind",
            cg.display()
        );
    }
    let ours: Vec<&str> = mcpwarden::kernel::calls::program_names()
        .into_iter()
        .chain(
            mcpwarden_common::SOCK_PROGRAMS
                .iter()
                .map(|(name, _)| *name),
        )
        .collect();
    let probes = [
        "probe_ringbuf",
        "probe_signal",
        "probe_raw_hook",
        "probe_raw_call",
        "probe_connect4",
        "probe_lsm",
        "probe_fentry",
    ];
    let pinned: Vec<PathBuf> = std::fs::read_dir("/sys/fs/bpf/mcpwarden")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    assert!(pinned.is_empty(), "kernel pins left behind: {pinned:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<String> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|p| p.name_as_str().map(str::to_owned))
            .filter(|n| ours.contains(&n.as_str()) || probes.contains(&n.as_str()))
            .collect();
        if left.is_empty() {
            return;
        }
        // The kernel frees programs asynchronously (RCU) after the last fd.
        assert!(
            Instant::now() < deadline,
            "kernel programs left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw lines to the server (directly, or through mcpwarden with the
/// extra lines appended) and returns every line it wrote, once the replies
/// to all requests are in.
pub fn raw_exchange(fx: Option<&Fixture>, lines: &[&str], extra: &[&str]) -> Vec<String> {
    let mut cmd = match fx {
        None => {
            let s = server_cmd();
            let mut c = Command::new(&s[0]);
            c.args(&s[1..]);
            c
        }
        Some(fx) => {
            let mut c = mcpwarden();
            c.args(["run", "--policy"])
                .arg(&fx.policy)
                .arg("--")
                .args(fx.server_cmd());
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut got = Vec::new();
    let requests = |l: &str| {
        serde_json::from_str::<Value>(l)
            .ok()
            .is_some_and(|v| v.get("id").is_some())
    };
    let expected = lines.iter().filter(|l| requests(l)).count();
    // Send one request at a time and wait for its answer, so the server's
    // output order is deterministic.
    for line in lines {
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
        if requests(line) {
            let mut l = String::new();
            stdout.read_line(&mut l).expect("read");
            got.push(l.trim_end_matches('\n').to_owned());
        }
    }
    assert_eq!(got.len(), expected);
    for line in extra {
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
        let mut l = String::new();
        stdout.read_line(&mut l).expect("read");
        got.push(l.trim_end_matches('\n').to_owned());
    }
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    got
}

/// Runs `mcpwarden ARGS --state STATE` (an admin command on that store);
/// returns (success, stdout, stderr).
pub fn admin_cli(state: &Path, args: &[&str]) -> (bool, String, String) {
    outcome(
        mcpwarden()
            .args(args)
            .arg("--state")
            .arg(state)
            .stdin(Stdio::null()),
    )
}

/// Runs `cmd` to its end: (success, stdout, stderr).
pub fn outcome(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run mcpwarden");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The actions of the store's audit log, oldest first, after checking
/// that its chain is intact.
pub fn audit_actions(state: &Path) -> Vec<String> {
    let (ok, out, err) = admin_cli(state, &["audit", "verify"]);
    assert!(ok && out.contains("intact"), "{out}{err}");
    let (ok, out, err) = admin_cli(state, &["audit", "show", "-n", "100"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).expect("audit record");
            r["action"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}
