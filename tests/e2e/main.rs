//! End-to-end tests: the real `mcpwarden` binary, real kernel programs, a real
//! MCP server and the official Python SDK client. Run as root after
//! `./setup.sh` (which creates /opt/mcpwarden-dev/venv with the `mcp` package).
//!
//! Tests that load kernel programs and check that none are left behind run
//! one at a time (see [`serial`]).
mod certificates;
mod cli;
mod conformance;
mod daemon;
mod daemon_sessions;
mod daemon_store;
mod dashboard;
mod evasion;
mod files;
mod hardening;
mod http;
mod http_hardening;
mod identity;
mod network;
mod packaging;
mod pins;
mod policy;
mod psi;
mod registry;
mod servers;
mod shared_tracer;
mod support;
mod unmanaged;

use serde_json::{Value, json};
use support::{Fixture, Run, assert_nothing_left_behind, events, mcpwarden, serial};

#[test]
fn doctor_probes_the_kernel_and_exits_by_what_is_missing() {
    let _guard = serial();
    let out = mcpwarden()
        .args(["doctor", "--json"])
        .output()
        .expect("run doctor");
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let checks = report["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    for want in [
        "cgroup v2",
        "cgroup.kill",
        "tracepoints",
        "ring buffer",
        "bpf_send_signal",
        "raw syscall hooks",
        "cgroup sock_addr",
        "cgroup sock_ops",
        "BPF-LSM",
        "fentry",
        "landlock",
        "seccomp",
        "seccomp notify",
        "bpffs pins",
    ] {
        assert!(
            names.contains(&want),
            "doctor does not report {want}: {names:?}"
        );
    }
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| c["required"] == json!(true) && c["available"] == json!(false))
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        out.status.success(),
        missing.is_empty(),
        "exit status must say whether {missing:?} is empty"
    );
    // The ring buffer probe reads an event back: only a working kernel path
    // can produce it.
    let ring = checks
        .iter()
        .find(|c| c["name"] == "ring buffer")
        .expect("ring buffer check");
    assert_eq!(ring["available"], json!(true), "{ring}");
    let landlock = checks
        .iter()
        .find(|c| c["name"] == "landlock")
        .expect("landlock check");
    assert!(
        landlock["detail"]
            .as_str()
            .expect("detail")
            .starts_with("ABI "),
        "{landlock}"
    );
    assert_nothing_left_behind(None);
}

#[test]
fn enforce_mode_attributes_events_and_kills_the_tree_on_a_denied_open() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let scenario = json!([
        {"list_tools": true},
        {"call": "whoami"},
        {"call": "spawn_sleeper"},
        {"procs": true},
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"call": "read_file", "args": {"path": fx.secret()}},
        {"check_gone": true},
        {"call": "read_file", "args": {"path": fx.allowed()}},
    ]);
    let direct = Run::direct(&json!([{"list_tools": true}]));
    let run = Run::through_mcpwarden(&fx, &scenario);

    // initialize and tools/list pass through unchanged.
    assert_eq!(run.out["initialize"], direct.out["initialize"]);
    assert_eq!(run.step(0)["list_tools"], direct.step(0)["list_tools"]);

    let cgroup = run.session_cgroup(1);
    // Host pids in the traced cgroup: the server and its sleeper (the
    // helper and the namespace init stay outside it).
    let procs = run.procs(3);
    assert_eq!(procs.len(), 2, "{procs:?}");

    // The allowed read succeeds and its open carries that call's id.
    assert_eq!(run.text(4), "the allowed file\n");
    let allowed_id = run.request_id("read_file", &fx.allowed());
    let ev = events(&fx.events)
        .into_iter()
        .find(|e| e["kind"] == "open" && e["path"] == json!(fx.allowed()))
        .expect("an open event for the allowed file");
    assert_eq!(ev["request_id"], allowed_id, "{ev}");
    assert_eq!(
        (&ev["method"], &ev["tool"], &ev["action"]),
        (&json!("tools/call"), &json!("read_file"), &json!("allow"))
    );
    assert!(
        procs.contains(&ev["pid"].as_u64().expect("pid")),
        "{ev} not from {procs:?}"
    );

    // The denied read fails with an error naming the rule.
    let err = &run.step(5)["error"];
    assert_eq!(err["code"], json!(-32001), "{err}");
    let msg = err["message"].as_str().expect("message");
    assert!(
        msg.contains("files.deny[0]") && msg.contains(&fx.secret()),
        "{msg}"
    );
    assert!(
        !run.raw.contains("the secret"),
        "secret content reached the client"
    );

    // The whole tree is gone: the server and the child it spawned.
    let gone = run.step(6);
    let watched = gone["watched"].as_array().expect("watched").len();
    assert_eq!(watched, procs.len(), "{gone}");
    assert_eq!(gone["alive"], json!([]), "{gone}");

    // Later requests get a clear error.
    let later = &run.step(7)["error"];
    assert_eq!(later["code"], json!(-32002), "{later}");
    assert!(
        later["message"]
            .as_str()
            .expect("message")
            .contains("no longer running"),
        "{later}"
    );

    let kill = events(&fx.events)
        .into_iter()
        .find(|e| e["path"] == json!(fx.secret()))
        .expect("an event for the denied open");
    assert_eq!(kill["action"], json!("killed"), "{kill}");
    assert_eq!(kill["detected_by"], json!("kernel"), "{kill}");
    assert_eq!(
        kill["request_id"],
        run.request_id("read_file", &fx.secret()),
        "{kill}"
    );
    assert!(
        kill["rule"]
            .as_str()
            .expect("rule")
            .starts_with("files.deny[0]"),
        "{kill}"
    );

    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn monitor_mode_records_the_same_open_without_killing() {
    let _guard = serial();
    let fx = Fixture::new("monitor");
    let scenario = json!([
        {"call": "whoami"},
        {"call": "read_file", "args": {"path": fx.secret()}},
        {"call": "read_file", "args": {"path": fx.allowed()}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "the secret\n");
    assert_eq!(run.text(2), "the allowed file\n");
    let ev = events(&fx.events)
        .into_iter()
        .find(|e| e["path"] == json!(fx.secret()))
        .expect("an event for the denied open");
    assert_eq!(ev["action"], json!("alert"), "{ev}");
    assert_eq!(
        ev["request_id"],
        run.request_id("read_file", &fx.secret()),
        "{ev}"
    );
    assert!(events(&fx.events).iter().all(|e| e["action"] != "killed"));
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn paths_the_kernel_cannot_match_are_caught_before_the_response_leaves() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    // `<dir>/../<dir>/key` names the secret but does not start with the
    // denied prefix, so only the user-space check (on the resolved path)
    // sees it. The response must not get out ahead of that check.
    let sneaky = fx.sneaky_secret();
    let scenario = json!([
        {"call": "whoami"},
        {"call": "read_file", "args": {"path": sneaky}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    let err = &run.step(1)["error"];
    assert_eq!(err["code"], json!(-32001), "{err}");
    assert!(
        !run.raw.contains("the secret"),
        "secret content reached the client: {}",
        run.raw
    );
    let ev = events(&fx.events)
        .into_iter()
        .find(|e| e["path"] == json!(sneaky))
        .expect("event");
    assert_eq!(
        (&ev["action"], &ev["detected_by"]),
        (&json!("killed"), &json!("agent")),
        "{ev}"
    );
    assert_eq!(ev["resolved_path"], json!(fx.secret()), "{ev}");
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn exec_and_connect_events_carry_their_calls() {
    let _guard = serial();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    // The sandbox grants exactly this port (and with it, the host network).
    let fx = Fixture::with_sandbox(
        "enforce",
        &format!("[sandbox.network]\nconnect = [{port}]\n"),
    );
    let scenario = json!([
        {"call": "whoami"},
        {"call": "run", "args": {"argv": ["/bin/cat", fx.allowed()]}},
        {"call": "connect", "args": {"host": "127.0.0.1", "port": port}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "the allowed file\n");
    assert_eq!(run.text(2), "connected");
    let all = events(&fx.events);
    let exec = all
        .iter()
        .find(|e| e["kind"] == "exec" && e["path"] == "/bin/cat")
        .expect("exec of /bin/cat");
    assert_eq!(
        (&exec["tool"], &exec["comm"]),
        (&json!("run"), &json!("cat")),
        "{exec}"
    );
    let run_id = run.call_id("run", 0);
    assert_eq!(exec["request_id"], run_id);
    let cat_open = all
        .iter()
        .find(|e| e["kind"] == "open" && e["comm"] == "cat" && e["path"] == json!(fx.allowed()))
        .expect("cat's open of the file");
    assert_eq!(
        cat_open["request_id"], run_id,
        "child processes are attributed too"
    );
    let connect = all
        .iter()
        .find(|e| e["kind"] == "connect" && e["addr"] == json!(format!("127.0.0.1:{port}")))
        .expect("connect");
    assert_eq!(connect["tool"], json!("connect"), "{connect}");
    let connect_id = run.call_id("connect", 0);
    assert_eq!(connect["request_id"], connect_id);
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn raw_stdio_is_relayed_byte_for_byte_and_bad_lines_get_json_rpc_errors() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let lines = [
        init,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":"two","method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
    ];
    let direct = support::raw_exchange(None, &lines, &[]);
    let extra = [
        "{not json",
        "[]",
        r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#,
    ];
    let proxied = support::raw_exchange(Some(&fx), &lines, &extra);
    // Everything the server said comes through identical and in order.
    assert_eq!(
        proxied[..direct.len()],
        direct[..],
        "server output changed in transit"
    );
    // mcpwarden answers the bad lines itself, and the session goes on.
    let own: Vec<Value> = proxied[direct.len()..]
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(own.len(), 3, "{own:?}");
    assert_eq!(
        (&own[0]["error"]["code"], &own[0]["id"]),
        (&json!(-32700), &Value::Null),
        "{own:?}"
    );
    assert_eq!(
        (&own[1]["error"]["code"], &own[1]["id"]),
        (&json!(-32600), &Value::Null),
        "{own:?}"
    );
    assert_eq!(
        own[2],
        json!({"jsonrpc": "2.0", "id": 4, "result": {}}),
        "{own:?}"
    );
    assert_nothing_left_behind(None);
}

#[test]
fn sessions_left_by_a_killed_mcpwarden_are_reaped_at_the_next_start() {
    let _guard = serial();
    // A session cgroup owned by a pid that no longer exists, with a live
    // process inside, as a SIGKILLed mcpwarden would leave it.
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = gone.id();
    gone.wait().expect("wait");
    let stale = support::cgroup_root().join(format!("mcpwarden/session-{dead_pid}-deadbeef"));
    std::fs::create_dir_all(&stale).expect("create the stale cgroup");
    let mut orphan = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep");
    std::fs::write(stale.join("cgroup.procs"), orphan.id().to_string()).expect("move sleep in");

    let fx = Fixture::new("enforce");
    let run = Run::through_mcpwarden(&fx, &json!([{"call": "whoami"}]));
    let cgroup = run.session_cgroup(0);
    assert!(
        !stale.exists(),
        "stale session {} was not reaped",
        stale.display()
    );
    let status = orphan.wait().expect("wait for the orphan");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    assert_nothing_left_behind(Some(&cgroup));
}
