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
