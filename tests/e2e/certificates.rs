//! X.509 client certificates end to end: `mcpwarden ca` creates the
//! host's CA and issues a certificate for a registered identity; `run
//! --listen --tls` serves HTTPS; the official Python SDK client proves its
//! identity with the certificate (no token), and a policy rule reads it.
//! A client without a certificate is refused when the policy requires an
//! identity, another CA's certificate fails the handshake, and a revoked
//! certificate is refused by an endpoint that was already running.
use std::{path::Path, process::Command};

use serde_json::{Value, json};

use crate::support::{
    Endpoint, Fixture, Run, admin_cli, audit_actions, events, mcpwarden, python, serial,
};

fn ok(state: &Path, args: &[&str]) -> String {
    let (ok, out, err) = admin_cli(state, args);
    assert!(ok, "mcpwarden {args:?}: {err}");
    out
}

/// One `initialize` POST over HTTPS from Python (httpx, as the SDK uses):
/// `{"status": N}` or `{"error": "..."}` when TLS refused the connection.
const PROBE: &str = r#"
import json, ssl, sys, httpx2
url, ca, cert, key = sys.argv[1:5]
context = ssl.create_default_context(cafile=ca)
if cert:
    context.load_cert_chain(cert, key)
body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "probe", "version": "0"}}}
try:
    r = httpx2.post(url, json=body, verify=context, timeout=10,
                    headers={"Accept": "application/json, text/event-stream"})
    print(json.dumps({"status": r.status_code}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"#;

fn probe(url: &str, ca: &Path, cert: Option<(&Path, &Path)>) -> Value {
    let (c, k) = cert.map_or((String::new(), String::new()), |(c, k)| {
        (c.display().to_string(), k.display().to_string())
    });
    let out = Command::new(python())
        .args(["-c", PROBE, url])
        .arg(ca)
        .args([c, k])
        .output()
        .expect("run python");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const BUILDERS_ONLY: &str = r#"[spec.identity]
require = "identity"
[spec.tools]
default = "block"
[[spec.tools.rules]]
name = "whoami"
when = '"builder" in agent.roles && agent.identity == "ci-bot"'
action = "allow"
"#;

/// The files a test client holds: the host CA's certificate, the
/// identity's certificate and key, and a certificate for the same name
/// from another host's CA.
struct Files {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    foreign_cert: std::path::PathBuf,
    foreign_key: std::path::PathBuf,
}

/// `ca init`, `agent register ci-bot`, `ca issue ci-bot` on the fixture's
/// state, and the same on another host's state.
fn issue_certificates(fx: &Fixture) -> Files {
    let mut dirs = Vec::new();
    for (state, out) in [
        (fx.state(), fx.dir().join("certs")),
        (fx.dir().join("other-host"), fx.dir().join("other-certs")),
    ] {
        std::fs::create_dir_all(&out).expect("certs dir");
        ok(&state, &["ca", "init"]);
        ok(
            &state,
            &["agent", "register", "ci-bot", "--role", "builder"],
        );
        let out_flag = out.display().to_string();
        let issued = ok(&state, &["ca", "issue", "ci-bot", "--out", &out_flag]);
        assert!(issued.contains("ci-bot.crt"), "{issued}");
        dirs.push(out);
    }
    Files {
        ca: dirs[0].join("ca.crt"),
        cert: dirs[0].join("ci-bot.crt"),
        key: dirs[0].join("ci-bot.key"),
        foreign_cert: dirs[1].join("ci-bot.crt"),
        foreign_key: dirs[1].join("ci-bot.key"),
    }
}

/// Before `ca init`, --tls is a clear error, not an endpoint.
fn tls_without_a_ca_is_refused(fx: &Fixture) {
    let out = mcpwarden()
        .args(["run", "--policy"])
        .arg(&fx.policy)
        .args(["--listen", "127.0.0.1:1", "--tls", "--state"])
        .arg(fx.state())
        .arg("--")
        .args(fx.server_cmd())
        .output()
        .expect("run mcpwarden");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mcpwarden ca init"),
        "{err}"
    );
}

#[test]
fn a_client_certificate_proves_its_identity_over_https_until_revoked() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", BUILDERS_ONLY);
    tls_without_a_ca_is_refused(&fx);
    let files = issue_certificates(&fx);
    let state = fx.state();
    let state_flag = state.display().to_string();
    let events_flag = fx.events.display().to_string();
    let flags = [
        "--tls",
        "--events",
        events_flag.as_str(),
        "--state",
        state_flag.as_str(),
    ];
    let mut endpoint = Endpoint::start(&fx.policy, &flags, &fx.server_cmd());
    assert!(endpoint.url.starts_with("https://"), "{}", endpoint.url);
    // No certificate and no token: TLS lets it in, the policy does not.
    assert_eq!(
        probe(&endpoint.url, &files.ca, None),
        json!({"status": 401})
    );
    // Another CA's certificate fails the handshake.
    let foreign = probe(
        &endpoint.url,
        &files.ca,
        Some((&files.foreign_cert, &files.foreign_key)),
    );
    assert!(foreign["error"].is_string(), "{foreign}");
    // Plain HTTP to the HTTPS endpoint gets nowhere.
    let plain = probe(&endpoint.url.replace("https", "http"), &files.ca, None);
    assert!(plain["error"].is_string(), "{plain}");

    // The SDK client with the certificate: the rule sees its identity.
    let env = [
        ("MCP_TLS_CA", files.ca.to_str().expect("utf-8")),
        ("MCP_TLS_CERT", files.cert.to_str().expect("utf-8")),
        ("MCP_TLS_KEY", files.key.to_str().expect("utf-8")),
    ];
    let run = Run::over_http_env(
        &json!([{"call": "whoami"}, {"call": "whoami"}]),
        &endpoint.url,
        &env,
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
    assert!(
        events(&fx.events).iter().any(|r| r["kind"] == "identity"
            && r["action"] == "authenticated"
            && r["identity"] == "ci-bot"),
        "no authentication record"
    );

    // Revoked while an endpoint runs: refused within the 2 s recheck.
    let mut endpoint = Endpoint::start(&fx.policy, &flags, &fx.server_cmd());
    let mine = Some((files.cert.as_path(), files.key.as_path()));
    let before = probe(&endpoint.url, &files.ca, mine);
    assert_eq!(before["status"], json!(200), "{before}");
    let revoked = ok(&state, &["ca", "revoke", "ci-bot"]);
    assert!(revoked.contains("revoked certificate"), "{revoked}");
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    assert_eq!(
        probe(&endpoint.url, &files.ca, mine),
        json!({"status": 401})
    );
    let (_, log) = endpoint.finish(0);
    assert!(log.contains("was revoked"), "{log}");

    let actions = audit_actions(&state);
    for a in [
        "ca.init",
        "ca.server",
        "identity.register",
        "cert.issue",
        "identity.authenticate",
        "cert.revoke",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a}: {actions:?}");
    }
}
