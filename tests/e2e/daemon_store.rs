//! The daemon's store under a crash, for real: four clients register
//! identities through the API as fast as the daemon acknowledges them
//! (each one an fsync'd audit record), the daemon is killed with SIGKILL in
//! the middle, and after a restart every acknowledged registration is there,
//! with its audit record, and the audit chain verifies.
use std::{
    collections::HashSet,
    io::BufReader,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    daemon::Daemon,
    support::{http_exchange, serial},
};

/// One request on a kept-alive connection: the status and the body.
fn call(
    conn: &mut BufReader<UnixStream>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let body = body.map(Value::to_string);
    http_exchange(conn, method, path, body.as_deref()).map(|a| (a.status, a.body))
}

fn connect(socket: &Path) -> BufReader<UnixStream> {
    BufReader::new(UnixStream::connect(socket).expect("connect to the daemon"))
}

/// Four clients register identities as fast as the daemon acknowledges
/// them; once `at_least` are acknowledged, SIGKILL. Returns the
/// acknowledged names.
fn register_until_killed(d: &mut Daemon, at_least: usize) -> Vec<String> {
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (socket, acknowledged, stop) = (
                d.socket.clone(),
                Arc::clone(&acknowledged),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut conn = connect(&socket);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("bulk-{w}-{i}");
                    let ask = json!({"op": "register", "name": name, "expires": "1d"});
                    match call(&mut conn, "POST", "/api/v1/identities", Some(&ask)) {
                        Ok((200, _)) => acknowledged.lock().expect("lock").push(name),
                        Ok((status, body)) => panic!("{name}: {status} {body}"),
                        // The daemon died under us: what was not answered
                        // was not acknowledged.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Let the writers get going, then kill the daemon while they write.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().expect("lock").len() < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon acknowledged too little: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill_hard();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    eprintln!(
        "{} registrations acknowledged before the SIGKILL",
        acknowledged.len()
    );
    acknowledged
}

#[test]
fn every_acknowledged_record_survives_a_sigkill_in_the_middle_of_heavy_logging() {
    let _serial = serial();
    let mut d = Daemon::start();
    let acknowledged = register_until_killed(&mut d, 1000);

    d.restart();
    let mut conn = connect(&d.socket);
    let (status, body) = call(&mut conn, "GET", "/api/v1/identities", None).expect("identities");
    assert_eq!(status, 200, "{body}");
    let stored: HashSet<String> = serde_json::from_str::<Value>(&body)
        .expect("JSON")
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged registrations were lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    let (status, body) = call(
        &mut conn,
        "GET",
        // Each registration is one record, two when the burst flags it.
        &format!("/api/v1/audit?last={}", 3 * acknowledged.len() + 100),
        None,
    )
    .expect("audit");
    assert_eq!(status, 200, "{body}");
    let audited: HashSet<String> = serde_json::from_str::<Value>(&body)
        .expect("JSON")
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["action"] == "identity.register")
        .filter_map(|r| r["subject"].as_str().map(str::to_owned))
        .collect();
    let unaudited: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !audited.contains(*n))
        .collect();
    assert!(
        unaudited.is_empty(),
        "acknowledged but not in the audit log: {unaudited:?}"
    );
    let (status, body) = call(&mut conn, "GET", "/api/v1/audit/verify", None).expect("verify");
    assert_eq!(status, 200, "{body}");
    let verdict: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert!(
        verdict["records"].as_u64().unwrap_or(0) >= acknowledged.len() as u64,
        "{verdict}"
    );
    drop(conn);
    retention_prunes_at_the_next_start(&mut d);
}

/// Retention, from a settings file at the next start: the log keeps its
/// newest 50 records and still verifies; the pruning is recorded.
fn retention_prunes_at_the_next_start(d: &mut Daemon) {
    d.stop_quietly();
    let settings = d.socket.with_file_name("settings.toml");
    std::fs::write(&settings, "[retention]\naudit_records = 50\n").expect("settings");
    d.restart_with(&["--config", &settings.display().to_string()]);
    let mut conn = connect(&d.socket);
    let (_, body) = call(&mut conn, "GET", "/api/v1/audit/verify", None).expect("verify");
    let verdict: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(verdict, json!({"intact": true, "records": 50}));
    let (_, body) = call(&mut conn, "GET", "/api/v1/audit?last=1", None).expect("audit");
    let newest: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(newest[0]["action"], "audit.prune", "{newest}");
}
