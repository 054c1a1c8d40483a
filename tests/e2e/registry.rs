//! The tool registry end to end: the real server's tools are pinned on
//! first use; a new tool, a re-described tool (rug pull) and a changed
//! server script are caught on the next session; a tool named like another
//! server's is reported; `mcpwarden tools approve` lets them through.
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{Fixture, Run, events, run_command, serial};

fn tool_names(run: &Run, step: usize) -> Vec<String> {
    run.step(step)["list_tools"]["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn session(fx: &Fixture, scenario: &Value, server_flags: &[&str]) -> Run {
    let _ = std::fs::remove_file(&fx.events);
    let events = fx.events.display().to_string();
    let mut server = fx.server_cmd();
    server.extend(server_flags.iter().map(|f| (*f).to_owned()));
    Run::client(scenario, run_command(fx, &["--events", &events], server))
}

fn pin_records(fx: &Fixture) -> Vec<Value> {
    events(&fx.events)
        .into_iter()
        .filter(|e| e["kind"] == "pin")
        .collect()
}

fn tools_cmd(fx: &Fixture, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
        .arg("tools")
        .args(args)
        .arg("--state")
        .arg(fx.state())
        .output()
        .expect("run mcpwarden tools");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const ALLOW_ALL: &str = "[spec.tools]\ndefault = \"allow\"\n";

#[test]
fn new_and_changed_tools_are_quarantined_until_approved() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", ALLOW_ALL);
    let scenario =
        json!([{"list_tools": true}, {"call": "read_file", "args": {"path": fx.allowed()}}]);
    // First use: pinned as listed.
    let first = session(&fx, &scenario, &[]);
    assert!(tool_names(&first, 0).contains(&"read_file".to_owned()));
    assert_eq!(first.text(1), "the allowed file\n");
    assert!(pin_records(&fx).is_empty(), "{:?}", pin_records(&fx));
    // A new tool appears: left out of the list, its calls refused.
    let with_add = json!([{"list_tools": true}, {"call": "add", "args": {"a": 1, "b": 2}}]);
    let second = session(&fx, &with_add, &["--poisoned-tool"]);
    assert!(
        !tool_names(&second, 0).contains(&"add".to_owned()),
        "{}",
        second.raw
    );
    let err = &second.step(1)["error"];
    assert_eq!(err["code"], -32001, "{}", second.raw);
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("quarantined"),
        "{err}"
    );
    let recs = pin_records(&fx);
    assert_eq!(recs[0]["change"], "new", "{recs:?}");
    assert_eq!(recs[0]["tool"], "add");
    assert_eq!(recs[0]["action"], "quarantined");
    // read_file re-described (rug pull): quarantined too, with the field named.
    let third = session(&fx, &scenario, &["--rug-pull"]);
    assert!(
        !tool_names(&third, 0).contains(&"read_file".to_owned()),
        "{}",
        third.raw
    );
    assert_eq!(third.step(1)["error"]["code"], -32001, "{}", third.raw);
    assert!(
        !third.raw.contains("aws/credentials"),
        "the poisoned description reached the client"
    );
    let recs = pin_records(&fx);
    assert_eq!(
        (recs[0]["change"].as_str(), recs[0]["tool"].as_str()),
        (Some("changed"), Some("read_file"))
    );
    assert_eq!(recs[0]["fields"], json!(["description"]));
    let (ok, listing) = tools_cmd(&fx, &["list", "--server", "test-files"]);
    assert!(ok, "{listing}");
    assert!(listing.contains("add\tpending (new tool)"), "{listing}");
    assert!(
        listing.contains("read_file\tpending (changed: description)"),
        "{listing}"
    );
    // Approving `add` lets it through; read_file stays quarantined.
    let (ok, out) = tools_cmd(&fx, &["approve", "--server", "test-files", "add"]);
    assert!(ok && out.contains("approved add"), "{out}");
    let fourth = session(&fx, &with_add, &["--poisoned-tool"]);
    assert!(
        tool_names(&fourth, 0).contains(&"add".to_owned()),
        "{}",
        fourth.raw
    );
    assert_eq!(fourth.text(1), "3");
    let (ok, out) = tools_cmd(&fx, &["approve", "--server", "test-files", "nope"]);
    assert!(!ok && out.contains("no pinned tool \"nope\""), "{out}");
    // The approval is in the audit log, and the chain verifies.
    let audit = |what: &str| {
        Command::new(env!("CARGO_BIN_EXE_mcpwarden"))
            .args(["audit", what, "--state"])
            .arg(fx.state())
            .output()
            .expect("run mcpwarden audit")
    };
    let shown = String::from_utf8_lossy(&audit("show").stdout).into_owned();
    let record: Value = serde_json::from_str(shown.trim()).expect("one audit record");
    assert_eq!(record["action"], "tools.approve");
    assert_eq!(record["detail"]["tools"], serde_json::json!(["add"]));
    assert!(audit("verify").status.success());
}

#[test]
fn a_changed_server_script_does_not_start_until_approved() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", ALLOW_ALL);
    let scenario = json!([{"call": "read_file", "args": {"path": fx.allowed()}}]);
    assert_eq!(session(&fx, &scenario, &[]).text(0), "the allowed file\n");
    let script = fx.dir().join("server.py");
    let mut text = std::fs::read_to_string(&script).expect("read");
    text.push_str("\n# changed after approval\n");
    std::fs::write(&script, text).expect("write");
    let mut argv = run_command(&fx, &[], fx.server_cmd());
    let out = Command::new(argv.remove(0))
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the executable of server \"test-files\" changed since it was approved")
            && err.contains("server.py")
            && err.contains("mcpwarden tools approve --server test-files"),
        "{err}"
    );
    let (ok, out) = tools_cmd(&fx, &["approve", "--server", "test-files"]);
    assert!(ok && out.contains("(executable)"), "{out}");
    assert_eq!(session(&fx, &scenario, &[]).text(0), "the allowed file\n");
}

#[test]
fn a_tool_named_like_another_servers_is_reported() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", ALLOW_ALL);
    let scenario = json!([{"list_tools": true}]);
    session(&fx, &scenario, &[]);
    fx.write_v1_policy("other-files", "enforce", ALLOW_ALL);
    let run = session(&fx, &scenario, &[]);
    // Alerted by default: still listed, and every shared name reported.
    assert!(tool_names(&run, 0).contains(&"read_file".to_owned()));
    let recs = pin_records(&fx);
    let shadowed: Vec<&str> = recs
        .iter()
        .filter(|r| r["change"] == "shadows" && r["other"] == "test-files")
        .filter_map(|r| r["tool"].as_str())
        .collect();
    assert!(shadowed.contains(&"read_file"), "{recs:?}");
    assert!(recs.iter().all(|r| r["action"] == "alert"), "{recs:?}");
    // With shadowing = "quarantine" the names are withheld.
    fx.write_v1_policy(
        "third-files",
        "enforce",
        &format!("{ALLOW_ALL}shadowing = \"quarantine\"\n"),
    );
    let run = session(&fx, &scenario, &[]);
    assert!(
        !tool_names(&run, 0).contains(&"read_file".to_owned()),
        "{}",
        run.raw
    );
}
