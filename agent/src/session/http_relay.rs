//! Relay mode of the HTTP endpoint: the tool server speaks Streamable
//! HTTP itself. Each client request goes upstream with the client's MCP
//! headers; each answer (JSON or SSE) comes back judged message by message
//! by the core; sessions, event ids and resumption stay the upstream's.
//! Request ids are scoped by the client's `Mcp-Session-Id`, so many
//! sessions share one core.
use std::sync::Arc;

use axum::{
    body::Bytes,
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::mpsc;

use super::{
    core::{lock, request_ids, response_key},
    http_front::{Checked, Front, json_response, refuse, refused, sse_body, sse_response},
    route::ToClient,
};
use crate::{
    monotonic_ns,
    proxy::{
        message::{RequestId, code},
        streams::{Frame, STREAM_QUEUE, StreamId},
        upstream::{FORWARD_REQUEST, FORWARD_RESPONSE, SESSION_ID, Upstream, is_sse},
    },
};

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

pub(crate) async fn relay_post(
    front: &Arc<Front>,
    upstream: &Upstream,
    headers: &HeaderMap,
    checked: Checked,
) -> Response {
    let scope = scope_of(headers);
    let Checked { body, msg } = checked;
    if let Err(replies) = lock(&front.core).admit(&msg, &body, &scope, monotonic_ns()) {
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
            settle(front).await;
            front.router.close(stream);
        }
        lock(&front.core).untrack(&ids);
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

/// Judges the kernel events already waiting and delivers what they
/// answer, before a stream closes: when the upstream's answer broke off
/// because the kernel killed the server, the client gets the kill's verdict
/// on this stream rather than nothing.
async fn settle(front: &Arc<Front>) {
    let replies = lock(&front.core).drain_events();
    ToClient::Http(Arc::clone(&front.router))
        .replies(replies)
        .await;
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
        let Some(msg) = incoming.message() else {
            continue;
        };
        let (forward, replies) =
            lock(&front.core).on_server_message(&msg, &incoming.data, &scope, monotonic_ns());
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
    settle(&front).await;
    let pending = front.router.close(stream);
    if !sse && !pending.is_empty() {
        // A JSON answer is complete: what it did not answer never will be.
        let left: Vec<RequestId> = ids
            .into_iter()
            .filter(|id| pending.contains(&id.key))
            .collect();
        lock(&front.core).untrack(&left);
    }
}

pub(crate) async fn relay_get(
    front: &Arc<Front>,
    upstream: &Upstream,
    headers: &HeaderMap,
) -> Response {
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

pub(crate) async fn relay_plain(
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
