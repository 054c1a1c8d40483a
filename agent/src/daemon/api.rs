//! The daemon's HTTP API: every route of [`crate::admin::route`], each call
//! authenticated and checked against its scope before anything runs.
//!
//! Who is asking, in this order: an `Authorization: Bearer` token of a
//! registered identity, else a client certificate of the host's CA (HTTPS
//! API), else, on the Unix socket, the peer's uid: root administers. An
//! identity may use the API only with the scope it was registered with
//! (`mcpwarden agent register NAME --api read|admin`). Anything else gets
//! 401; a scope too small for the route, 403.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Instant};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State, connect_info::Connected},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    serve::IncomingStream,
};
use serde_json::{Value, json};
use tokio::{net::UnixListener, sync::watch};

use crate::{
    admin::{self, OpError, route},
    identity::{self, Scope},
    session::tls::Incoming,
    store::{Db, audit::Actor},
};

/// Where Prometheus scrapes (with a token of read scope, as every route).
pub const METRICS: &str = "/metrics";

/// The largest request body (a policy's text is the largest thing sent).
pub const MAX_BODY: usize = 1 << 20;

/// What the API serves from.
#[derive(Debug)]
pub struct Api {
    pub db: Db,
    pub state: PathBuf,
    pub started: Instant,
    /// The sessions run for clients.
    pub sessions: super::sessions::Sessions,
    /// What they see, live.
    pub feed: Arc<super::events::Feed>,
}

/// What the connection proves about the caller.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The peer's uid and pid (Unix socket: from the kernel).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// The TCP peer.
    pub addr: Option<SocketAddr>,
    /// SHA-256 of the client certificate the TLS handshake verified.
    pub cert: Option<String>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Self {
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                pid: cred.pid(),
                ..Self::default()
            },
            Err(e) => {
                // Without credentials the caller is nobody in particular.
                tracing::warn!("no peer credentials on the API socket: {e}");
                Self::default()
            }
        }
    }
}

impl Connected<IncomingStream<'_, Incoming>> for Caller {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        let conn = stream.remote_addr();
        Self {
            addr: Some(conn.addr),
            cert: conn.cert.clone(),
            ..Self::default()
        }
    }
}

/// Why a caller is turned away (the status and what it is told).
#[derive(Debug)]
struct Refused(StatusCode, String);

/// Who a request proved to be, and what it may do.
#[derive(Debug)]
struct Who {
    actor: Actor,
    scope: Scope,
}

fn router(api: Arc<Api>) -> Router {
    Router::new().fallback(handle).with_state(api)
}

/// Serves the API on the Unix socket until `stop`.
pub(crate) async fn serve_unix(api: Arc<Api>, listener: UnixListener, stop: watch::Receiver<bool>) {
    let app = router(api).into_make_service_with_connect_info::<Caller>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!("the API socket failed: {e}");
    }
}

/// Serves the API over TCP (or TLS) until `stop`.
pub(crate) async fn serve_tcp(api: Arc<Api>, listener: Incoming, stop: watch::Receiver<bool>) {
    let app = router(api).into_make_service_with_connect_info::<Caller>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!("the TCP API failed: {e}");
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mcpwarden\""),
        );
    }
    r
}

fn scope_of(i: &identity::Identity) -> Result<Who, Refused> {
    match i.api {
        Some(scope) => Ok(Who {
            actor: Actor {
                uid: None,
                name: i.name.clone(),
            },
            scope,
        }),
        None => Err(Refused(
            StatusCode::FORBIDDEN,
            format!("identity {:?} has no API scope", i.name),
        )),
    }
}

/// Who the request proves to be (see the module's documentation).
fn authenticate(db: &Db, caller: &Caller, headers: &HeaderMap) -> Result<Who, Refused> {
    let refused = |why: String| {
        tracing::warn!(uid = ?caller.uid, addr = ?caller.addr, "API call refused: {why}");
        Refused(StatusCode::UNAUTHORIZED, "authentication refused".into())
    };
    let store_failed = |e: crate::store::StoreError| {
        tracing::error!("the API cannot read identities: {e}");
        Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the identity store cannot be read".into(),
        )
    };
    if let Some(given) = headers.get(header::AUTHORIZATION) {
        let given = given.to_str().unwrap_or_default().trim();
        let Some(token) = given
            .strip_prefix("Bearer ")
            .or_else(|| given.strip_prefix("bearer "))
        else {
            return Err(refused(
                "the Authorization header is not `Bearer TOKEN`".into(),
            ));
        };
        return match identity::store::authenticate(db, token.trim()).map_err(store_failed)? {
            Ok(i) => {
                let mut who = scope_of(&i)?;
                who.actor.uid = caller.uid;
                Ok(who)
            }
            Err(e) => Err(refused(format!("token: {e}"))),
        };
    }
    if let Some(fingerprint) = &caller.cert {
        return match identity::ca::authenticate(db, fingerprint).map_err(store_failed)? {
            Ok(i) => scope_of(&i),
            Err(e) => Err(refused(format!("client certificate: {e}"))),
        };
    }
    match caller.uid {
        Some(0) => Ok(Who {
            actor: Actor {
                uid: Some(0),
                name: String::new(),
            },
            scope: Scope::Admin,
        }),
        Some(uid) => Err(refused(format!(
            "uid {uid} is not root and gave no API token (MCPWARDEN_API_TOKEN)"
        ))),
        None => Err(refused("no token and no client certificate".into())),
    }
}

async fn handle(
    State(api): State<Arc<Api>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Request,
) -> Response {
    if super::sessions::is_start(&request) {
        return super::sessions::start(api, &caller, request);
    }
    // The dashboard's page and assets hold no data: served to anyone, they
    // sign in with a token for everything else.
    if request.method() == axum::http::Method::GET
        && let Some(asset) = super::dashboard::asset(request.uri().path())
    {
        return asset;
    }
    let (parts, body) = request.into_parts();
    let who = match authenticate(&api.db, &caller, &parts.headers) {
        Ok(w) => w,
        Err(Refused(status, why)) => return error(status, &why),
    };
    // Any authenticated caller may read the metrics and the events (read
    // scope is the least there is).
    if parts.method == axum::http::Method::GET
        && let Some(answer) = super::events::route(&api.feed, parts.uri.path(), parts.uri.query())
    {
        return answer;
    }
    if parts.method == axum::http::Method::GET && parts.uri.path() == METRICS {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            crate::metrics::render(api.sessions.list().len()),
        )
            .into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a request body is at most {MAX_BODY} bytes"),
        );
    };
    if let Some(answer) = super::policies::route(
        &api.sessions.policies,
        &api.db,
        (who.scope, &who.actor),
        (parts.method.as_str(), parts.uri.path()),
        &body,
    ) {
        return answer;
    }
    let op = match route::parse(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        &body,
    ) {
        Ok(op) => op,
        Err(e) => return op_error(&e),
    };
    if who.scope < op.scope() {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "this route needs the {} scope",
                serde_json::to_value(op.scope())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        );
    }
    let health = op == admin::Op::Health;
    let job = Arc::clone(&api);
    let answer =
        tokio::task::spawn_blocking(move || admin::execute(&job.db, &job.state, &who.actor, op))
            .await
            .unwrap_or_else(|e| Err(OpError::new(500, format!("the operation failed: {e}"))));
    match answer {
        Ok(mut value) => {
            if health {
                value["uptime_s"] = api.started.elapsed().as_secs().into();
                value["sessions"] = api.sessions.list().len().into();
            }
            json_ok(&value)
        }
        Err(e) => op_error(&e),
    }
}

fn json_ok(value: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(value.to_string()),
    )
        .into_response()
}

fn op_error(e: &OpError) -> Response {
    error(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.message,
    )
}
