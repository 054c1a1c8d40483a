//! The state every task of a session shares, and the decisions made on it:
//! which client messages go to the server, which server messages go to the
//! client, and what a kernel event means for the requests in flight.
//!
//! Transports (stdio, Streamable HTTP) call in with a *scope*: the MCP
//! session a message belongs to ("" on stdio, the `Mcp-Session-Id` on HTTP),
//! so that two HTTP sessions may both use request id 1.
use std::{
    collections::HashSet,
    fmt::Write as _,
    fs::File,
    io::{BufWriter, Write as _},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

mod events;

use mcpwarden_sandbox::SessionCgroup;
use serde_json::{Value, json};

use super::{
    gate::Gate,
    pins::Registry,
    psi::{Outcome, Psi},
    record,
    trust::TrustBook,
};
use crate::{
    inspect::scan,
    kernel::SessionTracer,
    metrics::{self, Counter},
    monotonic_ns,
    policy::{Policy, agents::Peer, expr::SessionStats},
    proxy::{
        message::{Message, RequestId, code, error_response},
        tracker::Tracker,
    },
    trust::{Kind, Signal},
};

/// mcpwarden's own answer to a request that will not get the server's (the
/// call was killed, the server is gone): `key` is the request's scoped key,
/// so a transport with many streams knows where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub key: String,
    pub line: String,
}

/// Whether the server can still take requests.
#[derive(Debug)]
pub(crate) enum ServerState {
    Running,
    /// Gone, with the explanation later requests get.
    Gone {
        message: String,
        data: Value,
    },
}

/// The confined, traced server process tree, when mcpwarden started one
/// (an HTTP upstream may be a server mcpwarden did not start).
pub(crate) struct Confined {
    pub tracer: SessionTracer,
    pub cgroup: SessionCgroup,
}

/// Everything the tasks share.
pub(crate) struct Core {
    /// Client requests in flight (and recently answered).
    tracker: Tracker,
    /// Server-to-client requests in flight (sampling, elicitation, roots).
    server_requests: Tracker,
    pub state: ServerState,
    pub policy: Policy,
    pub confined: Option<Confined>,
    pub label: String,
    pub events: Option<BufWriter<File>>,
    pub events_path: Option<PathBuf>,
    /// The daemon's live feed (sessions run by the daemon).
    pub feed: Option<std::sync::Arc<crate::daemon::events::Feed>>,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` at start, to give events wall time.
    realtime_offset_ns: i128,
    pub counts: Counts,
    /// The client closed its side: the server's exit is expected.
    pub client_closed: bool,
    /// Who forked whom, from the session's fork events.
    parents: record::Parents,
    /// PSI, unless the policy turns it off.
    pub psi: Option<Psi>,
    /// The policy's tool rules, applied to every call.
    pub gate: Gate,
    /// Answers for requests failed outside a kernel event (a policy kill),
    /// sent with the next drain.
    pub(super) pending: Vec<Reply>,
    /// The tool registry, when the policy pins.
    pub registry: Option<Registry>,
    /// Tools the registry quarantined in this session.
    pub(super) quarantined: HashSet<String>,
    /// The agent's and the server's trust.
    pub trust: Option<TrustBook>,
}

#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub events: u64,
    pub killed: u64,
    pub alerts: u64,
    pub denied: u64,
    /// Messages PSI stopped.
    pub psi_blocked: u64,
    /// Messages PSI flagged (stopped or not).
    pub psi_flagged: u64,
    /// Tool calls forwarded to the server.
    pub calls: u64,
    /// Tool calls the policy's rules stopped.
    pub policy_blocked: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("label", &self.label)
            .field("state", &self.state)
            .field("in_flight", &self.tracker.in_flight())
            .finish_non_exhaustive()
    }
}

pub(crate) type Shared = Arc<Mutex<Core>>;

pub(crate) fn lock(core: &Shared) -> MutexGuard<'_, Core> {
    // A panic while holding the lock is a bug; keep serving rather than
    // cascading it, the state is still consistent enough to tear down.
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Core {
    /// A session's state, before any message.
    pub fn new(
        policy: Policy,
        peer: Peer,
        confined: Option<Confined>,
        label: String,
        events: Option<BufWriter<File>>,
        events_path: Option<PathBuf>,
        server: String,
    ) -> Self {
        Self {
            gate: Gate::new(&policy, peer, server),
            pending: Vec::new(),
            registry: None,
            quarantined: HashSet::new(),
            trust: None,
            tracker: Tracker::new(),
            server_requests: Tracker::new(),
            state: ServerState::Running,
            policy,
            confined,
            label,
            events,
            events_path,
            feed: None,
            realtime_offset_ns: realtime_offset_ns(),
            counts: Counts::default(),
            client_closed: false,
            parents: record::Parents::default(),
            psi: None,
        }
    }

    /// Decides what to do with a client message: forward it (and track its
    /// requests) or answer it here (the error lines to send back).
    pub fn admit(
        &mut self,
        msg: &Message,
        body: &[u8],
        scope: &str,
        now: u64,
    ) -> Result<(), Vec<String>> {
        let started = std::time::Instant::now();
        let verdict = self.judge_client(msg, body, scope, now);
        metrics::CLIENT_LATENCY.observe(started.elapsed());
        metrics::add(Counter::ClientMessages, 1);
        verdict
    }

    fn judge_client(
        &mut self,
        msg: &Message,
        body: &[u8],
        scope: &str,
        now: u64,
    ) -> Result<(), Vec<String>> {
        let requests = requests_of(msg, scope);
        if let ServerState::Gone { message, data } = &self.state {
            return Err(requests
                .iter()
                .map(|(id, _, _)| {
                    error_response(Some(id), code::SERVER_GONE, message, Some(data.clone()))
                })
                .collect());
        }
        let mut seen = HashSet::new();
        let duplicate = requests
            .iter()
            .any(|(id, _, _)| !seen.insert(&id.key) || self.tracker.is_open(id));
        if duplicate {
            return Err(requests
                .iter()
                .map(|(id, _, _)| {
                    error_response(
                        Some(id),
                        code::INVALID_REQUEST,
                        "mcpwarden: request id is already in flight",
                        None,
                    )
                })
                .collect());
        }
        // Responses answer the server's own requests (sampling,
        // elicitation, roots): one to a request the server never made, or
        // already had answered, is dropped.
        if let Message::Response { id, .. } = msg
            && self
                .server_requests
                .close(&id.in_scope(scope), now)
                .is_none()
        {
            tracing::warn!(id = %id.key, "dropping a client response to no server request in flight");
            return Err(Vec::new());
        }
        if let Err(line) = self.gate_calls(msg, body, now) {
            return Err(vec![line]);
        }
        if let Message::Request { id, method, tool } = msg
            && let Some(point) = scan::point(method, true)
            && let Some(psi) = &self.psi
        {
            let outcome = psi.inspect(body, point, id, method, tool.as_deref());
            if let Some(line) = self.psi_outcome(outcome) {
                return Err(vec![line]);
            }
        }
        if let Message::Batch(items) = msg {
            for item in items {
                if let Message::Response { id, .. } = item {
                    let _ = self.server_requests.close(&id.in_scope(scope), now);
                }
            }
        }
        for (id, method, tool) in requests {
            if method == "tools/call" {
                self.counts.calls += 1;
                metrics::add(Counter::ToolCalls, 1);
            }
            // Cannot fail: duplicates were ruled out above.
            let _ = self
                .tracker
                .open(id, method.to_owned(), tool.map(str::to_owned), now);
        }
        Ok(())
    }

    /// What the session has seen, for policy conditions.
    pub(super) fn stats(&self) -> SessionStats {
        SessionStats {
            calls: self.counts.calls,
            blocked: self.counts.policy_blocked + self.counts.psi_blocked + self.counts.killed,
            alerts: self.counts.alerts,
            flagged: self.counts.psi_flagged,
        }
    }

    /// Appends a record (policy, PSI) to the events file.
    pub(super) fn write_record(&mut self, mut record: Value) {
        if self.events.is_none() && self.feed.is_none() {
            return;
        }
        record["session"] = Value::String(self.label.clone());
        record["ts_ns"] = json!(monotonic_ns());
        if let Some(w) = &mut self.events
            && let Err(e) = writeln!(w, "{record}").and_then(|()| w.flush())
        {
            tracing::error!("cannot write events file: {e}");
        }
        if let Some(feed) = &self.feed {
            feed.publish(&record.to_string());
        }
    }

    /// Stops tracking requests whose answers cannot come any more (the
    /// upstream refused the HTTP request that carried them), answering each
    /// still in flight with `code` and `message`. The kernel's events are
    /// judged first: when the upstream went away because the kernel killed
    /// it, the kill's verdict answers the requests, not the broken
    /// connection.
    pub fn fail(&mut self, ids: &[RequestId], code: i64, message: &str) -> Vec<Reply> {
        let mut out = self.drain_events();
        let now = monotonic_ns();
        out.extend(
            ids.iter()
                .filter_map(|id| self.tracker.close(id, now))
                .map(|r| Reply {
                    key: r.id.key.clone(),
                    line: error_response(Some(&r.id), code, message, None),
                }),
        );
        out
    }

    /// Stops tracking requests another answer already settled (the
    /// upstream's HTTP error, or a JSON answer that did not include them).
    /// No replies, and no kernel events judged here: what those answer
    /// goes out with the next drain.
    pub fn untrack(&mut self, ids: &[RequestId]) {
        let now = monotonic_ns();
        for id in ids {
            let _ = self.tracker.close(id, now);
        }
    }

    /// Asks the server's processes to stop (SIGTERM), if mcpwarden started
    /// them: an HTTP server has no stdin to close.
    pub fn terminate_tree(&self) {
        let Some(confined) = &self.confined else {
            return;
        };
        for pid in confined.cgroup.pids().unwrap_or_default() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Kills the server's process tree, if mcpwarden started it.
    pub fn kill_tree(&self) {
        if let Some(confined) = &self.confined
            && let Err(e) = confined.cgroup.kill()
        {
            tracing::error!("cannot kill the session cgroup: {e}");
        }
    }

    /// Bookkeeping for a server message. First judges every kernel event
    /// already in the ring buffer: whatever the server did before it wrote
    /// this message is in there, so a response never reaches the client
    /// ahead of the verdict on the actions that produced it. Returns whether
    /// to forward the message, and replies for requests a kill failed.
    pub fn on_server_message(
        &mut self,
        msg: &Message,
        body: &[u8],
        scope: &str,
        now: u64,
    ) -> (bool, Vec<Reply>) {
        let started = std::time::Instant::now();
        let verdict = self.judge_server(msg, body, scope, now);
        metrics::SERVER_LATENCY.observe(started.elapsed());
        metrics::add(Counter::ServerMessages, 1);
        verdict
    }

    fn judge_server(
        &mut self,
        msg: &Message,
        body: &[u8],
        scope: &str,
        now: u64,
    ) -> (bool, Vec<Reply>) {
        let mut replies = self.drain_events();
        if !matches!(self.state, ServerState::Running) {
            tracing::warn!("dropping a message from a tool server that was stopped");
            return (false, replies);
        }
        let forward = match msg {
            Message::Response { id, is_error } => {
                let Some(request) = self.tracker.close(&id.in_scope(scope), now) else {
                    tracing::warn!(id = %id.key, "dropping a server response to no request in flight");
                    return (false, replies);
                };
                // The registry first: PSI reads the list the client will see.
                let mut listed = None;
                if request.method == "tools/list"
                    && let Some(registry) = &self.registry
                {
                    let l = registry.on_list(body, &request.id);
                    for r in &l.records {
                        self.write_record(r.clone());
                    }
                    let n = l.records.len() as u64;
                    self.counts.alerts += n;
                    metrics::add(Counter::Alerts, n);
                    for _ in 0..l.violations {
                        self.trust_note(Kind::Server, Signal::PinViolation);
                    }
                    self.quarantined.extend(l.quarantined.iter().cloned());
                    listed = l.replace;
                }
                let body = listed.as_deref().map_or(body, str::as_bytes);
                let outcome = match (&self.psi, scan::point(&request.method, false)) {
                    (Some(psi), Some(point)) => psi.inspect(
                        body,
                        point,
                        &request.id,
                        &request.method,
                        request.tool.as_deref(),
                    ),
                    _ => Outcome::Clean,
                };
                if let Some(line) = self.psi_outcome(outcome).or(listed) {
                    replies.push(Reply {
                        key: request.id.key.clone(),
                        line,
                    });
                    false
                } else {
                    if request.method == "tools/call" && !is_error {
                        self.trust_note(Kind::Agent, Signal::CleanCall);
                        self.trust_note(Kind::Server, Signal::CleanCall);
                    }
                    true
                }
            }
            Message::Request { id, method, .. } => {
                // Server-to-client requests are tracked like the client's.
                let fresh = self
                    .server_requests
                    .open(id.in_scope(scope), method.clone(), None, now)
                    .is_ok();
                if !fresh {
                    tracing::warn!(id = %id.key, "dropping a server request whose id is already in flight");
                }
                fresh
            }
            Message::Batch(items) => {
                for item in items {
                    match item {
                        Message::Response { id, .. } => {
                            let _ = self.tracker.close(&id.in_scope(scope), now);
                        }
                        Message::Request { id, method, .. } => {
                            let _ = self.server_requests.open(
                                id.in_scope(scope),
                                method.clone(),
                                None,
                                now,
                            );
                        }
                        _ => {}
                    }
                }
                true
            }
            Message::Notification { .. } => true,
        };
        (forward, replies)
    }

    /// Records what PSI flagged; returns the line that replaces the message
    /// when it is blocked.
    fn psi_outcome(&mut self, outcome: Outcome) -> Option<String> {
        let Outcome::Flagged {
            mut record,
            replace,
        } = outcome
        else {
            return None;
        };
        self.counts.psi_flagged += 1;
        metrics::add(Counter::PsiFlagged, 1);
        if replace.is_some() {
            self.counts.psi_blocked += 1;
            metrics::add(Counter::PsiBlocked, 1);
        } else {
            self.counts.alerts += 1;
            metrics::add(Counter::Alerts, 1);
        }
        record["policy"] = Value::String(self.policy.source.clone());
        let (kind, signal) = match record["point"].as_str() {
            Some("arguments") => (Kind::Agent, Signal::InjectionSent),
            Some("descriptions") => (Kind::Server, Signal::PoisonedDescription),
            _ => (Kind::Server, Signal::InjectionReturned),
        };
        self.trust_note(kind, signal);
        self.write_record(record);
        replace
    }

    /// The server is gone: answers every request in flight with `reply`
    /// (code, message), forgets its own pending requests, and makes every
    /// later request get `later`.
    pub(super) fn end_server(
        &mut self,
        reply: (i64, &str),
        later: String,
        data: Value,
    ) -> Vec<Reply> {
        let now = monotonic_ns();
        let (code, message) = reply;
        let out = self
            .tracker
            .fail_all(now)
            .iter()
            .map(|r| Reply {
                key: r.id.key.clone(),
                line: error_response(Some(&r.id), code, message, Some(data.clone())),
            })
            .collect();
        self.server_requests.fail_all(now);
        self.state = ServerState::Gone {
            message: later,
            data,
        };
        out
    }

    /// The server closed its output: fail what is in flight.
    pub fn server_gone(&mut self, how: &str) -> Vec<Reply> {
        let mut out = self.drain_events();
        if matches!(self.state, ServerState::Running) {
            let mut message = format!("mcpwarden: the tool server {how}");
            if !how.contains("status 0") {
                let _ = write!(
                    message,
                    " (it runs sandboxed as uid {}: if it was refused a file, a port or a \
                     system call, its stderr says so; see `mcpwarden sandbox explain --policy {}`)",
                    self.policy.sandbox.uid, self.policy.source
                );
            }
            if self.client_closed && self.tracker.in_flight() == 0 {
                tracing::info!("the tool server {how} after the client closed");
            } else {
                tracing::warn!("{message}");
                self.trust_note(Kind::Server, Signal::ServerFailure);
            }
            let data = json!({ "action": "server_exited", "detail": how });
            let reply = message.clone();
            out.extend(self.end_server((code::SERVER_GONE, &reply), message, data));
        }
        out
    }
}

/// The requests in a message, their ids in `scope`: (id, method, tool).
fn requests_of<'m>(msg: &'m Message, scope: &str) -> Vec<(RequestId, &'m str, Option<&'m str>)> {
    match msg {
        Message::Request { id, method, tool } => {
            vec![(id.in_scope(scope), method.as_str(), tool.as_deref())]
        }
        Message::Batch(items) => items.iter().flat_map(|m| requests_of(m, scope)).collect(),
        _ => Vec::new(),
    }
}

/// The scoped ids of the requests in a message (where their answers go).
pub(crate) fn request_ids(msg: &Message, scope: &str) -> Vec<RequestId> {
    requests_of(msg, scope)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect()
}

/// The scoped key of the (first) response in a server message.
pub(crate) fn response_key(msg: &Message, scope: &str) -> Option<String> {
    match msg {
        Message::Response { id, .. } => Some(id.in_scope(scope).key),
        Message::Batch(items) => items.iter().find_map(|m| response_key(m, scope)),
        _ => None,
    }
}

fn realtime_offset_ns() -> i128 {
    let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).map_or(0, |t| {
        i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
    });
    real - i128::from(monotonic_ns())
}
