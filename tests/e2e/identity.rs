//! Identity and trust end to end: API tokens registered with `mcpwarden
//! agent`, proven by the official Python SDK client over Streamable HTTP
//! (`Authorization: Bearer`) and on stdio (`MCPWARDEN_TOKEN`), read by
//! policy rules through `agent.identity` and `agent.roles`, refused once
//! revoked; trust moved by a real kernel kill and read back by a policy
//! rule in the next session; every administrative step in a verified
//! audit chain.
use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use crate::support::{
    Endpoint, Fixture, Run, admin_cli, audit_actions, events, run_command, serial,
};

fn cli(fx: &Fixture, args: &[&str]) -> (bool, String, String) {
    admin_cli(&fx.state(), args)
}

fn register(fx: &Fixture, name: &str, role: &str) -> String {
    let (ok, out, err) = cli(fx, &["agent", "register", name, "--role", role]);
    assert!(ok, "{err}");
    assert!(err.contains("shown once"), "{err}");
    out.trim().to_owned()
}

/// A raw `initialize` POST with these extra header lines; the response's
/// status line and headers.
fn raw_initialize(port: u16, extra: &str) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn records(fx: &Fixture, kind: &str) -> Vec<Value> {
    events(&fx.events)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

const BUILDERS_ONLY: &str = r#"[spec.identity]
require = "token"
[spec.tools]
default = "block"
[[spec.tools.rules]]
name = "whoami"
when = '"builder" in agent.roles && agent.identity == "ci-bot"'
action = "allow"
"#;

#[test]
fn an_http_client_proves_its_token_and_a_revoked_one_is_refused() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", BUILDERS_ONLY);
    let token = register(&fx, "ci-bot", "builder");
    assert!(token.starts_with("mcpw_"), "{token}");
    let state = fx.state().display().to_string();
    let events_flag = fx.events.display().to_string();
    let flags = ["--events", events_flag.as_str(), "--state", state.as_str()];

    let mut endpoint = Endpoint::start(&fx.policy, &flags, &fx.server_cmd());
    // No token, a malformed one, a wrong secret: 401 with a challenge.
    let flipped = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &token[..token.len() - 1]);
    for extra in [
        String::new(),
        "Authorization: Basic cm9vdDpyb290\r\n".to_owned(),
        format!("Authorization: Bearer {forged}\r\n"),
    ] {
        let answer = raw_initialize(endpoint.port, &extra);
        assert!(answer.starts_with("HTTP/1.1 401"), "{extra}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{answer}"
        );
    }
    // The SDK client with the token: the rule sees its identity and role.
    let run = Run::over_http_with_token(
        &json!([{"call": "whoami"}, {"call": "whoami"}]),
        &endpoint.url,
        &token,
    );
    let (status, log) = endpoint.finish(10);
    assert!(status.success(), "{status}: {log}");
    for step in 0..2 {
        assert!(
            run.step(step)["result"]["content"].is_array(),
            "{}",
            run.raw
        );
    }
    let proved = records(&fx, "identity");
    assert!(
        proved.iter().any(|r| r["action"] == "authenticated"
            && r["identity"] == "ci-bot"
            && r["roles"] == json!(["builder"])),
        "{proved:?}"
    );
    let refused = proved.iter().filter(|r| r["action"] == "refused").count();
    assert!(refused >= 1, "the forged token is recorded: {proved:?}");

    // Revoked: the same token no longer opens a session.
    let (ok, _, err) = cli(&fx, &["agent", "revoke", "ci-bot"]);
    assert!(ok, "{err}");
    let mut endpoint = Endpoint::start(&fx.policy, &flags, &fx.server_cmd());
    let answer = raw_initialize(endpoint.port, &format!("Authorization: Bearer {token}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let (_, log) = endpoint.finish(0);
    assert!(log.contains("was revoked"), "{log}");

    let (ok, out, _) = cli(&fx, &["agent", "list", "--json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).expect("json");
    assert!(list[0]["revoked"].is_u64(), "{list}");
    assert!(!out.contains(&token[21..]), "the secret is never stored");
    assert_eq!(
        audit_actions(&fx.state()),
        [
            "identity.register",
            "identity.authenticate",
            "identity.revoke"
        ]
    );
}

#[test]
fn a_stdio_client_proves_itself_with_mcpwarden_token() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", BUILDERS_ONLY);
    let token = register(&fx, "ci-bot", "builder");
    let command = run_command(&fx, &[], fx.server_cmd());
    let run = Run::client_env(
        &json!([{"call": "whoami"}]),
        command.clone(),
        &[("MCPWARDEN_TOKEN", token.as_str())],
    );
    assert!(run.step(0)["result"]["content"].is_array(), "{}", run.raw);
    // Without a token, or with a wrong one, the session never starts.
    for token in [None, Some("mcpw_0000000000000000_00")] {
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_remove("MCPWARDEN_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("MCPWARDEN_TOKEN", t);
        }
        let out = cmd.output().expect("run mcpwarden");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = if token.is_some() {
            "MCPWARDEN_TOKEN was refused"
        } else {
            "requires an API token"
        };
        assert!(err.contains(expected), "{err}");
    }
    assert_eq!(
        audit_actions(&fx.state()),
        ["identity.register", "identity.authenticate"]
    );
}

#[test]
fn a_kernel_kill_lowers_server_trust_and_the_next_session_reads_it() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy(
        "test-files",
        "enforce",
        r#"[spec.tools]
default = "block"
[[spec.tools.rules]]
name = "read_file"
action = "allow"
[[spec.tools.rules]]
name = "whoami"
when = "trust.server >= 0.4"
action = "allow"
"#,
    );
    let events_flag = fx.events.display().to_string();
    let session = || run_command(&fx, &["--events", &events_flag], fx.server_cmd());
    // A clean call, then a read of the denied file: the kernel kills.
    let run = Run::client(
        &json!([{"call": "whoami"}, {"call": "read_file", "args": {"path": fx.secret()}}]),
        session(),
    );
    assert!(run.step(0)["result"].is_object(), "{}", run.raw);
    assert_eq!(run.step(1)["error"]["code"], -32001, "{}", run.raw);
    let saved = records(&fx, "trust");
    assert_eq!(saved.len(), 1, "one trust record at the end: {saved:?}");
    assert_eq!(saved[0]["server"]["trust"]["events"]["kernel_kill"], 1);

    let (ok, out, err) = cli(&fx, &["trust", "show", "--json", "server:test-files"]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    let server = &shown[0];
    assert_eq!(server["events"]["clean_call"], 1, "{server}");
    assert_eq!(server["events"]["kernel_kill"], 1, "{server}");
    assert!(server["overall"].as_f64().expect("score") < 0.4, "{server}");
    let movers = server["recent"].as_array().expect("recent");
    assert!(
        movers
            .iter()
            .any(|m| m["event"] == "kernel_kill" && m["to"].as_f64() < m["from"].as_f64()),
        "{server}"
    );
    assert!(
        server["dimensions"]["security"]["score"]
            .as_f64()
            .expect("score")
            < 0.2
    );
    let (ok, out, _) = cli(&fx, &["trust", "show"]);
    assert!(
        ok && out.contains("agent:uid-0") && out.contains("kernel_kill moved it"),
        "{out}"
    );

    // The next session: the rule reads the lowered trust and blocks.
    let run = Run::client(&json!([{"call": "whoami"}]), session());
    assert_eq!(run.step(0)["error"]["code"], -32001, "{}", run.raw);
    // An administrator forgives the server (audited); calls pass again.
    let (ok, _, err) = cli(&fx, &["trust", "reset", "server:test-files"]);
    assert!(ok, "{err}");
    let run = Run::client(&json!([{"call": "whoami"}]), session());
    assert!(run.step(0)["result"].is_object(), "{}", run.raw);
    assert_eq!(audit_actions(&fx.state()), ["trust.reset"]);
}
