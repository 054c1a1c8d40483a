//! Unmanaged MCP servers, for real: a daemon watching the host's execs
//! finds the official filesystem server (npm) started outside mcpwarden and
//! kills it, or reports it, by its settings; the same command line run as
//! a session through the daemon is left alone.
use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    daemon::Daemon,
    daemon_sessions::{get, run_through, socket_env},
    support::{Fixture, Run, serial},
};

/// The official filesystem server's program, as npm installs it (a
/// `#!/usr/bin/env node` script).
const FS_SERVER: &str = "/opt/mcpwarden-dev/node/node_modules/.bin/mcp-server-filesystem";

/// A daemon whose `[unmanaged]` settings match only command lines naming
/// the fixture's directory (unique to this test), so nothing else running
/// on the machine is touched.
fn daemon(fx: &Fixture, action: &str) -> Daemon {
    let config = fx.dir().join(format!("mcpwarden-{action}.toml"));
    std::fs::write(
        &config,
        format!(
            "[unmanaged]\naction = \"{action}\"\npatterns = [\"*{}*\"]\n",
            fx.dir().display()
        ),
    )
    .expect("settings");
    Daemon::start_with_args(&["--config", &config.display().to_string()])
}

fn start_unmanaged(fx: &Fixture) -> Child {
    Command::new(FS_SERVER)
        .arg(fx.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the filesystem server")
}

/// The daemon's `unmanaged_server` records, once there is one for `pid`.
fn sightings(d: &Daemon, path: &str, pid: u32) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(&d.socket, path);
        let all: Vec<Value> = serde_json::from_str::<Value>(&body)
            .expect("JSON")
            .as_array()
            .expect("a list")
            .iter()
            .filter(|e| e["kind"] == "unmanaged_server")
            .cloned()
            .collect();
        if all.iter().any(|e| e["pid"] == pid) || Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the daemon to kill `server` with SIGKILL; returns its kill
/// record and every `unmanaged_server` record.
fn killed(d: &Daemon, server: &mut Child) -> (Value, Vec<Value>) {
    let pid = server.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the unmanaged server still runs\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(9), "killed with SIGKILL: {status}");
    let found = sightings(d, "/api/v1/alerts?kind=unmanaged_server", pid);
    let kill = found
        .iter()
        .find(|e| e["pid"] == pid)
        .unwrap_or_else(|| panic!("no record of {pid}: {found:?}\n{}", d.log()))
        .clone();
    assert_eq!(kill["action"], "killed", "{kill}");
    (kill, found)
}

#[test]
fn servers_started_outside_mcpwarden_are_killed_or_reported() {
    let _serial = serial();
    let fx = Fixture::new("enforce");
    let mut d = daemon(&fx, "kill");

    // A session through the daemon: its server's command line names the
    // fixture too (python DIR/server.py), and it is mcpwarden's own.
    let env = socket_env(&d);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = Run::client_env(
        &json!([{"call": "whoami"}, {"call": "read_file", "args": {"path": fx.allowed()}}]),
        run_through(&fx),
        &env,
    );
    let managed_pid = run.whoami(0)["pid"].as_u64().expect("pid");
    assert_eq!(run.text(1), "the allowed file\n");

    // The same directory given to the npm server started by hand.
    let mut server = start_unmanaged(&fx);
    let (kill, found) = killed(&d, &mut server);
    assert_eq!(kill["found"], "exec", "{kill}");
    assert_eq!(kill["uid"], 0);
    assert!(
        kill["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("mcp-server-filesystem")),
        "{kill}"
    );
    assert!(
        kill["rule"]
            .as_str()
            .is_some_and(|r| r.starts_with("unmanaged.patterns[0]")),
        "{kill}"
    );
    assert!(
        !found.iter().any(|e| e["pid"] == managed_pid),
        "the managed server was reported: {found:?}"
    );
    d.stop_quietly();

    // Alert: reported and kept, the server lives on.
    let d = daemon(&fx, "alert");
    let mut server = start_unmanaged(&fx);
    let pid = server.id();
    let found = sightings(&d, "/api/v1/alerts?kind=unmanaged_server", pid);
    let alert = found
        .iter()
        .find(|e| e["pid"] == pid)
        .unwrap_or_else(|| panic!("no record of {pid}: {found:?}\n{}", d.log()));
    assert_eq!(alert["action"], "alert", "{alert}");
    // Reported once, though the script's exec is two (env, then node).
    assert_eq!(
        found.iter().filter(|e| e["pid"] == pid).count(),
        1,
        "{found:?}"
    );
    assert!(
        server.try_wait().expect("wait").is_none(),
        "alert kills nothing"
    );
    server.kill().expect("kill");
    server.wait().expect("wait");
}

/// Waits until `pid` runs node (the script's second exec), so its command
/// line is the server's.
fn wait_for_node(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "node"))
    {
        assert!(Instant::now() < deadline, "{pid} never ran node");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn servers_already_running_when_the_daemon_starts_are_found() {
    let _serial = serial();
    let fx = Fixture::new("enforce");
    // Started while no daemon watches (before this one starts).
    let mut server = start_unmanaged(&fx);
    let pid = server.id();
    wait_for_node(pid);
    let d = daemon(&fx, "kill");
    let (kill, found) = killed(&d, &mut server);
    assert_eq!(kill["found"], "start", "{kill}");
    assert_eq!(
        found.iter().filter(|e| e["pid"] == pid).count(),
        1,
        "reported once: {found:?}"
    );
}
