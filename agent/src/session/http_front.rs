//! The server side of Streamable HTTP: mcpwarden's endpoint for HTTP
//! clients, at `http://ADDR/mcp`.
//!
//! Two modes. *Host*: the tool server speaks stdio and mcpwarden is the HTTP
//! server of record for its one MCP session (session id, SSE streams,
//! numbered events, resumption). *Relay*: the tool server is itself an HTTP
//! server; each request goes upstream with the client's MCP headers, each
//! answer comes back judged message by message, and sessions, event ids and
//! resumption are the upstream's. Both check `Origin` (DNS rebinding), the
//! body size, the JSON-RPC, and the request ids in flight before anything
//! goes upstream.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router as Routes,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use futures_util::stream;
use tokio::sync::{mpsc, watch};

use super::{
    core::{Shared, lock, request_ids, response_key},
    http_host::Host,
    route::ToClient,
};
use crate::{
    monotonic_ns,
    proxy::{
        message::{self, Message, RequestId, code, error_response},
        sse,
        streams::{Frame, Router, STREAM_QUEUE, StreamId},
        upstream::{
            FORWARD_REQUEST, FORWARD_RESPONSE, LAST_EVENT_ID, PROTOCOL_VERSION, SESSION_ID,
            Upstream, is_sse,
        },
    },
};

/// The path of the MCP endpoint.
pub const ENDPOINT: &str = "/mcp";

/// Where requests go.
#[derive(Debug)]
pub(crate) enum Mode {
    /// mcpwarden serves the session itself (stdio server behind).
    Host(Host),
    /// Each request is relayed to an HTTP upstream.
    Relay(Upstream),
}

/// The endpoint's state.
#[derive(Debug)]
pub(crate) struct Front {
    pub core: Shared,
    pub router: Arc<Router>,
    pub mode: Mode,
    pub max: usize,
    /// Origins allowed besides loopback ones.
    pub origins: Vec<String>,
    /// Listening on loopback: requests must name a loopback `Host`.
    pub loopback: bool,
}

/// Serves the endpoint on `listener` until `stop` turns true.
pub(crate) async fn serve(
    front: Arc<Front>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Routes::new()
        .route(
            ENDPOINT,
            post(on_post)
                .get(on_get)
                .delete(on_delete)
                .options(on_options),
        )
        .with_state(front);
    let mut stop2 = stop.clone();
    // Answers are small writes that must leave at once: without
    // TCP_NODELAY, Nagle holds an SSE event behind its headers until the
    // client's delayed ACK, 40 ms later.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a client connection: {e}");
        }
    });
    let graceful = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    // Graceful shutdown waits for every connection, and a client may keep
    // its GET stream open: give answers in flight a moment, no more.
    tokio::select! {
        r = graceful => r,
        () = async {
            let _ = stop2.wait_for(|s| *s).await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        } => Ok(()),
    }
}

/// A refusal on its way to become a [`Response`] (small, for `Result`s).
#[derive(Debug)]
pub(crate) struct Refusal(pub StatusCode, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.0, code::INVALID_REQUEST, &self.1)
    }
}

/// A plain error answer: HTTP status with a JSON-RPC error body.
pub(crate) fn refuse(status: StatusCode, code: i64, message: &str) -> Response {
    tracing::debug!(%status, "refused an HTTP request: {message}");
    json_response(
        status,
        error_response(None, code, message, None).into_bytes(),
    )
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The checks every request gets before anything else: DNS rebinding
/// (see [`request_allowed`]) and MCP headers given more than once (which
/// copy would the server read?).
fn screen(front: &Front, headers: &HeaderMap) -> Option<Response> {
    if !request_allowed(headers, front.loopback, &front.origins) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            "mcpwarden: this Host or Origin may not call the MCP endpoint (DNS rebinding protection)",
        ));
    }
    for name in [SESSION_ID, PROTOCOL_VERSION, LAST_EVENT_ID] {
        if headers.get_all(&name).iter().count() > 1 {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                &format!("mcpwarden: the {name} header appears more than once"),
            ));
        }
    }
    None
}

/// Whether a request may reach a loopback endpoint: its `Host` must name
/// loopback (a DNS-rebinding page names its own domain there), and its
/// `Origin`, when a browser sent one, must be loopback too or one the
/// operator allowed. Anything else gets 403. (An endpoint listening beyond
/// loopback checks the Origin only.)
pub(crate) fn request_allowed(headers: &HeaderMap, loopback: bool, allowed: &[String]) -> bool {
    if loopback {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let local = reqwest::Url::parse(&format!("http://{host}/")).is_ok_and(|u| is_loopback(&u));
        if !local {
            return false;
        }
    }
    origin_allowed(headers, allowed)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether a browser page at this `Origin` may call us: no Origin (not a
/// browser), a loopback origin, or one the operator allowed.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let Ok(url) = reqwest::Url::parse(origin) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https") && is_loopback(&url)
}

/// Whether a POST's `Accept` names both answer types, as the spec asks.
pub(crate) fn accepts_both(headers: &HeaderMap) -> bool {
    accepts(headers, "application/json") && accepts(headers, "text/event-stream")
}

/// Whether `Accept` names `what` itself: the spec asks clients to name
/// the types they take, and a wildcard would let a client that cannot read
/// an event stream open one.
pub(crate) fn accepts(headers: &HeaderMap, what: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .any(|v| v == what)
}

/// An SSE body from a stream's channel, after `first` frames. With no
/// first frame it opens with a comment line, so the response's head leaves
/// at once (a client waits for it before it reads anything).
pub(crate) fn sse_body(first: Vec<Frame>, rx: mpsc::Receiver<Frame>) -> Body {
    let encode = |f: Frame| {
        let mut event = sse::Event::message(f.id, String::from_utf8_lossy(&f.data).into_owned());
        event.retry = f.retry;
        Ok::<_, std::convert::Infallible>(Bytes::from(event.encode()))
    };
    let opener = first.is_empty().then(|| Ok(Bytes::from_static(b":\n\n")));
    let replay = stream::iter(opener.into_iter().chain(first.into_iter().map(encode)));
    let live = stream::unfold(rx, move |mut rx| async move {
        rx.recv().await.map(|f| (encode(f), rx))
    });
    Body::from_stream(futures_util::StreamExt::chain(replay, live))
}

pub(crate) fn sse_response(headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The checks every request gets, then the body as a parsed message.
pub(crate) struct Checked {
    pub body: Bytes,
    pub msg: Message,
}

async fn read_message(front: &Front, request: Request) -> Result<(HeaderMap, Checked), Response> {
    let (parts, body) = request.into_parts();
    if let Some(refusal) = screen(front, &parts.headers) {
        return Err(refusal);
    }
    let body = axum::body::to_bytes(body, front.max).await.map_err(|_| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::INVALID_REQUEST,
            &format!(
                "mcpwarden: the message exceeds the limit of {} bytes",
                front.max
            ),
        )
    })?;
    let msg = message::parse(&body).map_err(|e| {
        tracing::warn!("client sent {e}");
        refuse(
            StatusCode::BAD_REQUEST,
            e.code(),
            &format!("mcpwarden: {e}"),
        )
    })?;
    Ok((parts.headers, Checked { body, msg }))
}

async fn on_post(State(front): State<Arc<Front>>, request: Request) -> Response {
    let (headers, checked) = match read_message(&front, request).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match &front.mode {
        Mode::Host(host) => host.post(&front, &headers, checked).await,
        Mode::Relay(upstream) => relay_post(&front, upstream, &headers, checked).await,
    }
}

async fn on_get(State(front): State<Arc<Front>>, request: Request) -> Response {
    let headers = request.headers();
    if let Some(refusal) = screen(&front, headers) {
        return refusal;
    }
    match &front.mode {
        Mode::Host(host) => host.get(&front, headers),
        Mode::Relay(upstream) => relay_get(&front, upstream, headers).await,
    }
}

async fn on_delete(State(front): State<Arc<Front>>, request: Request) -> Response {
    let headers = request.headers();
    if let Some(refusal) = screen(&front, headers) {
        return refusal;
    }
    match &front.mode {
        Mode::Host(host) => host.delete(headers),
        Mode::Relay(upstream) => relay_plain(upstream, Method::DELETE, headers, None).await,
    }
}

/// CORS preflight: relayed to an upstream (its answer decides what a
/// browser may do, and our own Host/Origin screen still applies to the
/// request that follows); a stdio server behind us gets no CORS.
async fn on_options(State(front): State<Arc<Front>>, request: Request) -> Response {
    let headers = request.headers();
    if let Some(refusal) = screen(&front, headers) {
        return refusal;
    }
    match &front.mode {
        Mode::Host(_) => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        Mode::Relay(upstream) => relay_plain(upstream, Method::OPTIONS, headers, None).await,
    }
}

/// Answers a client message the core refused (JSON-RPC errors), or 202 when
/// it was dropped without an answer.
pub(crate) fn refused(replies: &[String]) -> Response {
    match replies {
        [] => StatusCode::ACCEPTED.into_response(),
        [one] => json_response(StatusCode::OK, one.clone().into_bytes()),
        many => json_response(StatusCode::OK, format!("[{}]", many.join(",")).into_bytes()),
    }
}

/// The client's session id: the scope of its request ids.
fn scope_of(headers: &HeaderMap) -> String {
    headers
        .get(SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn forward_headers(from: &HeaderMap, names: &[header::HeaderName]) -> HeaderMap {
    let mut to = HeaderMap::new();
    for name in names {
        for value in from.get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
    to
}

async fn relay_post(
    front: &Arc<Front>,
    upstream: &Upstream,
    headers: &HeaderMap,
    checked: Checked,
) -> Response {
    let scope = scope_of(headers);
    let Checked { body, msg } = checked;
    if let Err(replies) = lock(&front.core).admit(&msg, &scope, monotonic_ns()) {
        return refused(&replies);
    }
    let ids = request_ids(&msg, &scope);
    let keys: Vec<String> = ids.iter().map(|id| id.key.clone()).collect();
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    // Registered before the request leaves: a kill while the upstream works
    // on it is answered on this stream, even before the upstream answers.
    let stream = (!ids.is_empty()).then(|| front.router.open(&keys, tx, false));
    let sent = upstream
        .send(
            Method::POST,
            forward_headers(headers, &FORWARD_REQUEST),
            Some(body),
        )
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("{e}");
            let why = format!("mcpwarden could not reach the upstream server: {e}");
            let replies = lock(&front.core).fail(&ids, code::UPSTREAM, &why);
            let router = Arc::clone(&front.router);
            tokio::spawn(async move {
                ToClient::Http(Arc::clone(&router)).replies(replies).await;
                if let Some(stream) = stream {
                    router.close(stream);
                }
            });
            let frames = collect(rx).await;
            if frames.is_empty() {
                return refuse(StatusCode::BAD_GATEWAY, code::UPSTREAM, &why);
            }
            return json_response(StatusCode::OK, join_frames(&frames));
        }
    };
    let status = response.status();
    let out_headers = forward_headers(response.headers(), &FORWARD_RESPONSE);
    let Some(stream) = stream.filter(|_| status.is_success() && status != StatusCode::ACCEPTED)
    else {
        // Nothing to judge: an HTTP error, or an accepted notification.
        if let Some(stream) = stream {
            front.router.close(stream);
        }
        let _ = lock(&front.core).fail(&ids, code::UPSTREAM, "");
        let body = read_limited(response, front.max).await;
        return (status, out_headers, body).into_response();
    };
    let sse = is_sse(response.headers());
    let answer = upstream.answer(response);
    let pump = tokio::spawn(pump_relayed(
        Arc::clone(front),
        answer,
        scope,
        stream,
        ids.clone(),
        sse,
    ));
    if sse {
        // The pump ends when the client goes away (its channel closes).
        drop(pump);
        return (status, sse_response(out_headers, sse_body(Vec::new(), rx))).into_response();
    }
    let frames = collect(rx).await;
    let _ = pump.await;
    if frames.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    (status, out_headers, join_frames(&frames)).into_response()
}

async fn collect(mut rx: mpsc::Receiver<Frame>) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = rx.recv().await {
        frames.push(f);
    }
    frames
}

/// One JSON body for the frames of a POST: the message itself, or an array.
fn join_frames(frames: &[Frame]) -> Vec<u8> {
    if let [one] = frames {
        return one.data.to_vec();
    }
    let mut out = b"[".to_vec();
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&f.data);
    }
    out.push(b']');
    out
}

/// Reads an upstream answer into the router: each message judged by the
/// core, then routed to its stream. Stops when the client has gone: the
/// upstream's stream is left for the client to resume (by GET with
/// `Last-Event-ID`, relayed like the rest).
async fn pump_relayed(
    front: Arc<Front>,
    mut answer: crate::proxy::upstream::Answer,
    scope: String,
    stream: StreamId,
    ids: Vec<RequestId>,
    sse: bool,
) {
    while front.router.is_open(stream) {
        let incoming = tokio::select! {
            next = answer.next() => next,
            () = front.router.client_gone(stream) => break,
        };
        let incoming = match incoming {
            Ok(Some(i)) => i,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("{e}");
                break;
            }
        };
        if incoming.data.is_empty() {
            // The upstream's priming event (an id, maybe a retry, no data):
            // the client needs it to resume this stream.
            if let Some(d) =
                front
                    .router
                    .route_frame(incoming.data, incoming.id, incoming.retry, stream)
            {
                front.router.deliver(d).await;
            }
            continue;
        }
        let msg = match message::parse(&incoming.data) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("dropping an upstream message that is not JSON-RPC ({e})");
                continue;
            }
        };
        let (forward, replies) = lock(&front.core).on_server_message(&msg, &scope, monotonic_ns());
        ToClient::Http(Arc::clone(&front.router))
            .replies(replies)
            .await;
        if forward {
            let key = response_key(&msg, &scope);
            if let Some(d) =
                front
                    .router
                    .route(incoming.data, key.as_deref(), incoming.id, Some(stream))
            {
                front.router.deliver(d).await;
            }
        }
    }
    let pending = front.router.close(stream);
    if !sse && !pending.is_empty() {
        // A JSON answer is complete: what it did not answer never will be.
        let left: Vec<RequestId> = ids
            .into_iter()
            .filter(|id| pending.contains(&id.key))
            .collect();
        let _ = lock(&front.core).fail(&left, code::UPSTREAM, "");
    }
}

async fn relay_get(front: &Arc<Front>, upstream: &Upstream, headers: &HeaderMap) -> Response {
    let response = match upstream
        .send(
            Method::GET,
            forward_headers(headers, &FORWARD_REQUEST),
            None,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("{e}");
            return refuse(
                StatusCode::BAD_GATEWAY,
                code::UPSTREAM,
                &format!("mcpwarden could not reach the upstream server: {e}"),
            );
        }
    };
    let status = response.status();
    let out_headers = forward_headers(response.headers(), &FORWARD_RESPONSE);
    if !status.is_success() || !is_sse(response.headers()) {
        let body = read_limited(response, front.max).await;
        return (status, out_headers, body).into_response();
    }
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let stream = front.router.open(&[], tx, true);
    let answer = upstream.answer(response);
    tokio::spawn(pump_relayed(
        Arc::clone(front),
        answer,
        scope_of(headers),
        stream,
        Vec::new(),
        true,
    ));
    (status, sse_response(out_headers, sse_body(Vec::new(), rx))).into_response()
}

async fn relay_plain(
    upstream: &Upstream,
    method: Method,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Response {
    match upstream
        .send(method, forward_headers(headers, &FORWARD_REQUEST), body)
        .await
    {
        Ok(r) => {
            let status = r.status();
            let out_headers = forward_headers(r.headers(), &FORWARD_RESPONSE);
            let body = read_limited(r, 1 << 20).await;
            (status, out_headers, body).into_response()
        }
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            code::UPSTREAM,
            &format!("mcpwarden could not reach the upstream server: {e}"),
        ),
    }
}

/// An upstream body, at most `max` bytes of it.
async fn read_limited(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > max {
            tracing::warn!("truncating an upstream error body at {max} bytes");
            break;
        }
        body.extend_from_slice(&chunk);
    }
    body
}

/// Where the endpoint listens: loopback unless asked otherwise.
pub(crate) fn warn_if_exposed(addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the MCP endpoint listens beyond loopback and has no authentication yet: anyone who can reach it can call the tools"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(o: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        h
    }

    #[test]
    fn only_loopback_or_allowed_origins_pass() {
        assert!(origin_allowed(&HeaderMap::new(), &[]));
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8443",
        ] {
            assert!(origin_allowed(&with_origin(ok), &[]), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://localhost.evil.example",
            "null",
            "file://",
            "http://10.0.0.1",
        ] {
            assert!(!origin_allowed(&with_origin(bad), &[]), "{bad}");
        }
        let mut h = with_origin("http://localhost:1");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8931"));
        assert!(request_allowed(&h, true, &[]));
        h.insert(header::HOST, HeaderValue::from_static("evil.example:8931"));
        assert!(!request_allowed(&h, true, &[]), "rebinding Host");
        assert!(
            request_allowed(&h, false, &[]),
            "Host is free beyond loopback"
        );
        h.remove(header::HOST);
        assert!(!request_allowed(&h, true, &[]), "no Host at all");
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            &with_origin("https://app.example"),
            &allowed
        ));
    }

    #[test]
    fn accept_lists_are_read_per_item() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;q=0.9, text/event-stream"),
        );
        assert!(accepts(&h, "application/json"));
        assert!(accepts(&h, "text/event-stream"));
        assert!(!accepts(&h, "text/html"));
    }
}
