//! One tracer for every session of the daemon: two live sessions run one
//! copy of each kernel program (so the host's other processes pay for one,
//! whatever the number of sessions), each session still gets exactly its
//! own events and verdicts, and the programs go with the last session.
use std::{path::Path, time::Duration};

use serde_json::{Value, json};

use crate::{
    daemon::Daemon,
    daemon_sessions::{eventually, get, run_through, sessions, socket_env},
    support::{Fixture, Run, serial},
};

/// Loaded programs named `name`, host-wide.
pub(crate) fn loaded(name: &str) -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .count()
}

/// The daemon's open events of session `label`: their paths.
fn opened(socket: &Path, label: &str) -> Vec<String> {
    let (_, body) = get(
        socket,
        &format!("/api/v1/events?session={label}&kind=open&last=100000"),
    );
    let events: Value = serde_json::from_str(&body).expect("events JSON");
    events
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn live_sessions_share_one_tracer_and_keep_their_own_events() {
    let _serial = serial();
    let d = Daemon::start();
    // Both with a [network] table: the connect programs are attached to
    // both cgroups, loaded once. PSI judges messages, not kernel events:
    // off, so that any verdict here comes from the kernel or the policy
    // (a model score near its threshold on a benign output is not what
    // this test is about).
    let net = "[network]\nallow = [\"127.0.0.1:9\"]\n[inspect]\nenabled = false\n";
    let (a, b) = (
        Fixture::with_sandbox("enforce", net),
        Fixture::with_sandbox("enforce", net),
    );
    let go = a.dir().join("go");
    let scenario = |fx: &Fixture, last: &str| {
        json!([
            {"call": "whoami", "args": {}},
            {"call": "read_file", "args": {"path": fx.allowed()}},
            {"wait_file": go.display().to_string()},
            {"call": "read_file", "args": {"path": last}},
        ])
    };
    let client = |fx: &Fixture, uid: u32, last: String| {
        let env = socket_env(&d);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Run::client_as(uid, &scenario(fx, &last), run_through(fx), &env)
    };
    let (run_a, run_b, programs_while_live) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| client(&a, 65534, a.secret()));
        let tb = scope.spawn(|| client(&b, 4242, b.allowed()));
        // Both sessions live, both servers started and traced.
        let both = eventually(Duration::from_secs(30), || {
            sessions(&d)
                .iter()
                .filter(|s| s["outcome"].is_null())
                .count()
                == 2
                && !opened(&d.socket, &label_of(&d, 65534)).is_empty()
                && !opened(&d.socket, &label_of(&d, 4242)).is_empty()
        });
        let programs = (loaded("mcpw_openat"), loaded("mcpw_conn4"));
        std::fs::write(&go, "").expect("create the go file");
        assert!(both, "two live sessions: {:?}", sessions(&d));
        let ra = ta.join().expect("client a");
        let rb = tb.join().expect("client b");
        (ra, rb, programs)
    });
    assert_eq!(
        programs_while_live.0, 1,
        "one open program for two live sessions"
    );
    assert_eq!(
        programs_while_live.1, 1,
        "one connect4 program for two live sessions"
    );

    // Each session's rules and verdicts are its own: a's secret killed a's
    // server; b read its files to the end.
    assert_eq!(run_a.step(3)["error"]["code"], -32001, "{}", run_a.raw);
    assert_eq!(run_b.text(3), "the allowed file\n", "{}", run_b.raw);

    // Each session's events are its own.
    let (la, lb) = (label_of(&d, 65534), label_of(&d, 4242));
    let (ea, eb) = (opened(&d.socket, &la), opened(&d.socket, &lb));
    let under = |paths: &[String], fx: &Fixture| {
        paths
            .iter()
            .filter(|p| p.starts_with(&fx.dir().display().to_string()))
            .count()
    };
    assert!(ea.contains(&a.allowed()), "{ea:?}");
    assert!(ea.contains(&a.secret()), "{ea:?}");
    assert!(eb.contains(&b.allowed()), "{eb:?}");
    assert_eq!(under(&ea, &b), 0, "b's opens in a's session: {ea:?}");
    assert_eq!(under(&eb, &a), 0, "a's opens in b's session: {eb:?}");
    let (_, body) = get(
        &d.socket,
        &format!("/api/v1/alerts?session={la}&verdict=killed"),
    );
    let kills: Value = serde_json::from_str(&body).expect("alerts JSON");
    assert_eq!(kills[0]["path"], a.secret(), "{kills}");
    let (_, body) = get(&d.socket, &format!("/api/v1/alerts?session={lb}"));
    let none: Value = serde_json::from_str(&body).expect("alerts JSON");
    assert_eq!(none, json!([]), "b had no verdicts");

    // The last session's end unloads the tracer; the daemon lives on.
    assert!(
        eventually(Duration::from_secs(20), || loaded("mcpw_openat")
            + loaded("mcpw_conn4")
            == 0),
        "the tracer outlived the last session"
    );
}

/// The label of the session run by `uid`.
fn label_of(d: &Daemon, uid: u32) -> String {
    sessions(d)
        .iter()
        .find(|s| s["uid"] == uid)
        .and_then(|s| s["session"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
