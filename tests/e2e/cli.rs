//! The command line's answers to mistakes: bad policies name the file, line
//! and key; a server that cannot start gets a JSON-RPC error, not silence.
use std::io::Write as _;

use serde_json::Value;

use crate::support::{Fixture, mcpwarden, serial};

fn run_with_policy(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, text).expect("write");
    mcpwarden()
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--", "/bin/cat"])
        .output()
        .expect("run")
}

#[test]
fn bad_policies_are_refused_with_the_key_at_fault() {
    let out = run_with_policy("[sandbox]\nread = [\"relative/path\"]\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sandbox.read[0]") && err.contains("must be an absolute path"),
        "{err}"
    );

    let out = run_with_policy("mode = \"loud\"\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 1") && err.contains("expected `enforce` or `monitor`"),
        "{err}"
    );

    let out = run_with_policy("[network]\nallow = [\"example.com:443\"]\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network.allow[0]") && err.contains("names are not accepted"),
        "{err}"
    );

    let out = run_with_policy(
        "[network]
bind = [\"127.0.0.1\", \"localhost:80\"]
",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network.bind[1]") && err.contains("names are not accepted"),
        "{err}"
    );
}

#[test]
fn a_server_that_cannot_start_gets_a_json_rpc_error() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let mut child = mcpwarden()
        .args(["run", "--policy"])
        .arg(&fx.policy)
        .args(["--", "/no/such/server"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":1,"method":"ping"}}"#).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let reply: Value = serde_json::from_slice(&out.stdout).expect("one JSON-RPC reply");
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .expect("message")
            .contains("status 127"),
        "{reply}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot execute \"/no/such/server\""), "{err}");
}

#[test]
fn sandbox_explain_speaks_plainly() {
    let fx = Fixture::new("enforce");
    let out = mcpwarden()
        .args(["sandbox", "explain", "--policy"])
        .arg(&fx.policy)
        .output()
        .expect("explain");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("It can:") && text.contains("It cannot:"),
        "{text}"
    );
    assert!(text.contains("own empty network namespace"), "{text}");
    assert!(
        text.contains(&fx.dir().display().to_string()),
        "the grant of the fixture is listed: {text}"
    );
}
