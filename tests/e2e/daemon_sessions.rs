//! Sessions through the daemon, for real: an unprivileged user's MCP
//! client (the Python SDK, as uid 65534) starts `mcpwarden run`, which asks
//! the daemon on its socket; the daemon confines the server as that user,
//! inspects and enforces, and records the session. Killing the daemon with
//! SIGKILL takes the sandbox with it; the next start closes the record and
//! removes what was left.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    daemon::Daemon,
    support::{Answer, Fixture, Run, cgroup_root, http_exchange, python, repo, serial},
};

/// The daemon's sessions, newest first (`mcpwarden sessions --json`).
pub(crate) fn sessions(d: &Daemon) -> Vec<Value> {
    let (ok, out, err) = d.cli(&["sessions", "--json"], &[]);
    assert!(ok, "mcpwarden sessions failed: {err}");
    serde_json::from_str::<Value>(&out)
        .expect("sessions JSON")
        .as_array()
        .expect("a list")
        .clone()
}

/// The audit actions recorded for `session`.
fn audited(d: &Daemon, session: &str) -> Vec<String> {
    let (ok, out, err) = d.cli(&["audit", "show", "-n", "200"], &[]);
    assert!(ok, "audit show failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("an audit record"))
        .filter(|r| r["subject"] == session)
        .map(|r| r["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `mcpwarden run` with no `--state` and no `--events`: the daemon's client.
pub(crate) fn run_through(fx: &Fixture) -> Vec<String> {
    let mut command = vec![
        crate::support::mcpwarden_path(),
        "run".to_owned(),
        "--policy".to_owned(),
        fx.policy.display().to_string(),
        "--".to_owned(),
    ];
    command.extend(fx.server_cmd());
    command
}

pub(crate) fn socket_env(d: &Daemon) -> [(&'static str, String); 1] {
    [("MCPWARDEN_SOCKET", d.socket.display().to_string())]
}

#[test]
fn unprivileged_users_sessions_run_in_the_daemon_confined_as_those_users() {
    let _serial = serial();
    let mut d = Daemon::start();
    let fx = Fixture::new("enforce");
    let scenario = json!([
        {"call": "whoami", "args": {}},
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"call": "read_file", "args": {"path": fx.secret()}},
    ]);
    // Two users at once: nobody, and a uid with no name at all.
    let other = std::thread::scope(|scope| {
        let other = scope.spawn(|| {
            let env = socket_env(&d);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Run::client_as(
                4242,
                &json!([{"call": "whoami", "args": {}}]),
                run_through(&fx),
                &env,
            )
        });
        let env = socket_env(&d);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = Run::client_as(65534, &scenario, run_through(&fx), &env);
        (run, other.join().expect("the other client"))
    });
    let (run, other) = other;

    // Each server ran as its client's user, in a session cgroup.
    let me = run.whoami(0);
    assert_eq!(me["uid"], 65534, "server identity: {me}");
    assert_eq!(other.whoami(0)["uid"], 4242, "{}", other.raw);
    assert_ne!(run.session_cgroup(0), other.session_cgroup(0));
    assert_eq!(run.text(1), "the allowed file\n");
    // The daemon enforced the policy: the open of the denied file killed
    // the server and the call was answered with the rule.
    let blocked = &run.step(2)["error"];
    assert_eq!(blocked["code"], -32001, "{}", run.raw);
    assert!(
        blocked["message"]
            .as_str()
            .unwrap_or_default()
            .contains("files.deny[0]"),
        "{blocked}"
    );

    // The daemon recorded the session under the client's uid, and its end
    // (written once the teardown is done, just after the client left).
    let mut list = Vec::new();
    assert!(eventually(Duration::from_secs(10), || {
        list = sessions(&d);
        list.len() == 2 && list.iter().all(|s| !s["outcome"].is_null())
    }));
    let s = list
        .iter()
        .find(|s| s["uid"] == 65534)
        .expect("nobody's session record");
    assert!(list.iter().any(|s| s["uid"] == 4242), "{list:?}");
    assert_eq!(s["outcome"], "ended", "{s}");
    assert_eq!(s["policy"], fx.policy.display().to_string());
    let label = s["session"].as_str().expect("label");
    assert_eq!(audited(&d, label), ["session.start", "session.end"]);

    // The daemon's events: the kill, tied to the read_file call, and the
    // server's own start under the same session.
    let read_id = run.request_id("read_file", &fx.secret());
    let (_, body) = get(
        &d.socket,
        &format!("/api/v1/alerts?session={label}&verdict=killed"),
    );
    let alerts: Value = serde_json::from_str(&body).expect("alerts JSON");
    let kill = alerts
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or_else(|| panic!("no kill among the alerts: {alerts}"));
    assert_eq!(kill["kind"], "open", "{kill}");
    assert_eq!(kill["path"], fx.secret(), "{kill}");
    assert_eq!(kill["request_id"], read_id, "{kill}");
    let (_, body) = get(
        &d.socket,
        &format!("/api/v1/events?session={label}&kind=exec"),
    );
    let execs: Value = serde_json::from_str(&body).expect("events JSON");
    assert!(
        !execs.as_array().expect("a list").is_empty(),
        "no exec events"
    );

    metrics_tell_the_same(&d);

    // Trust is kept per client user, as the kernel named it.
    let (_, body) = get(&d.socket, "/api/v1/trust");
    let trust: Value = serde_json::from_str(&body).expect("trust JSON");
    for agent in ["agent:uid-65534", "agent:uid-4242"] {
        assert!(
            trust
                .as_array()
                .is_some_and(|t| t.iter().any(|s| s["subject"] == agent)),
            "no {agent} in {trust}"
        );
    }

    // Verdicts are kept in the store: the kill is still there after a
    // restart.
    d.stop_quietly();
    d.restart();
    let (_, body) = get(
        &d.socket,
        &format!("/api/v1/alerts?session={label}&verdict=killed"),
    );
    let kept: Value = serde_json::from_str(&body).expect("alerts JSON");
    assert_eq!(kept.as_array().map(Vec::len), Some(1), "{kept}");
    assert_eq!(kept[0]["request_id"], read_id);
}

/// Prometheus' view of two sessions, one killed: none running now, the
/// kill, and every client message judged and timed.
fn metrics_tell_the_same(d: &Daemon) {
    let metrics = scrape(&d.socket);
    assert_eq!(metric(&metrics, "mcpwarden_sessions_started_total"), 2);
    assert_eq!(metric(&metrics, "mcpwarden_sessions"), 0);
    assert!(metric(&metrics, "mcpwarden_verdicts_total{verdict=\"kill\"}") >= 1);
    let judged = metric(&metrics, "mcpwarden_messages_total{from=\"client\"}");
    // initialize, initialized and the calls of both clients.
    assert!(judged >= 7, "{metrics}");
    assert_eq!(
        metric(&metrics, "mcpwarden_client_message_seconds_count"),
        judged
    );
    assert!(metric(&metrics, "mcpwarden_kernel_events_total") > 0);
    assert_eq!(
        metric(
            &metrics,
            "mcpwarden_kernel_events_lost_total{reason=\"ring_full\"}"
        ),
        0
    );
}

/// `method path` with a JSON `body` on the daemon's socket, as root.
fn request(socket: &Path, method: &str, path: &str, body: &str) -> Answer {
    let conn = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    http_exchange(&mut std::io::BufReader::new(conn), method, path, Some(body))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// GET `path` on the daemon's socket, as root: the headers and the body.
pub(crate) fn get(socket: &Path, path: &str) -> (String, String) {
    let a = request(socket, "GET", path, "");
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    (a.headers, a.body)
}

/// The running session's policy, seen and changed through the API: shown
/// as the client sent it; a broken one refused with the reason and the one
/// in force kept; a good one applied, with what waits for the next session.
fn policy_seen_and_changed(d: &Daemon, label: &str, fx: &Fixture) {
    let (_, body) = get(&d.socket, "/api/v1/policies");
    let live: Value = serde_json::from_str(&body).expect("policies JSON");
    let mine = live
        .as_array()
        .and_then(|l| l.iter().find(|p| p["session"] == label))
        .unwrap_or_else(|| panic!("{label} not among {live}"));
    let text = std::fs::read_to_string(&fx.policy).expect("policy file");
    assert_eq!(mine["text"], text.as_str());
    assert_eq!(mine["uid"], 65534);
    let route = format!("/api/v1/sessions/{label}/policy");
    let put = |route: &str, text: &str| {
        request(
            &d.socket,
            "PUT",
            route,
            &json!({ "text": text }).to_string(),
        )
    };
    let refused = put(&route, "mode = 3");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("rejected"), "{}", refused.body);
    let changed = put(&route, &text.replace("secret", "other"));
    assert_eq!(changed.status, 200, "{}", changed.body);
    let applied: Value = serde_json::from_str(&changed.body).expect("JSON");
    assert_eq!(applied["action"], "applied", "{applied}");
    assert!(
        applied["next_session"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "files.deny")),
        "{applied}"
    );
    assert_eq!(put("/api/v1/sessions/none/policy", &text).status, 404);
}

/// GET /metrics on the daemon's socket, as root: the body.
fn scrape(socket: &Path) -> String {
    let (head, body) = get(socket, "/metrics");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body
}

/// The value of the count `name` (with its labels) in an exposition.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[test]
fn a_session_may_not_run_its_server_as_another_user() {
    let _serial = serial();
    let d = Daemon::start();
    let fx = Fixture::with_sandbox("enforce", "user = 1000");
    let out = run_as_nobody(&d.socket, &fx);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("sandbox.user is 1000, but a session asked for by uid 65534 runs its server as uid 65534"),
        "{err}"
    );
    assert!(sessions(&d).is_empty(), "a refused session left a record");

    // Without a daemon, an ordinary user is told so.
    let out = run_as_nobody(&d.socket.with_extension("absent"), &fx);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no mcpwarden daemon answers on"),
        "{err}"
    );
}

/// `mcpwarden run` of the fixture's server as uid 65534, with the daemon
/// socket `socket`, no client on stdin: how it ended.
fn run_as_nobody(socket: &Path, fx: &Fixture) -> std::process::Output {
    std::process::Command::new(crate::support::mcpwarden_path())
        .env("MCPWARDEN_SOCKET", socket)
        .args(["run", "--policy"])
        .arg(&fx.policy)
        .arg("--")
        .args(fx.server_cmd())
        .stdin(std::process::Stdio::null())
        .uid_gid(65534)
        .output()
        .expect("run mcpwarden")
}

trait AsNobody {
    fn uid_gid(&mut self, id: u32) -> &mut Self;
}

impl AsNobody for std::process::Command {
    fn uid_gid(&mut self, id: u32) -> &mut Self {
        use std::os::unix::process::CommandExt as _;
        self.uid(id).gid(id)
    }
}

/// Polls `what` every 20 ms until it holds or `limit` passes.
pub(crate) fn eventually(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

pub(crate) fn pids_in(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// A session of daemon `d` for fixture `fx`, live until `go_on` exists,
/// through the SDK client as nobody, its stderr (and so `run`'s) kept: it
/// cannot end cleanly once its server is gone, and says why. Returns the
/// client, the session's label, its cgroup and the server's pids, once the
/// session's record has no end and its cgroup has the server.
pub(crate) fn live_session(
    d: &Daemon,
    fx: &Fixture,
    go_on: &Path,
) -> (std::process::Child, String, PathBuf, Vec<u32>) {
    let scenario = json!([
        {"call": "whoami", "args": {}},
        {"wait_file": go_on.display().to_string()},
    ]);
    let client = std::process::Command::new(python())
        .arg(repo().join("tests/e2e/client.py"))
        .arg(scenario.to_string())
        .arg("--")
        .args(run_through(fx))
        .env("MCPWARDEN_SOCKET", &d.socket)
        .env("HOME", "/tmp")
        .uid_gid(65534)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the Python MCP client");
    let mut label = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            match sessions(d).first() {
                Some(s) if s["outcome"].is_null() => {
                    s["session"]
                        .as_str()
                        .unwrap_or_default()
                        .clone_into(&mut label);
                    true
                }
                _ => false,
            }
        }),
        "no live session appeared; daemon log:\n{}",
        d.log()
    );
    let cgroup = cgroup_root().join("mcpwarden").join(&label);
    assert!(
        eventually(Duration::from_secs(10), || !pids_in(&cgroup).is_empty()),
        "the server never joined {}",
        cgroup.display()
    );
    let server = pids_in(&cgroup);
    (client, label, cgroup, server)
}

/// SIGKILLs the daemon of a [`live_session`] and checks that its server
/// dies with it, without anyone asking (fail-closed), and that the client
/// is told why.
pub(crate) fn kill_and_see_the_server_die(
    d: &mut Daemon,
    server: &[u32],
    client: std::process::Child,
    go_on: &Path,
) {
    d.kill_hard();
    assert!(
        eventually(Duration::from_secs(5), || server
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())),
        "server pids {server:?} outlived the daemon"
    );
    std::fs::write(go_on, "").expect("let the client finish");
    let out = client.wait_with_output().expect("the client ends");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the daemon ended the session"),
        "the client was not told why its server went away:\n{said}"
    );
}

#[test]
fn a_killed_daemon_takes_its_sandboxes_with_it_and_recovers_at_start() {
    let _serial = serial();
    let mut d = Daemon::start();
    let fx = Fixture::new("enforce");
    let go_on = fx.dir().join("go-on");
    let (client, label, cgroup, server) = live_session(&d, &fx, &go_on);
    policy_seen_and_changed(&d, &label, &fx);
    kill_and_see_the_server_die(&mut d, &server, client, &go_on);

    // The next start removes the sandbox left behind and closes the record.
    d.restart();
    assert!(
        !cgroup.exists(),
        "the restarted daemon left {}",
        cgroup.display()
    );
    let list = sessions(&d);
    let s = list
        .iter()
        .find(|s| s["session"] == label.as_str())
        .expect("the session's record survived");
    assert!(
        s["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("closed at the next start"),
        "{s}"
    );
    assert_eq!(
        audited(&d, &label),
        [
            "session.start",
            "policy.reload",
            "policy.reload",
            "session.recovered"
        ]
    );
    let (ok, out, err) = d.cli(&["audit", "verify"], &[]);
    assert!(ok, "audit verify: {out}{err}");
}
