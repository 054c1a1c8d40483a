//! The HTTP endpoint against a wrong or hostile client, on a live session
//! with a real (stdio) server behind it: each bad request gets the status
//! and JSON-RPC error the spec prescribes, nothing wedges, a broken stream
//! resumes with `Last-Event-ID`, and the session goes on answering.
use mcpwarden::proxy::sse::{Decoder, Item};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{Endpoint, Fixture, assert_nothing_left_behind, serial};

const BOTH: &str = "application/json, text/event-stream";

struct Session {
    http: Client,
    url: String,
    id: String,
}

impl Session {
    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        self.post_with(body, &[])
    }

    /// A POST whose headers `set` replace the session's usual ones.
    fn post_with(&self, body: &Value, set: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in [
            ("accept", BOTH),
            ("content-type", "application/json"),
            ("mcp-session-id", &self.id),
            ("mcp-protocol-version", "2025-11-25"),
        ]
        .iter()
        .chain(set)
        {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        self.http
            .post(&self.url)
            .headers(headers)
            .body(body.to_string())
    }
}

#[expect(clippy::needless_pass_by_value, reason = "built inline at each call")]
fn call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
}

/// Reads SSE events until the response to `id`; returns the ids of the
/// events seen and the response.
async fn answer(response: &mut Response, id: u64) -> (Vec<String>, Value) {
    let mut decoder = Decoder::new(1 << 20);
    let mut ids = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .expect("read the stream")
            .unwrap_or_else(|| panic!("stream ended before the answer to {id}"));
        for item in decoder.feed(&chunk) {
            let Item::Event(event) = item else {
                panic!("oversized event")
            };
            ids.extend(event.id.clone());
            if event.data.is_empty() {
                continue;
            }
            let msg: Value = serde_json::from_str(&event.data).expect("JSON event");
            if msg["id"] == id {
                return (ids, msg);
            }
        }
    }
}

async fn error_code(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("a body");
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not a JSON-RPC error body ({e}): {bytes:?}"));
    (status, body["error"]["code"].clone())
}

#[test]
fn bad_http_requests_get_their_status_and_the_session_goes_on() {
    let _guard = serial();
    let fx = Fixture::new("enforce");
    let mut endpoint = Endpoint::start(&fx.policy, &["--max-message", "65536"], &fx.server_cmd());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let done = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_mins(1), exercise(&endpoint)).await
    });
    let (status, log) = endpoint.finish(10);
    assert!(done.is_ok(), "the session wedged: {log}");
    assert!(status.success(), "{status}: {log}");
    assert_nothing_left_behind(None);
}

#[expect(clippy::too_many_lines, reason = "one live session, step by step")]
async fn exercise(endpoint: &Endpoint) {
    let http = Client::builder().no_proxy().build().expect("client");
    let url = endpoint.url.clone();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "hardening", "version": "0"}}});

    // Requests before any session.
    let r = http
        .post(&url)
        .header("accept", BOTH)
        .header("content-type", "application/json")
        .body(call(9, "whoami", json!({})).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(
        error_code(r).await.0,
        StatusCode::BAD_REQUEST,
        "no session yet"
    );

    let mut r = http
        .post(&url)
        .header("accept", BOTH)
        .header("content-type", "application/json")
        .body(init.to_string())
        .send()
        .await
        .expect("initialize");
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(id.len(), 32, "128 random bits: {id}");
    let (_, hello) = answer(&mut r, 1).await;
    assert!(hello["result"]["serverInfo"].is_object(), "{hello}");
    let s = Session {
        http: http.clone(),
        url: url.clone(),
        id,
    };
    let r = s
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .expect("initialized");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Each bad POST on the live session, and the status it must get.
    let ok = call(2, "whoami", json!({}));
    let evil_host = format!("evil.example:{}", endpoint.port);
    let big = call(4, "read_file", json!({"path": "x".repeat(70_000)}));
    let bad_posts: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        // DNS rebinding: a page on another origin, or naming another host.
        (
            "foreign Origin",
            s.post_with(&ok, &[("origin", "http://evil.example")]),
            StatusCode::FORBIDDEN,
        ),
        (
            "foreign Host",
            s.post_with(&ok, &[("host", &evil_host)]),
            StatusCode::FORBIDDEN,
        ),
        // Session and version headers.
        (
            "no session header",
            http.post(&url)
                .header("accept", BOTH)
                .header("content-type", "application/json")
                .body(ok.to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown session",
            s.post_with(&ok, &[("mcp-session-id", "0123")]),
            StatusCode::NOT_FOUND,
        ),
        (
            "two session ids",
            s.post(&ok).header("mcp-session-id", "0123"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown version",
            s.post_with(&ok, &[("mcp-protocol-version", "1999-01-01")]),
            StatusCode::BAD_REQUEST,
        ),
        ("a second initialize", s.post(&init), StatusCode::CONFLICT),
        // Content negotiation.
        (
            "JSON only accepted",
            s.post_with(&ok, &[("accept", "application/json")]),
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            "not JSON",
            s.post_with(&ok, &[("content-type", "text/plain")]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // Bodies: too big.
        (
            "over the limit",
            s.post(&big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (what, request, status) in bad_posts {
        let r = request.send().await.expect("post");
        assert_eq!(error_code(r).await.0, status, "{what}");
    }
    // Bodies: not JSON, not JSON-RPC: the JSON-RPC codes too.
    let r = s
        .post(&ok)
        .body("{\"jsonrpc\": ")
        .send()
        .await
        .expect("post");
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, json!(-32700))
    );
    let r = s
        .post(&json!({"id": 3, "method": "ping"}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, json!(-32600))
    );

    // GET: only as an event stream, one at a time.
    let r = http
        .get(&url)
        .header("mcp-session-id", &s.id)
        .send()
        .await
        .expect("get");
    assert_eq!(error_code(r).await.0, StatusCode::NOT_ACCEPTABLE);
    let get = http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &s.id)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), StatusCode::OK);
    let r = http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &s.id)
        .send()
        .await
        .expect("get");
    assert_eq!(
        error_code(r).await.0,
        StatusCode::CONFLICT,
        "a second GET stream"
    );
    drop(get);

    // A duplicate id in flight is refused; the first call still answers.
    let slow = |id| {
        call(
            id,
            "run",
            json!({"argv": ["/bin/sh", "-c", "sleep 1; echo slow"]}),
        )
    };
    let mut first = s.post(&slow(50)).send().await.expect("post");
    let r = s.post(&slow(50)).send().await.expect("post");
    assert_eq!(error_code(r).await, (StatusCode::OK, json!(-32600)));
    let (_, done) = answer(&mut first, 50).await;
    assert_eq!(done["result"]["content"][0]["text"], "slow\n", "{done}");

    // The client's connection breaks mid-call; it resumes from the
    // priming event's id and gets the answer on the new stream.
    let mut broken = s.post(&slow(60)).send().await.expect("post");
    let chunk = broken
        .chunk()
        .await
        .expect("read")
        .expect("the priming event");
    let mut decoder = Decoder::new(1 << 10);
    let Some(Item::Event(prime)) = decoder.feed(&chunk).into_iter().next() else {
        panic!("no priming event: {chunk:?}")
    };
    assert!(prime.data.is_empty() && prime.id.is_some(), "{prime:?}");
    drop(broken);
    let mut resumed = http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &s.id)
        .header("last-event-id", prime.id.expect("id"))
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), StatusCode::OK);
    let (_, done) = answer(&mut resumed, 60).await;
    assert_eq!(done["result"]["content"][0]["text"], "slow\n", "{done}");

    // After all that, the session still serves.
    let mut r = s
        .post(&call(70, "read_file", json!({"path": "/etc/hostname"})))
        .send()
        .await
        .expect("post");
    let (_, fine) = answer(&mut r, 70).await;
    assert!(fine["result"].is_object(), "{fine}");

    let r = http
        .delete(&url)
        .header("mcp-session-id", &s.id)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::OK);
}
