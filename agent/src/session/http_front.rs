//! The server side of Streamable HTTP: mcpwarden's endpoint for HTTP
//! clients, at `http://ADDR/mcp`.
//!
//! Two modes. *Host* ([`super::http_host`]): the tool server speaks stdio
//! and mcpwarden is the HTTP server of record for its one MCP session
//! (session id, SSE streams, numbered events, resumption). *Relay*
//! ([`super::http_relay`]): the tool server is itself an HTTP server; each
//! request goes upstream with the client's MCP headers, each answer comes
//! back judged message by message, and sessions, event ids and resumption
//! are the upstream's. Both check `Host` and `Origin` (DNS rebinding), the
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
    core::Shared,
    http_host::Host,
    http_relay::{relay_get, relay_plain, relay_post},
    tls::{ClientConn, Incoming},
};
use crate::proxy::{
    message::{self, Message, code, error_response},
    sse,
    streams::{Frame, Router},
    upstream::{LAST_EVENT_ID, PROTOCOL_VERSION, SESSION_ID, Upstream},
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
    /// API tokens.
    pub auth: super::identity::Auth,
}

/// Serves the endpoint on `listener` until `stop` turns true.
pub(crate) async fn serve(
    front: Arc<Front>,
    listener: Incoming,
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
    let app = app.into_make_service_with_connect_info::<ClientConn>();
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
    front
        .auth
        .authorize(&front.core, &parts.headers, &parts.extensions)
        .await?;
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
    if let Err(refusal) = front
        .auth
        .authorize(&front.core, headers, request.extensions())
        .await
    {
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
    if let Err(refusal) = front
        .auth
        .authorize(&front.core, headers, request.extensions())
        .await
    {
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
    if let Err(refusal) = front
        .auth
        .authorize(&front.core, headers, request.extensions())
        .await
    {
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

/// Where the endpoint listens: loopback unless asked otherwise. Beyond
/// loopback, an endpoint that lets anonymous clients in, or carries
/// tokens in clear text, gets a warning.
pub(crate) fn warn_if_exposed(addr: SocketAddr, tls: bool, identity_required: bool) {
    if addr.ip().is_loopback() {
        return;
    }
    if !identity_required {
        tracing::warn!(
            %addr,
            "the MCP endpoint listens beyond loopback and its policy lets anonymous clients in \
             ([spec.identity] require = \"identity\" refuses them): anyone who can reach it can call the tools"
        );
    }
    if !tls {
        tracing::warn!(
            %addr,
            "the MCP endpoint listens beyond loopback without --tls: API tokens cross the network in clear text"
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
