//! Streamable HTTP on both sides of mcpwarden, with the official Python SDK
//! client and real servers: a stdio server served over HTTP, an HTTP server
//! relayed (started confined by mcpwarden), and a stdio client reaching an
//! HTTP server. Each keeps the kernel's verdicts: a denied open kills the
//! server and fails the call with the rule, whatever the transport.
use serde_json::{Value, json};

use crate::support::{
    Endpoint, Fixture, Run, assert_nothing_left_behind, events, free_port, serial,
};

/// Calls that exercise a server both ways: a tool, a server-to-client
/// sampling request in the middle of a call, then a denied open.
fn scenario(fx: &Fixture) -> Value {
    json!([
        {"call": "whoami"},
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"call": "ask_model", "args": {"prompt": "over http"}},
        {"call": "read_file", "args": {"path": fx.secret()}},
        {"call": "whoami"},
    ])
}

/// What the scenario must show, whatever the transports.
fn assert_protected(run: &Run, fx: &Fixture, policy_events: bool) {
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "the allowed file\n");
    assert_eq!(run.text(2), "model says: over http");
    let blocked = &run.step(3)["error"];
    assert_eq!(blocked["code"], -32001, "{}", run.raw);
    assert!(
        blocked["message"]
            .as_str()
            .is_some_and(|m| m.contains("files.deny[0]") && m.contains("was killed")),
        "{blocked}"
    );
    assert_eq!(run.step(4)["error"]["code"], -32002, "{}", run.raw);
    assert!(
        !run.raw.contains("the secret"),
        "the secret reached the client"
    );
    if policy_events {
        let id = run.request_id("read_file", &fx.secret());
        let kill = events(&fx.events)
            .into_iter()
            .find(|e| e["action"] == "killed")
            .expect("a kill event");
        assert_eq!(kill["path"], fx.secret());
        assert_eq!(kill["request_id"], id, "{kill}");
        assert_eq!(kill["tool"], "read_file", "{kill}");
    }
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn a_stdio_server_is_served_over_http_traced_and_killed() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let events_flag = fx.events.display().to_string();
    let mut endpoint = Endpoint::start(&fx.policy, &["--events", &events_flag], &fx.server_cmd());
    let run = Run::over_http(&scenario(&fx), &endpoint.url);
    // The SDK client ends its session with DELETE: mcpwarden ends the run.
    let (status, log) = endpoint.finish(10);
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("ended its MCP session (DELETE)"), "{log}");
    assert_protected(&run, &fx, true);
}

#[test]
fn an_http_server_is_relayed_confined_with_sse_and_json_answers() {
    let _guard = serial();
    for json_answers in [false, true] {
        let port = free_port();
        let fx = Fixture::with_sandbox("enforce", &format!("[sandbox.network]\nbind = [{port}]\n"));
        let events_flag = fx.events.display().to_string();
        let upstream = format!("http://127.0.0.1:{port}/mcp");
        let mut server = fx.server_cmd();
        server.extend(["--http".to_owned(), port.to_string()]);
        if json_answers {
            server.push("--json".to_owned());
        }
        let mut endpoint = Endpoint::start(
            &fx.policy,
            &["--events", &events_flag, "--upstream", &upstream],
            &server,
        );
        let run = Run::over_http(&scenario(&fx), &endpoint.url);
        // A relay serves many sessions: it runs until stopped.
        let (status, log) = endpoint.finish(0);
        assert!(status.success(), "{status}: {log}");
        assert_protected(&run, &fx, true);
    }
}

#[test]
fn a_stdio_client_reaches_a_confined_http_server() {
    let _guard = serial();
    let port = free_port();
    let fx = Fixture::with_sandbox("enforce", &format!("[sandbox.network]\nbind = [{port}]\n"));
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let mut server = fx.server_cmd();
    server.extend(["--http".to_owned(), port.to_string()]);
    let events_flag = fx.events.display().to_string();
    let run = Run::through_mcpwarden_with(
        &fx,
        &scenario(&fx),
        &["--events", &events_flag, "--upstream", &upstream],
        server,
    );
    assert_protected(&run, &fx, true);
}

#[test]
fn a_server_that_never_listens_is_reported_not_waited_for() {
    let _guard = serial();
    // No [sandbox.network] bind grant: the sandbox refuses the port.
    let fx = Fixture::new("enforce");
    let port = free_port();
    let mut server = fx.server_cmd();
    server.extend(["--http".to_owned(), port.to_string()]);
    let out = crate::support::mcpwarden()
        .args(["run", "--policy"])
        .arg(&fx.policy)
        .args(["--upstream", &format!("http://127.0.0.1:{port}/mcp"), "--"])
        .args(&server)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mcpwarden");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not start serving") && err.contains("exited with status"),
        "{err}"
    );
    assert_nothing_left_behind(None);
}
