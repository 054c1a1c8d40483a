//! The policy engine end to end: the official Python SDK client calls a
//! real server through `mcpwarden run`; the policy's tool rules allow,
//! alert, block and kill calls, limit their rate, follow the global monitor
//! switch, and reload while the session runs. Also `mcpwarden policy check`
//! and `policy test` on the shipped profiles.
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{Fixture, Run, events, repo, run_command, serial};

fn records(fx: &Fixture, kind: &str) -> Vec<Value> {
    events(&fx.events)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn rules(fx: &Fixture) -> String {
    format!(
        r#"[spec.tools]
default = "block"
[[spec.tools.rules]]
name = "read_file"
when = 'path_under(args.path, "{public}")'
action = "allow"
rate = "2/min"
[[spec.tools.rules]]
name = "whoami"
action = "alert"
[[spec.tools.rules]]
name = "run"
when = '"rm" in args.argv'
action = "kill"
reason = "this server never deletes"
"#,
        public = fx.dir().join("public").display()
    )
}

#[test]
fn tool_rules_allow_alert_block_and_kill_real_calls() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", &rules(&fx));
    let note = fx.dir().join("public/note.txt");
    std::fs::write(&note, "a public note\n").expect("write");
    let note = note.display().to_string();
    let sneaky = fx.dir().join("public/../allowed.txt").display().to_string();
    let scenario = json!([
        {"call": "read_file", "args": {"path": note}},
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"call": "read_file", "args": {"path": sneaky}},
        {"call": "whoami"},
        {"call": "read_file", "args": {"path": note}},
        {"call": "read_file", "args": {"path": note}},
        {"call": "run", "args": {"argv": ["rm", "-rf", "/tmp/anything"]}},
        {"call": "whoami"},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    assert_eq!(run.text(0), "a public note\n");
    for (i, needle) in [
        (1, "no rule grants it (tools.default = \"block\")"),
        (2, "no rule grants it"),
        (
            5,
            "tools.rules[0] (name \"read_file\") allows 2/min; this call is over it",
        ),
        (
            6,
            "tools.rules[2] (name \"run\"): this server never deletes; the tool server's process tree was killed",
        ),
    ] {
        let err = &run.step(i)["error"];
        assert_eq!(err["code"], -32001, "step {i}: {}", run.raw);
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "step {i}: {message}");
    }
    // The alert passes; the third read in a minute is over the rate; after
    // the kill the server is gone.
    assert!(run.step(3)["result"].is_object(), "{}", run.raw);
    assert_eq!(run.text(4), "a public note\n");
    assert_eq!(run.step(7)["error"]["code"], -32002, "{}", run.raw);
    let recs = records(&fx, "policy");
    let got: Vec<(&str, &str, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default(),
                r["rule"].as_str().unwrap_or_default(),
                r["tool"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("blocked", "tools.default", "read_file"),
            ("blocked", "tools.default", "read_file"),
            ("alert", "tools.rules[1]", "whoami"),
            ("blocked", "tools.rules[0]", "read_file"),
            ("killed", "tools.rules[2]", "run"),
        ],
        "{recs:?}"
    );
    // Each record names the request, the server and the calling agent as
    // the host sees it: the SDK client's process.
    let blocked_id = run.request_id("read_file", &fx.allowed());
    assert_eq!(recs[0]["request"], blocked_id);
    assert_eq!(recs[0]["server"], "test-files");
    assert_eq!(recs[0]["agent"]["uid"], 0);
    assert!(
        recs[0]["agent"]["exe"]
            .as_str()
            .unwrap_or_default()
            .contains("python"),
        "{}",
        recs[0]
    );
    // A blocked call never reached the server: nothing opened the file.
    let allowed = std::fs::canonicalize(fx.allowed()).expect("path");
    let opened: Vec<Value> = events(&fx.events)
        .into_iter()
        .filter(|e| {
            e["kind"] == "open"
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("allowed.txt"))
        })
        .collect();
    assert!(
        opened.is_empty(),
        "{} was opened: {opened:?}",
        allowed.display()
    );
}

#[test]
fn the_global_monitor_switch_records_without_stopping() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    fx.write_v1_policy("test-files", "enforce", &rules(&fx));
    let events_flag = fx.events.display().to_string();
    let scenario = json!([
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"call": "run", "args": {"argv": ["rm", "-f", "/tmp/nothing-here"]}},
        {"call": "whoami"},
    ]);
    let run = Run::client(
        &scenario,
        run_command(
            &fx,
            &["--monitor", "--events", &events_flag],
            fx.server_cmd(),
        ),
    );
    assert_eq!(run.text(0), "the allowed file\n");
    assert!(run.step(1)["result"].is_object(), "{}", run.raw);
    assert!(
        run.step(2)["result"].is_object(),
        "the server was not killed: {}",
        run.raw
    );
    let recs = records(&fx, "policy");
    let got: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default(),
                r["wanted"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("alert", "block"), ("alert", "kill"), ("alert", "alert")],
        "{recs:?}"
    );
}

/// Waits until `pred` holds for the events file.
fn wait_for(fx: &Fixture, what: &str, pred: impl Fn(&[Value]) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if std::fs::metadata(&fx.events).is_ok() && pred(&events(&fx.events)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}: {:?}", events(&fx.events));
}

fn count(evs: &[Value], kind: &str, action: &str) -> usize {
    evs.iter()
        .filter(|e| e["kind"] == kind && e["action"] == action)
        .count()
}

#[test]
fn a_policy_reloads_in_a_live_session_and_a_bad_one_is_refused() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let strict = "[spec.tools]\ndefault = \"block\"\n";
    fx.write_v1_policy("test-files", "enforce", strict);
    let go = |n: usize| fx.dir().join(format!("go{n}")).display().to_string();
    let scenario = json!([
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"wait_file": go(1)},
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"wait_file": go(2)},
        {"call": "read_file", "args": {"path": fx.allowed()}},
        {"wait_file": go(3)},
    ]);
    let events_flag = fx.events.display().to_string();
    let command = run_command(&fx, &["--events", &events_flag], fx.server_cmd());
    let client = std::thread::spawn(move || Run::client(&scenario, command));
    wait_for(&fx, "the first blocked call", |e| {
        count(e, "policy", "blocked") == 1
    });
    // A broken policy is refused; the strict one stays in force.
    std::fs::write(&fx.policy, "apiVersion = \"mcpwarden.dev/v1\"\nkind = \"ServerPolicy\"\n[metadata]\nname = \"x\"\n[spec]\nmode = \"sometimes\"\n")
        .expect("write");
    wait_for(&fx, "the refusal", |e| {
        count(e, "policy_reload", "rejected") == 1
    });
    std::fs::write(go(1), "").expect("go");
    wait_for(&fx, "the second blocked call", |e| {
        count(e, "policy", "blocked") == 2
    });
    // A valid policy that grants the call applies at once.
    fx.write_v1_policy(
        "test-files",
        "enforce",
        "[spec.tools]\ndefault = \"block\"\n[[spec.tools.rules]]\nname = \"read_file\"\naction = \"allow\"\n",
    );
    wait_for(&fx, "the reload", |e| {
        count(e, "policy_reload", "applied") == 1
    });
    std::fs::write(go(2), "").expect("go");
    // SIGHUP reloads too.
    wait_for(&fx, "the third call", |e| {
        e.iter().any(|x| {
            x["kind"] == "open"
                && x["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("allowed.txt"))
        })
    });
    let pid =
        mcpwarden_pid_for(&fx.policy.display().to_string()).expect("mcpwarden run is running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    wait_for(&fx, "the SIGHUP reload", |e| {
        count(e, "policy_reload", "applied") == 2
    });
    std::fs::write(go(3), "").expect("go");
    let run = client.join().expect("client thread");
    assert_eq!(run.step(0)["error"]["code"], -32001, "{}", run.raw);
    assert_eq!(run.step(2)["error"]["code"], -32001, "{}", run.raw);
    assert_eq!(run.text(4), "the allowed file\n");
    let rejected = records(&fx, "policy_reload");
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("sometimes"),
        "{rejected:?}"
    );
}

/// The pid of the `mcpwarden run` whose command line names `policy`.
fn mcpwarden_pid_for(policy: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("mcpwarden"))
            && args.get(1).is_some_and(|a| a == "run")
            && args.iter().any(|a| a == policy)
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn shipped_profiles_check_and_pass_their_cases() {
    let dir = repo().join("policies");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("policies/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && !p.to_string_lossy().ends_with(".test.toml")
        })
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let bin = env!("CARGO_BIN_EXE_mcpwarden");
    let policy_cmd = |verb: &str| {
        let out = Command::new(bin)
            .args(["policy", verb])
            .args(&files)
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "policy {verb}: {text}{err}");
        text
    };
    let out = policy_cmd("check");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len(),
        "{out}"
    );
    let out = policy_cmd("test");
    assert!(out.contains(" 0 failed, 0 unusable"), "{out}");
    // A failing case fails the command and says why.
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = tmp.path().join("p.toml");
    std::fs::copy(dir.join("filesystem.toml"), &policy).expect("copy");
    std::fs::write(
        tmp.path().join("p.test.toml"),
        "[[case]]\nname = \"wrong on purpose\"\ntool = \"write_file\"\narguments = { path = \"/etc/passwd\", content = \"x\" }\nexpect = \"allow\"\n",
    )
    .expect("write");
    let test = Command::new(bin)
        .args(["policy", "test"])
        .arg(&policy)
        .output()
        .expect("run");
    let out = String::from_utf8_lossy(&test.stdout);
    assert_eq!(test.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAIL") && out.contains("wrong on purpose: expected allow, got"),
        "{out}"
    );
    // A broken policy: exit 1, file, line and key.
    std::fs::write(&policy, "apiVersion = \"mcpwarden.dev/v1\"\nkind = \"ServerPolicy\"\n[metadata]\nname = \"p\"\n[[spec.tools.rules]]\naction = \"allow\"\nwhen = 'args.path.starts_with(3)'\n").expect("write");
    let check = Command::new(bin)
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:7:8: spec.tools.rules[0].when: at column 23: expected a string, found an integer",
            policy.display()
        )),
        "{err}"
    );
}

const FS_SERVER: &str =
    "/opt/mcpwarden-dev/node/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js";

#[test]
fn the_shipped_filesystem_profile_guards_the_real_filesystem_server() {
    use std::os::unix::fs::PermissionsExt as _;
    let _guard = serial();
    assert!(
        std::path::Path::new(FS_SERVER).exists(),
        "{FS_SERVER} is missing: run ./setup.sh"
    );
    let fx = Fixture::new("enforce");
    let data = fx.dir().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(data.join("hello.txt"), "hello from the host\n").expect("write");
    // The profile as shipped, served directory moved to the fixture's.
    let profile =
        std::fs::read_to_string(repo().join("policies/filesystem.toml")).expect("profile");
    let data_s = data.display().to_string();
    std::fs::write(&fx.policy, profile.replace("/srv/mcp/files", &data_s)).expect("write");
    let events_flag = fx.events.display().to_string();
    let at = |name: &str| data.join(name).display().to_string();
    let scenario = json!([
        {"call": "list_allowed_directories"},
        {"call": "read_text_file", "args": {"path": at("hello.txt")}},
        {"call": "read_text_file", "args": {"path": format!("{data_s}/../allowed.txt")}},
        {"call": "write_file", "args": {"path": at("new.txt"), "content": "written through mcpwarden\n"}},
        {"call": "move_file", "args": {"source": at("new.txt"), "destination": fx.dir().join("public/new.txt").display().to_string()}},
        {"call": "read_multiple_files", "args": {"paths": [at("hello.txt"), fx.secret()]}},
        {"call": "read_multiple_files", "args": {"paths": [at("hello.txt"), at("new.txt")]}},
    ]);
    let cmd = vec![
        "/usr/bin/node".to_owned(),
        FS_SERVER.to_owned(),
        data_s.clone(),
    ];
    let run = Run::through_mcpwarden_with(&fx, &scenario, &["--events", &events_flag], cmd);
    assert!(run.step(0)["result"].is_object(), "{}", run.raw);
    assert_eq!(run.text(1), "hello from the host\n");
    assert!(run.step(3)["result"].is_object(), "{}", run.raw);
    assert_eq!(
        std::fs::read_to_string(data.join("new.txt")).expect("written"),
        "written through mcpwarden\n"
    );
    for i in [2, 4, 5] {
        assert_eq!(
            run.step(i)["error"]["code"],
            -32001,
            "step {i}: {}",
            run.raw
        );
    }
    assert!(
        !fx.dir().join("public/new.txt").exists(),
        "the move happened"
    );
    assert!(
        run.text(6).contains("written through mcpwarden"),
        "{}",
        run.raw
    );
    let recs = records(&fx, "policy");
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert!(
        recs.iter()
            .all(|r| r["server"] == "filesystem" && r["action"] == "blocked"),
        "{recs:?}"
    );
}
