//! File-system and process events beyond open/exec/connect: mkdir, chmod,
//! rename, symlink, link, truncate, unlink, rmdir, chown, fork and exit, each
//! with its paths and argument, attributed to the call that caused it; a
//! mutation under a denied prefix kills like an open; processes outside the
//! session produce none of them.
use std::{os::unix::fs::PermissionsExt as _, path::Path};

use serde_json::{Value, json};

use crate::support::{Fixture, Run, assert_nothing_left_behind, events, serial};

/// `secret_writable`: whether the sandbox grants writes under the denied
/// prefix too (a policy mistake the kernel kill alone cannot undo).
fn fixture_with(secret_writable: bool) -> (Fixture, String, tempfile::TempDir) {
    let fx = Fixture::with_sandbox("enforce", "");
    let out = fx.dir().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(
        fx.dir().join("secret"),
        std::fs::Permissions::from_mode(0o777),
    )
    .expect("chmod");
    let text = std::fs::read_to_string(&fx.policy).expect("policy");
    let mut grants = vec![out.display().to_string()];
    if secret_writable {
        grants.push(fx.dir().join("secret").display().to_string());
    }
    let write = grants
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = text.replace("[sandbox]\n", &format!("[sandbox]\nwrite = [{write}]\n"));
    std::fs::write(&fx.policy, text).expect("policy");
    let host = tempfile::tempdir().expect("host dir");
    (fx, out.display().to_string(), host)
}

fn fixture() -> (Fixture, String, tempfile::TempDir) {
    fixture_with(false)
}

#[test]
fn file_and_process_events_carry_their_calls() {
    let _guard = serial();
    let (fx, out, host) = fixture();
    let scenario = json!([
        {"call": "whoami"},
        {"call": "fs_ops", "args": {"directory": out}},
        {"host_ops": host.path()},
        {"call": "run", "args": {"argv": ["/bin/sh", "-c", "exit 7"]}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.text(1), "done");
    let (fs_id, run_id) = (run.call_id("fs_ops", 0), run.call_id("run", 0));
    let all = events(&fx.events);
    let find = |kind: &str, path: &str| -> Value {
        all.iter()
            .find(|e| e["kind"] == kind && e["path"] == json!(path))
            .unwrap_or_else(|| panic!("no {kind} event for {path}"))
            .clone()
    };
    let expect = [
        ("mkdir", format!("{out}/sub"), "mode", json!("750")),
        ("chmod", format!("{out}/sub"), "mode", json!("700")),
        (
            "rename",
            format!("{out}/a"),
            "to",
            json!(format!("{out}/b")),
        ),
        ("symlink", format!("{out}/ln"), "target", json!("b")),
        (
            "link",
            format!("{out}/b"),
            "to",
            json!(format!("{out}/hard")),
        ),
        ("truncate", format!("{out}/b"), "length", json!(0)),
        ("unlink", format!("{out}/hard"), "dir", json!(false)),
        ("unlink", format!("{out}/sub"), "dir", json!(true)),
        ("chown", format!("{out}/b"), "owner", json!(65534)),
    ];
    for (kind, path, key, value) in expect {
        let e = find(kind, &path);
        assert_eq!(e[key], value, "{e}");
        assert_eq!(
            (&e["request_id"], &e["tool"], &e["action"]),
            (&fs_id, &json!("fs_ops"), &json!("allow")),
            "{e}"
        );
        assert_eq!(e["uid"], json!(65534), "{e}");
    }
    let fork = all
        .iter()
        .find(|e| e["kind"] == "fork" && e["request_id"] == run_id)
        .expect("a fork for the run call");
    let child = fork["child"].clone();
    let exit = all
        .iter()
        .find(|e| e["kind"] == "exit" && e["pid"] == child)
        .expect("the child's exit");
    assert_eq!(
        (&exit["code"], &exit["request_id"]),
        (&json!(7), &run_id),
        "{exit}"
    );
    // The program the call ran: its command line and who started it.
    let exec = all
        .iter()
        .find(|e| e["kind"] == "exec" && e["pid"] == child)
        .expect("the child's exec");
    assert_eq!(exec["argv"], json!(["/bin/sh", "-c", "exit 7"]), "{exec}");
    assert_eq!(
        (&exec["ppid"], &exec["request_id"]),
        (&fork["pid"], &run_id),
        "{exec}"
    );
    let host_dir = host.path().display().to_string();
    let leaked: Vec<&Value> = all
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with(&host_dir)))
        .collect();
    assert!(
        leaked.is_empty(),
        "events from a process outside the session: {leaked:?}"
    );
    assert_nothing_left_behind(Some(&cgroup));
}

/// Runs `fs_ops` on the denied directory and checks the call failed;
/// returns the fixture, the session cgroup and the kill event.
fn fs_ops_on_secret(secret_writable: bool) -> (Fixture, std::path::PathBuf, Value) {
    let (fx, _out, _host) = fixture_with(secret_writable);
    let secret = fx.dir().join("secret").display().to_string();
    let scenario = json!([{"call": "whoami"}, {"call": "fs_ops", "args": {"directory": secret}}]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(
        run.step(1)["error"]["code"],
        json!(-32001),
        "{}",
        run.step(1)
    );
    let kill = events(&fx.events)
        .into_iter()
        .find(|e| e["action"] == "killed")
        .expect("a kill");
    assert_eq!(
        (&kill["kind"], &kill["path"]),
        (&json!("mkdir"), &json!(format!("{secret}/sub"))),
        "{kill}"
    );
    (fx, cgroup, kill)
}

#[test]
fn a_mutation_under_a_denied_prefix_is_refused_and_kills() {
    let _guard = serial();
    let (fx, cgroup, _kill) = fs_ops_on_secret(false);
    // The sandbox refused the write itself (read-only there); the kernel
    // killed the tree for trying.
    assert!(
        !fx.dir().join("secret/sub").exists(),
        "the denied mkdir must not have happened"
    );
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn a_denied_prefix_inside_a_writable_grant_is_killed_after_the_fact() {
    // The kernel's kill is sent at syscall entry and delivered on return:
    // an open never gets to read, but a mutation completes. Only the
    // sandbox prevents it, so the policy warns about this overlap.
    let _guard = serial();
    let (fx, cgroup, _kill) = fs_ops_on_secret(true);
    assert!(
        fx.dir().join("secret/sub").exists(),
        "the mutation lands before the kill (this is what the warning is about)"
    );
    assert!(
        !fx.dir().join("secret/a").exists(),
        "but nothing after it: the server died on return from mkdir"
    );
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn a_rename_into_a_denied_directory_kills_like_an_open() {
    // The destination of a rename is checked against the denied prefixes
    // as well as its source: moving a file into the secret directory is
    // as denied as reading from it.
    let _guard = serial();
    let (fx, out, _host) = fixture_with(false);
    let source = format!("{out}/draft.txt");
    let destination = fx.dir().join("secret/planted").display().to_string();
    let scenario = json!([
        {"call": "whoami"},
        {"call": "run", "args": {"argv": ["/bin/sh", "-c", format!("echo x > {source}")]}},
        {"call": "move", "args": {"source": source, "destination": destination}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    let blocked = &run.step(2)["error"];
    assert_eq!(blocked["code"], json!(-32001), "{}", run.raw);
    assert!(
        blocked["message"]
            .as_str()
            .is_some_and(|m| m.contains("files.deny[0]") && m.contains("secret/planted")),
        "{blocked}"
    );
    let kill = events(&fx.events)
        .into_iter()
        .find(|e| e["action"] == "killed")
        .expect("a kill");
    assert_eq!(
        (&kill["kind"], &kill["path"], &kill["to"]),
        (&json!("rename"), &json!(source), &json!(destination)),
        "{kill}"
    );
    // The verdict names the path that matched: the destination.
    assert_eq!(kill["resolved_path"], json!(destination), "{kill}");
    assert_eq!(kill["detected_by"], json!("kernel"), "{kill}");
    assert!(
        !Path::new(&destination).exists(),
        "the sandbox refused the move itself"
    );
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn a_flood_of_events_is_rate_limited_but_verdicts_are_not() {
    // [kernel] events_per_second caps the plain events a session reports;
    // a kill is a verdict and always gets through.
    let _guard = serial();
    let fx = Fixture::with_sandbox("enforce", "[kernel]\nevents_per_second = 1000\n");
    let flood = "i=0; while [ $i -lt 5000 ]; do : < /etc/hostname; i=$((i+1)); done";
    let scenario = json!([
        {"call": "whoami"},
        {"call": "run", "args": {"argv": ["/bin/sh", "-c", flood]}},
        {"call": "read_file", "args": {"path": fx.secret()}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    assert_eq!(run.step(2)["error"]["code"], json!(-32001), "{}", run.raw);
    let evs = events(&fx.events);
    let reported = evs
        .iter()
        .filter(|e| e["kind"] == "open" && e["path"] == "/etc/hostname")
        .count();
    assert!(
        reported < 2500,
        "5,000 opens at 1,000 events/s: most must be left out, {reported} reported"
    );
    let kill = evs
        .iter()
        .find(|e| e["action"] == "killed")
        .expect("the kill is reported despite the limit");
    assert_eq!(kill["path"], json!(fx.secret()), "{kill}");
    assert_nothing_left_behind(Some(&cgroup));
}

#[test]
fn failed_calls_carry_their_error() {
    let _guard = serial();
    // Failed calls are watched at syscall exit only when the policy asks.
    let fx = Fixture::with_sandbox("enforce", "[kernel]\ncall_results = true\n");
    let missing = fx.dir().join("missing.txt").display().to_string();
    let scenario = json!([
        {"call": "whoami"},
        {"call": "read_file", "args": {"path": missing}},
        {"call": "run", "args": {"argv": ["/nonexistent/tool", "--flag"]}},
        {"call": "read_file", "args": {"path": fx.allowed()}},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let cgroup = run.session_cgroup(0);
    let id = |tool: &str| run.call_id(tool, 0);
    let all = events(&fx.events);
    // The open of a missing file carries its error: on the open event when
    // the failure came in the same drain, else as a failure of its own
    // (the proxy drains every few milliseconds and before every message).
    let missing_open: Vec<&Value> = all
        .iter()
        .filter(|e| {
            e["path"] == json!(missing)
                && (e["kind"] == "open" || (e["kind"] == "failed" && e["call"] == "openat"))
        })
        .collect();
    assert!(
        missing_open.iter().any(|e| e["error"] == "ENOENT"),
        "{missing_open:?}"
    );
    for e in &missing_open {
        assert_eq!(e["request_id"], id("read_file"), "{e}");
    }
    // An exec that failed has no exec event: it is a failure of its own.
    let exec = all
        .iter()
        .find(|e| e["kind"] == "failed" && e["path"] == "/nonexistent/tool")
        .unwrap_or_else(|| panic!("no failed exec in {all:#?}"));
    assert_eq!(exec["call"], "execve", "{exec}");
    assert_eq!(exec["error"], "ENOENT", "{exec}");
    assert_eq!(exec["request_id"], id("run"));
    // An open that worked carries no error.
    let ok: Vec<&Value> = all
        .iter()
        .filter(|e| e["kind"] == "open" && e["path"] == json!(fx.allowed()))
        .collect();
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert!(ok[0].get("error").is_none(), "{}", ok[0]);
    assert_nothing_left_behind(Some(&cgroup));

    // By default the attempt is reported, without its outcome.
    let fx = Fixture::new("enforce");
    let missing = fx.dir().join("missing.txt").display().to_string();
    let run = Run::through_mcpwarden(
        &fx,
        &json!([{"call": "whoami"}, {"call": "read_file", "args": {"path": missing}}]),
    );
    let all = events(&fx.events);
    let open = all
        .iter()
        .find(|e| e["kind"] == "open" && e["path"] == json!(missing))
        .unwrap_or_else(|| panic!("no open of {missing} in {all:#?}"));
    assert!(open.get("error").is_none(), "{open}");
    assert_eq!(open["request_id"], run.call_id("read_file", 0));
    assert!(!all.iter().any(|e| e["kind"] == "failed"), "{all:#?}");
    assert_nothing_left_behind(Some(&run.session_cgroup(0)));
}
