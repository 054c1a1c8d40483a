//! Host mode of the HTTP endpoint: a stdio tool server served as a
//! Streamable HTTP server. A stdio server holds one MCP session, so the
//! endpoint does too: the first `initialize` gets an `Mcp-Session-Id`, every
//! later request must carry it, and DELETE ends the session (and the run).
use std::sync::{Mutex, MutexGuard};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::{mpsc, watch};

use super::{
    core::{lock, request_ids},
    http_front::{Checked, Front, Refusal, accepts_both, refuse, refused, sse_body, sse_response},
    route::ToServer,
};
use crate::{
    monotonic_ns,
    proxy::{
        message::{Message, code},
        streams::{Conflict, STREAM_QUEUE},
        upstream::{LAST_EVENT_ID, PROTOCOL_VERSION, SESSION_ID},
    },
};

/// Protocol versions of MCP that use this transport.
pub const KNOWN_VERSIONS: &[&str] = &["2025-03-26", "2025-06-18", "2025-11-25"];

#[derive(Debug, Default)]
struct Session {
    id: Option<String>,
    /// The version the client asked for at `initialize`.
    requested: Option<String>,
    ended: bool,
}

/// The one MCP session of a stdio server behind the endpoint.
#[derive(Debug)]
pub(crate) struct Host {
    to_server: ToServer,
    session: Mutex<Session>,
    /// Turned true by DELETE: the run ends.
    stop: watch::Sender<bool>,
}

impl Host {
    pub fn new(to_server: ToServer, stop: watch::Sender<bool>) -> Self {
        Self {
            to_server,
            session: Mutex::new(Session::default()),
            stop,
        }
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        self.session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks the session header (and protocol version) of a request that
    /// is not `initialize`.
    fn check_session(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let session = self.session();
        let given = headers.get(SESSION_ID).and_then(|v| v.to_str().ok());
        match (&session.id, given) {
            (None, _) => {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "mcpwarden: no MCP session yet: send initialize first".to_owned(),
                ));
            }
            (Some(_), None) => {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "mcpwarden: the Mcp-Session-Id header is required".to_owned(),
                ));
            }
            (Some(id), Some(given)) if id != given || session.ended => {
                return Err(Refusal(
                    StatusCode::NOT_FOUND,
                    "mcpwarden: no such MCP session (it ended, or never was)".to_owned(),
                ));
            }
            _ => {}
        }
        if let Some(version) = headers.get(PROTOCOL_VERSION) {
            let version = version.to_str().unwrap_or_default();
            let known =
                KNOWN_VERSIONS.contains(&version) || session.requested.as_deref() == Some(version);
            if !known {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    format!("mcpwarden: unsupported MCP-Protocol-Version {version:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Starts the session on `initialize`: returns the new session id.
    fn initialize(&self, body: &[u8]) -> Result<String, Refusal> {
        let mut session = self.session();
        if session.id.is_some() {
            return Err(Refusal(StatusCode::CONFLICT, "mcpwarden: this endpoint serves a stdio tool server, which holds one MCP session, and it has one; start another `mcpwarden run` for another session".to_owned(),
            ));
        }
        let id = new_session_id().map_err(|e| {
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("mcpwarden: cannot make a session id: {e}"),
            )
        })?;
        session.requested = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/params/protocolVersion")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            });
        session.id = Some(id.clone());
        Ok(id)
    }

    pub async fn post(&self, front: &Front, headers: &HeaderMap, checked: Checked) -> Response {
        let Checked { body, msg } = checked;
        let is_initialize =
            matches!(&msg, Message::Request { method, .. } if method == "initialize");
        if !accepts_both(headers) {
            return refuse(
                StatusCode::NOT_ACCEPTABLE,
                code::INVALID_REQUEST,
                "mcpwarden: a client must accept both application/json and text/event-stream",
            );
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::INVALID_REQUEST,
                "mcpwarden: the body must be application/json",
            );
        }
        let new_session = if is_initialize {
            match self.initialize(&body) {
                Ok(id) => Some(id),
                Err(r) => return r.into_response(),
            }
        } else {
            if let Err(r) = self.check_session(headers) {
                return r.into_response();
            }
            None
        };
        if let Err(replies) = lock(&front.core).admit(&msg, &body, "", monotonic_ns()) {
            return refused(&replies);
        }
        let keys: Vec<String> = request_ids(&msg, "").into_iter().map(|id| id.key).collect();
        if keys.is_empty() {
            // Notifications and responses: accepted, nothing comes back.
            if !self.to_server.send(body.to_vec(), &msg).await {
                tracing::warn!("the tool server no longer reads its input");
            }
            return StatusCode::ACCEPTED.into_response();
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = front.router.open(&keys, tx, false);
        let priming = front.router.prime(stream);
        // The stream is registered before the server can answer.
        let _ = self.to_server.send(body.to_vec(), &msg).await;
        let mut out = HeaderMap::new();
        if let Some(id) = new_session.and_then(|id| HeaderValue::from_str(&id).ok()) {
            out.insert(SESSION_ID, id);
        }
        sse_response(out, sse_body(priming.into_iter().collect(), rx))
    }

    pub fn get(&self, front: &Front, headers: &HeaderMap) -> Response {
        if !accepts(headers) {
            return refuse(
                StatusCode::NOT_ACCEPTABLE,
                code::INVALID_REQUEST,
                "mcpwarden: the GET stream is text/event-stream",
            );
        }
        if let Err(r) = self.check_session(headers) {
            return r.into_response();
        }
        let last = headers.get(LAST_EVENT_ID).and_then(|v| v.to_str().ok());
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        match front.router.attach_get(tx, last) {
            Ok((Some(stream), mut replay)) => {
                if replay.is_empty() {
                    replay.extend(front.router.prime(stream));
                }
                sse_response(HeaderMap::new(), sse_body(replay, rx))
            }
            Ok((None, replay)) => {
                // The stream being resumed has ended: its replay, then EOF.
                drop(rx);
                let (_, closed) = mpsc::channel(1);
                sse_response(HeaderMap::new(), sse_body(replay, closed))
            }
            Err(Conflict) => refuse(
                StatusCode::CONFLICT,
                code::INVALID_REQUEST,
                "mcpwarden: a GET stream is already open for this session",
            ),
        }
    }

    pub fn delete(&self, headers: &HeaderMap) -> Response {
        if let Err(r) = self.check_session(headers) {
            return r.into_response();
        }
        self.session().ended = true;
        tracing::info!("the client ended its MCP session (DELETE)");
        let _ = self.stop.send(true);
        StatusCode::OK.into_response()
    }
}

fn accepts(headers: &HeaderMap) -> bool {
    super::http_front::accepts(headers, "text/event-stream")
}

/// 128 random bits as hex: unguessable, visible ASCII as the spec asks.
fn new_session_id() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    }))
}
