//! Third-party servers under the sandbox: the official filesystem server
//! (node) answers tool calls confined by the node profile, and `--dry-run`
//! gives it throw-away copies of its writable directory.
use std::os::unix::fs::PermissionsExt as _;

use serde_json::json;

use crate::support::{Fixture, Run, assert_nothing_left_behind, serial};

const FS_SERVER: &str =
    "/opt/mcpwarden-dev/node/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js";

/// A fixture whose `data/` the node server may write, and its command.
fn node_fixture() -> (Fixture, Vec<String>) {
    assert!(
        std::path::Path::new(FS_SERVER).exists(),
        "{FS_SERVER} is missing: run ./setup.sh"
    );
    let fx = Fixture::with_sandbox("enforce", "");
    let data = fx.dir().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(data.join("hello.txt"), "hello from the host\n").expect("write");
    let policy = format!(
        "mode = \"enforce\"\n[sandbox]\nprofile = \"node\"\nread = [\"{dir}\", \"/opt/mcpwarden-dev/node\"]\nwrite = [\"{data}\"]\n",
        dir = fx.dir().display(),
        data = data.display()
    );
    std::fs::write(&fx.policy, policy).expect("write policy");
    let cmd = vec![
        "/usr/bin/node".to_owned(),
        FS_SERVER.to_owned(),
        data.display().to_string(),
    ];
    (fx, cmd)
}

#[test]
fn the_official_filesystem_server_works_confined() {
    let _guard = serial();
    let (fx, cmd) = node_fixture();
    let data = fx.dir().join("data");
    let scenario = json!([
        {"list_tools": true},
        {"call": "read_text_file", "args": {"path": data.join("hello.txt")}},
        {"call": "write_file", "args": {"path": data.join("new.txt"), "content": "written inside"}},
        {"call": "list_directory", "args": {"path": data}},
    ]);
    let run = Run::through_mcpwarden_with(&fx, &scenario, &[], cmd);
    let tools = run.step(0)["list_tools"]["tools"]
        .as_array()
        .expect("tools")
        .len();
    assert!(
        tools >= 10,
        "the filesystem server lists its tools: {tools}"
    );
    assert_eq!(run.text(1), "hello from the host\n");
    assert!(
        run.text(2).contains("Successfully wrote"),
        "{}",
        run.text(2)
    );
    assert!(run.text(3).contains("new.txt"), "{}", run.text(3));
    assert_eq!(
        std::fs::read_to_string(data.join("new.txt")).expect("written on the host"),
        "written inside"
    );
    assert_nothing_left_behind(None);
}

#[test]
fn dry_run_changes_vanish_with_the_session() {
    let _guard = serial();
    let (fx, cmd) = node_fixture();
    let data = fx.dir().join("data");
    let scenario = json!([
        {"call": "write_file", "args": {"path": data.join("new.txt"), "content": "throw-away"}},
        {"call": "write_file", "args": {"path": data.join("hello.txt"), "content": "overwritten"}},
        {"call": "read_text_file", "args": {"path": data.join("new.txt")}},
        {"call": "read_text_file", "args": {"path": data.join("hello.txt")}},
    ]);
    let run = Run::through_mcpwarden_with(&fx, &scenario, &["--dry-run"], cmd);
    // Inside the session the writes are real...
    assert_eq!(run.text(2), "throw-away");
    assert_eq!(run.text(3), "overwritten");
    // ...and on the host nothing changed.
    assert!(
        !data.join("new.txt").exists(),
        "a dry-run write reached the host"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("hello.txt")).expect("read"),
        "hello from the host\n"
    );
    assert_nothing_left_behind(None);
}

#[test]
fn the_official_filesystem_server_works_over_http() {
    let _guard = serial();
    let (fx, cmd) = node_fixture();
    let data = fx.dir().join("data");
    let scenario = json!([
        {"call": "read_text_file", "args": {"path": data.join("hello.txt")}},
        {"call": "list_directory", "args": {"path": data}},
        {"call": "read_text_file", "args": {"path": "/etc/hostname"}},
    ]);
    let mut endpoint = crate::support::Endpoint::start(&fx.policy, &[], &cmd);
    let run = Run::over_http(&scenario, &endpoint.url);
    let (status, log) = endpoint.finish(10);
    assert!(status.success(), "{status}: {log}");
    assert_eq!(run.text(0), "hello from the host\n");
    assert!(run.text(1).contains("hello.txt"), "{}", run.raw);
    // Outside its allowed directory the server itself refuses.
    assert!(
        run.raw.contains("outside allowed directories") || run.raw.contains("Access denied"),
        "{}",
        run.raw
    );
    assert_nothing_left_behind(None);
}

const EVERYTHING: &str =
    "/opt/mcpwarden-dev/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js";

/// The official "everything" server answers the same through mcpwarden,
/// over every pairing of transports, as it does directly.
#[test]
fn the_official_everything_server_answers_alike_over_every_transport() {
    use crate::support::{Endpoint, free_port, mcpwarden_path};
    let _guard = serial();
    assert!(
        std::path::Path::new(EVERYTHING).exists(),
        "{EVERYTHING} is missing: run ./setup.sh"
    );
    let scenario = json!([
        {"list_tools": true},
        {"call": "echo", "args": {"message": "through mcpwarden"}},
        {"call": "get-sum", "args": {"a": 2, "b": 40}},
        {"call": "get-structured-content", "args": {"location": "Chicago"}},
    ]);
    let node = |mode: &str| {
        vec![
            "/usr/bin/node".to_owned(),
            EVERYTHING.to_owned(),
            mode.to_owned(),
        ]
    };
    let policy = |port: u16| {
        let fx = Fixture::with_sandbox("enforce", "");
        let text = format!(
            "mode = \"enforce\"\n[sandbox]\nprofile = \"node\"\nread = [\"/opt/mcpwarden-dev/node\"]\nenv = [\"PORT\"]\n[sandbox.network]\nbind = [{port}]\n"
        );
        std::fs::write(&fx.policy, text).expect("write policy");
        fx
    };
    let answers =
        |run: &Run| -> Vec<serde_json::Value> { (0..4).map(|i| run.step(i).clone()).collect() };
    let direct = Run::client(&scenario, node("stdio"));
    assert_eq!(direct.text(1), "Echo: through mcpwarden");
    let want = answers(&direct);

    // HTTP client, stdio server.
    let fx = policy(free_port());
    let mut endpoint = Endpoint::start(&fx.policy, &[], &node("stdio"));
    let run = Run::over_http(&scenario, &endpoint.url);
    let (status, log) = endpoint.finish(10);
    assert!(status.success(), "{status}: {log}");
    assert_eq!(answers(&run), want, "HTTP to stdio");

    // stdio client, HTTP server (started confined).
    let port = free_port();
    let fx = policy(port);
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let mut command = vec![
        "/usr/bin/env".to_owned(),
        format!("PORT={port}"),
        mcpwarden_path(),
        "run".into(),
        "--policy".into(),
        fx.policy.display().to_string(),
        "--upstream".into(),
        upstream.clone(),
        "--".into(),
    ];
    command.extend(node("streamableHttp"));
    let run = Run::client(&scenario, command);
    assert_eq!(answers(&run), want, "stdio to HTTP");

    // HTTP client, HTTP server.
    let port = free_port();
    let fx = policy(port);
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let mut endpoint = Endpoint::start_with_env(
        &fx.policy,
        &["--upstream", &upstream],
        &node("streamableHttp"),
        &[("PORT", port.to_string())],
    );
    let run = Run::over_http(&scenario, &endpoint.url);
    let (status, log) = endpoint.finish(0);
    assert!(status.success(), "{status}: {log}");
    assert_eq!(answers(&run), want, "HTTP to HTTP");
    assert_nothing_left_behind(None);
}
