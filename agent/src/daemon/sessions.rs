//! Sessions the daemon runs for its clients.
//!
//! `mcpwarden run` (any user) connects to the daemon's Unix socket and asks
//! with `POST /api/v1/sessions` and `Upgrade: mcpwarden-session/1`. After
//! `101 Switching Protocols` the connection carries one line each way, the
//! [`StartRequest`] and the [`StartReply`], then the client's MCP stream
//! (newline-delimited JSON-RPC) in both directions, inspected here.
//!
//! What the client says is taken only for what it cannot fake: who it is
//! comes from the kernel (peer credentials), its environment and working
//! directory from /proc; its server runs as its own uid, never another
//! one. The daemon does not read the policy file: the client sends the
//! text it can read.
//!
//! Fail-closed: a session ends with its client's connection; the daemon
//! stopping ends every session and kills its server; the daemon dying
//! kills every sandbox with it (the exec helper dies with the daemon, the
//! namespace init with the helper), and the next start removes what is
//! left and closes the records of sessions it did not see end.
use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::ffi::OsStringExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader},
    sync::{Notify, watch},
};

use super::{
    api::{Api, Caller},
    records::{SessionRecord, save_off_thread},
};
use crate::{
    policy::{Policy, agents::Peer},
    session::{self, ClientIo, Launch, RunOptions},
    store::unix_now,
};

/// The `Upgrade` protocol of a session.
pub const UPGRADE: &str = "mcpwarden-session/1";
/// The route that starts one.
pub const ROUTE: &str = "/api/v1/sessions";
/// The start request's largest size (a policy's text and a command line).
const MAX_START: usize = 1 << 20;
/// How long a client has to send its request once connected.
const START_WAIT: Duration = Duration::from_secs(10);
/// The largest message a client may ask its session to accept.
const MAX_MESSAGE: usize = 64 << 20;

/// What a client asks for: the first line it sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartRequest {
    /// The policy's text.
    pub policy: String,
    /// Where the client read it (named in messages only).
    pub policy_path: String,
    /// The server's command line (empty: `upstream` alone, not started).
    pub command: Vec<String>,
    /// A Streamable HTTP server's URL.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub monitor: bool,
    /// Largest message accepted from either side, in bytes.
    pub max_message: usize,
}

/// The daemon's answer: the session's label, or why there is none.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StartReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The daemon's live sessions, and the signal that ends them all.
#[derive(Debug)]
pub struct Sessions {
    live: Mutex<BTreeMap<String, SessionRecord>>,
    changed: Notify,
    stop: watch::Receiver<bool>,
    /// Sessions per uid, starting or running.
    per_uid: Mutex<std::collections::HashMap<u32, usize>>,
    /// The running sessions' policies.
    pub(crate) policies: super::policies::Policies,
}

/// How many sessions one user other than root may have at once: each loads
/// kernel programs and a sandbox, so no user may exhaust the host's.
pub const MAX_PER_USER: usize = 64;

/// A user's place among the sessions, given back when dropped.
struct Slot<'a> {
    sessions: &'a Sessions,
    uid: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut per_uid = self
            .sessions
            .per_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}

impl Sessions {
    #[must_use]
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        Self {
            live: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            stop,
            per_uid: Mutex::new(std::collections::HashMap::new()),
            policies: Mutex::new(BTreeMap::new()),
        }
    }

    /// A place for one more session of `uid`, unless it has its share.
    fn reserve(&self, uid: u32) -> Result<Slot<'_>, String> {
        let mut per_uid = self
            .per_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = per_uid.entry(uid).or_default();
        if uid != 0 && *n >= MAX_PER_USER {
            return Err(format!(
                "uid {uid} already has {MAX_PER_USER} sessions, the most one user may have"
            ));
        }
        *n += 1;
        Ok(Slot {
            sessions: self,
            uid,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SessionRecord>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sessions running now.
    pub fn list(&self) -> Vec<SessionRecord> {
        self.live().values().cloned().collect()
    }

    /// Waits until every session has ended, at most `limit`; returns how
    /// many are still running.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            let left = self.live().len();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.live().len();
            }
        }
    }
}

/// Whether `request` asks for a session (an upgrade on [`ROUTE`]).
pub fn is_start(request: &Request) -> bool {
    request.method() == axum::http::Method::POST
        && request.uri().path().trim_end_matches('/') == ROUTE
        && request
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// Answers a session request: switches protocols and runs the session on
/// the connection. Sessions start only on the Unix socket, where the kernel
/// says who the client is.
pub fn start(api: Arc<Api>, caller: &Caller, mut request: Request) -> Response {
    let (Some(uid), Some(gid), Some(pid)) = (caller.uid, caller.gid, caller.pid) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "sessions start on the daemon's Unix socket only, where the kernel names the client",
        );
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let client = Client { uid, gid, pid };
                run(api, client, BufReader::new(TokioIo::new(upgraded))).await;
            }
            Err(e) => tracing::warn!(uid, pid, "a session request did not upgrade: {e}"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
    response
}

/// The client, as the kernel names it.
#[derive(Clone, Copy, Debug)]
struct Client {
    uid: u32,
    gid: u32,
    pid: i32,
}

/// Reads one line of at most `max` bytes, leaving what follows buffered.
async fn read_line(
    stream: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    loop {
        let buf = stream.fill_buf().await.map_err(|e| e.to_string())?;
        if buf.is_empty() {
            return Err("the client closed the connection before asking".into());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        stream.consume(take);
        if line.len() > max {
            return Err(format!("the session request is over {max} bytes"));
        }
        if done {
            line.pop();
            return Ok(line);
        }
    }
}

async fn reply(stream: &mut (impl AsyncWrite + Unpin), answer: &StartReply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.flush().await
}

/// One session, from its request to its end.
async fn run<S>(api: Arc<Api>, client: Client, mut stream: BufReader<S>)
where
    S: tokio::io::AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let slot = api.sessions.reserve(client.uid);
    let asked = tokio::time::timeout(START_WAIT, read_line(&mut stream, MAX_START)).await;
    let prepared = match (&slot, asked) {
        (Err(e), _) => Err(e.clone()),
        (Ok(_), Ok(Ok(line))) => prepare(&api, client, &line).await,
        (Ok(_), Ok(Err(e))) => Err(e),
        (Ok(_), Err(_)) => Err(format!(
            "no session request within {} s",
            START_WAIT.as_secs()
        )),
    };
    let (prepared, record, policy_text) = match prepared {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(uid = client.uid, pid = client.pid, "session refused: {e}");
            let _ = reply(
                &mut stream,
                &StartReply {
                    error: Some(e),
                    ..StartReply::default()
                },
            )
            .await;
            return;
        }
    };
    let label = record.session.clone();
    api.sessions.live().insert(label.clone(), record.clone());
    api.sessions
        .policies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            label.clone(),
            super::policies::LivePolicy {
                handle: prepared.policy_handle(),
                text: policy_text,
                source: record.policy.clone(),
                uid: client.uid,
                gid: client.gid,
            },
        );
    save_off_thread(&api.db, &record, "session.start").await;
    let sent = reply(
        &mut stream,
        &StartReply {
            session: Some(label.clone()),
            ..StartReply::default()
        },
    )
    .await;
    if let Err(e) = sent {
        // Still served: it sees the client gone and tears down.
        tracing::warn!(session = %label, "cannot answer the client: {e}");
    }
    let mut stop = api.sessions.stop.clone();
    let stopping = Box::pin(async move {
        let _ = stop.wait_for(|s| *s).await;
        tracing::info!("the daemon is stopping: ending the session");
    });
    let ended = prepared
        .serve(ClientIo::stream(stream, stopping), false)
        .await;
    let outcome = match ended {
        Ok(()) => "ended".to_owned(),
        Err(e) => {
            tracing::error!(session = %label, "session failed: {e}");
            format!("failed: {e}")
        }
    };
    let mut done = record;
    done.ended = Some(unix_now());
    done.outcome = Some(outcome);
    save_off_thread(&api.db, &done, "session.end").await;
    api.sessions
        .policies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&label);
    api.sessions.live().remove(&label);
    drop(slot);
    api.sessions.changed.notify_waiters();
}

/// Checks the request against what the kernel says of the client and
/// starts the server.
async fn prepare(
    api: &Api,
    client: Client,
    line: &[u8],
) -> Result<(session::Prepared, SessionRecord, String), String> {
    let ask: StartRequest =
        serde_json::from_slice(line).map_err(|e| format!("bad session request: {e}"))?;
    let proc = ProcessView::read(client)?;
    let invoker = mcpwarden_sandbox::Invoker {
        uid: client.uid,
        gid: client.gid,
    };
    let mut policy =
        Policy::parse_for(&ask.policy, &ask.policy_path, invoker).map_err(|e| e.to_string())?;
    let spec = &policy.sandbox;
    if client.uid != 0 && spec.uid != client.uid {
        return Err(format!(
            "{}: sandbox.user is {}, but a session asked for by uid {} runs its server as uid {}",
            ask.policy_path, spec.uid, client.uid, client.uid
        ));
    }
    if client.uid != 0 && spec.gid != client.gid && !proc.groups.contains(&spec.gid) {
        return Err(format!(
            "{}: sandbox.group is {}, which uid {} is not a member of",
            ask.policy_path, spec.gid, client.uid
        ));
    }
    if ask.monitor {
        policy.force_monitor();
    }
    let token = proc.var(session::TOKEN_ENV);
    // The MCP client is the parent of `run`, and its program is named from
    // there; its user is the one the kernel gave for the connection. (A
    // parent's uid proves nothing: a process whose parent exits is
    // reparented to root's init, and would pass for root, for agent rules
    // and for trust.)
    let peer = Peer {
        uid: Some(client.uid),
        gid: Some(client.gid),
        identity: session::identity_from_token(&policy, &api.state, token)
            .map_err(|e| e.to_string())?,
        ..Peer::of_process(proc.parent)
    };
    let opts = RunOptions {
        policy: PathBuf::from(&ask.policy_path),
        max_message: ask.max_message.clamp(1024, MAX_MESSAGE),
        command: ask.command.iter().map(OsString::from).collect(),
        dry_run: ask.dry_run,
        upstream: ask.upstream.clone(),
        monitor: ask.monitor,
        state: Some(api.state.clone()),
        ..RunOptions::default()
    };
    if opts.command.is_empty() && opts.upstream.is_none() {
        return Err(session::RunError::NoCommand.to_string());
    }
    let launch = Launch {
        env: Some(proc.env),
        cwd: Some(proc.cwd),
        die_with_parent: true,
        feed: Some(Arc::clone(&api.feed)),
    };
    let prepared = session::prepare(opts, policy, peer, &launch)
        .await
        .map_err(|e| e.to_string())?;
    let record = SessionRecord {
        session: prepared.label(),
        uid: client.uid,
        pid: client.pid,
        server: ask.command,
        policy: ask.policy_path,
        started: unix_now(),
        ended: None,
        outcome: None,
    };
    tracing::info!(session = %record.session, uid = client.uid, pid = client.pid, server = ?record.server, "session started for a client");
    Ok((prepared, record, ask.policy))
}

/// What /proc says of the client process.
struct ProcessView {
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    parent: u32,
    groups: Vec<u32>,
}

impl ProcessView {
    fn read(client: Client) -> Result<Self, String> {
        let proc = PathBuf::from(format!("/proc/{}", client.pid));
        let gone = |what: &str, e: std::io::Error| {
            format!("cannot read the client's {what} (pid {}): {e}", client.pid)
        };
        let status = std::fs::read_to_string(proc.join("status")).map_err(|e| gone("status", e))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|v| v.parse::<u32>().ok())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        // The pid is the one the kernel gave at connect; a process that
        // exited and whose pid was reused would show another user.
        if field("Uid:").first() != Some(&client.uid) {
            return Err(format!(
                "the client (pid {}) is gone or changed user",
                client.pid
            ));
        }
        let environ = std::fs::read(proc.join("environ")).map_err(|e| gone("environment", e))?;
        let env = environ
            .split(|&b| b == 0)
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let i = kv.iter().position(|&b| b == b'=')?;
                Some((
                    OsString::from_vec(kv[..i].to_vec()),
                    OsString::from_vec(kv[i + 1..].to_vec()),
                ))
            })
            .collect();
        let cwd = std::fs::read_link(proc.join("cwd")).map_err(|e| gone("directory", e))?;
        Ok(Self {
            env,
            cwd,
            parent: field("PPid:").first().copied().unwrap_or(1),
            groups: field("Groups:"),
        })
    }

    fn var(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_at_most_its_share_and_gets_it_back() {
        let (_stop, rx) = watch::channel(false);
        let sessions = Sessions::new(rx);
        let held: Vec<_> = (0..MAX_PER_USER)
            .map(|_| sessions.reserve(1000).expect("a place"))
            .collect();
        let refused = sessions.reserve(1000).err().expect("over the share");
        assert!(
            refused.contains("uid 1000 already has 64 sessions"),
            "{refused}"
        );
        assert!(
            sessions.reserve(1001).is_ok(),
            "another user is not affected"
        );
        let root: Vec<_> = (0..=MAX_PER_USER)
            .map(|_| sessions.reserve(0).expect("root has no share"))
            .collect();
        drop(held);
        assert!(sessions.reserve(1000).is_ok(), "places come back");
        drop(root);
    }

    #[tokio::test]
    async fn a_request_line_is_read_whole_and_what_follows_stays() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = BufReader::new(server);
        client
            .write_all(b"{\"a\":1}\n{\"jsonrpc\":\"2.0\"}\n")
            .await
            .expect("write");
        let line = read_line(&mut server, 100).await.expect("a line");
        assert_eq!(line, b"{\"a\":1}");
        let mut rest = String::new();
        server.read_line(&mut rest).await.expect("the MCP stream");
        assert_eq!(rest, "{\"jsonrpc\":\"2.0\"}\n");
        client.write_all(&[b'x'; 200]).await.expect("write");
        let too_long = read_line(&mut server, 100).await.expect_err("too long");
        assert!(too_long.contains("over 100 bytes"), "{too_long}");
    }
}
