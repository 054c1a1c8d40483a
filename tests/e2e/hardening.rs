//! Bad input from a client gets the JSON-RPC error the spec prescribes (or
//! is dropped) and never wedges the session: it goes on answering.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::{Fixture, assert_nothing_left_behind, mcpwarden, serial};

/// A live `mcpwarden run` session spoken to in raw bytes.
struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: std::thread::JoinHandle<String>,
}

impl Raw {
    fn start(fx: &Fixture, flags: &[&str]) -> Self {
        Self::start_server(fx, flags, &fx.server_cmd())
    }

    fn start_server(fx: &Fixture, flags: &[&str], server: &[String]) -> Self {
        let mut child = mcpwarden()
            .arg("run")
            .args(flags)
            .arg("--policy")
            .arg(&fx.policy)
            .arg("--")
            .args(server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcpwarden");
        let stdin = child.stdin.take().expect("stdin");
        let mut stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin: Some(stdin),
            lines,
            log,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.send_raw(bytes);
        self.send_raw(b"\n");
    }

    /// Sends bytes as they are (no newline added).
    fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("input still open");
        stdin.write_all(bytes).expect("write");
        stdin.flush().expect("flush");
    }

    /// Closes mcpwarden's stdin (EOF), as a client that is done does.
    fn close_input(&mut self) {
        self.stdin = None;
    }

    fn recv(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a reply within 20 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line}"))
    }

    /// Ends the session; returns mcpwarden's log.
    fn finish(mut self) -> String {
        self.close_input();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
        self.log.join().expect("log reader")
    }
}

#[test]
fn bad_client_input_gets_errors_and_the_session_goes_on() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let mut s = Raw::start(&fx, &["--max-message", "4096"]);
    s.send(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#);
    assert_eq!(s.recv()["id"], json!(1));
    s.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);

    let cases: [(&str, Vec<u8>, i64, &str); 6] = [
        (
            "deep nesting",
            "[".repeat(3_000).into_bytes(),
            -32700,
            "recursion limit",
        ),
        (
            "invalid UTF-8",
            b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"\xff\xfe\"}".to_vec(),
            -32700,
            "parse error",
        ),
        ("not an object", b"42".to_vec(), -32600, "invalid request"),
        (
            "a response without an id",
            br#"{"jsonrpc":"2.0","result":{}}"#.to_vec(),
            -32600,
            "invalid request",
        ),
        (
            "no method, no result",
            br#"{"jsonrpc":"2.0","id":3}"#.to_vec(),
            -32600,
            "invalid request",
        ),
        (
            "over the size limit",
            format!(
                r#"{{"jsonrpc":"2.0","id":4,"method":"ping","params":{{"pad":"{}"}}}}"#,
                "x".repeat(5000)
            )
            .into_bytes(),
            -32600,
            "exceeds the limit",
        ),
    ];
    for (name, bytes, code, text) in cases {
        s.send(&bytes);
        let reply = s.recv();
        assert_eq!(reply["error"]["code"], json!(code), "{name}: {reply}");
        assert_eq!(reply["id"], Value::Null, "{name}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .expect("message")
                .contains(text),
            "{name}: {reply}"
        );
    }

    // A second request with an id still in flight is refused; the first
    // one is answered normally.
    s.send(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"run","arguments":{"argv":["/bin/sleep","1"]}}}"#);
    s.send(br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#);
    let dup = s.recv();
    assert_eq!(
        (&dup["id"], &dup["error"]["code"]),
        (&json!(7), &json!(-32600)),
        "{dup}"
    );
    assert!(
        dup["error"]["message"]
            .as_str()
            .expect("message")
            .contains("already in flight"),
        "{dup}"
    );
    let first = s.recv();
    assert_eq!(
        (&first["id"], first.get("error")),
        (&json!(7), None),
        "{first}"
    );

    // A response to a request the server never made is dropped (and
    // logged); the session still answers.
    s.send(br#"{"jsonrpc":"2.0","id":"nobody-asked","result":{}}"#);
    s.send(br#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#);
    assert_eq!(s.recv(), json!({"jsonrpc": "2.0", "id": 8, "result": {}}));
    let log = s.finish();
    assert!(
        log.contains("dropping a client response to no server request in flight"),
        "{log}"
    );
    assert_nothing_left_behind(None);
}

#[test]
fn server_to_client_requests_pass_through_and_are_answered() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    // The server's tool asks the client's model (sampling/createMessage, a
    // request from server to client) and returns its answer.
    let scenario = json!([{"call": "ask_model", "args": {"prompt": "hello"}}, {"call": "ask_model", "args": {"prompt": "again"}}]);
    let run = crate::support::Run::through_mcpwarden(&fx, &scenario);
    assert_eq!(run.text(0), "model says: hello");
    assert_eq!(run.text(1), "model says: again");
    assert_nothing_left_behind(None);
}

const INIT: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

#[test]
fn a_last_message_without_a_newline_is_still_answered() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let mut s = Raw::start(&fx, &[]);
    s.send(INIT);
    assert_eq!(s.recv()["id"], json!(1));
    s.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    // The client's last message ends at EOF, without its newline.
    s.send_raw(br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
    s.close_input();
    assert_eq!(s.recv(), json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
    s.finish();
    assert_nothing_left_behind(None);
}

#[test]
fn a_server_dying_mid_message_fails_the_call_and_later_ones() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    // A server that answers initialize, then crashes halfway through its
    // answer to the next request.
    let script = r#"read -r l; echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"crash","version":"0"}}}'; read -r l; read -r l; printf '{"jsonrpc":"2.0","id":'; exit 3"#;
    let server = ["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let mut s = Raw::start_server(&fx, &[], &server);
    s.send(INIT);
    assert_eq!(s.recv()["id"], json!(1));
    s.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    s.send(br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"anything","arguments":{}}}"#);
    let failed = s.recv();
    assert_eq!(
        (&failed["id"], &failed["error"]["code"]),
        (&json!(2), &json!(-32002)),
        "{failed}"
    );
    let message = failed["error"]["message"].as_str().expect("message");
    assert!(message.contains("exited with status 3"), "{message}");
    s.send(br#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#);
    let later = s.recv();
    assert_eq!(
        (&later["id"], &later["error"]["code"]),
        (&json!(3), &json!(-32002)),
        "{later}"
    );
    let log = s.finish();
    assert!(
        log.contains("not JSON-RPC"),
        "the half message is dropped and logged: {log}"
    );
    assert_nothing_left_behind(None);
}

#[test]
fn a_client_that_disconnects_mid_request_ends_the_session() {
    use std::io::Read as _;
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let mut child = mcpwarden()
        .args(["run", "--policy"])
        .arg(&fx.policy)
        .arg("--")
        .args(fx.server_cmd())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mcpwarden");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    stdin.write_all(INIT).expect("write");
    stdin.write_all(b"\n").expect("write");
    let mut first = [0u8; 64];
    let n = stdout.read(&mut first).expect("the initialize answer");
    assert!(n > 0);
    // A long call in flight, then the client vanishes: both pipes close.
    stdin
        .write_all(br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run","arguments":{"argv":["/bin/sleep","30"]}}}"#)
        .expect("write");
    stdin.write_all(b"\n").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin);
    drop(stdout);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "mcpwarden outlived its client"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.code().is_some(), "{status}");
    assert_nothing_left_behind(None);
}
