//! `mcpwarden run`: one protected stdio session.
//!
//! ```text
//! client stdin ──► [client task] ──► server stdin      (requests tracked)
//! client stdout ◄── [writer] ◄──┬── [server task] ◄── server stdout
//!                               └── [event task]  ◄── kernel ring buffer
//! ```
//! All shared state lives in [`Core`] behind one mutex, held only for short
//! non-blocking sections. Kill decisions are made where events are drained,
//! and the server task drains the ring buffer before it reports a server as
//! exited, so a kill is always explained by its rule, never as a crash.
mod record;
mod relay;

use std::{
    ffi::OsString,
    fmt::Write as _,
    fs::File,
    io::{BufWriter, Write as _},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use mcpwarden_sandbox::{CgroupError, SessionCgroup, Spec};
use serde_json::{Value, json};
use tokio::{
    process::{ChildStdin, ChildStdout, Command},
    sync::{mpsc, watch},
};

use self::relay::{pump_events, relay_client, relay_server, write_client};
use crate::{
    kernel::{KernelError, KernelEvent, Tracer},
    launch, monotonic_ns,
    policy::{Mode, Policy, PolicyError},
    proxy::{
        message::{self, Message, code, error_response},
        tracker::Tracker,
    },
};

/// What `mcpwarden run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Policy file.
    pub policy: PathBuf,
    /// Where to write one JSON line per kernel event.
    pub events: Option<PathBuf>,
    /// Largest message accepted from either side, in bytes.
    pub max_message: usize,
    /// The server command and its arguments.
    pub command: Vec<OsString>,
    /// Run with throw-away copies of the writable paths.
    pub dry_run: bool,
}

/// Why a session could not start or end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `run` needs root to load kernel programs and create cgroups.
    #[error("mcpwarden run must run as root (it loads kernel programs and creates cgroups)")]
    NotRoot,
    /// No server command was given.
    #[error("no server command given: mcpwarden run --policy FILE -- CMD [ARGS...]")]
    NoCommand,
    /// The policy is unusable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Cgroup set-up or teardown failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Kernel programs could not be loaded.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Whether the server can still take requests.
#[derive(Debug)]
enum ServerState {
    Running,
    /// Gone, with the explanation later requests get.
    Gone {
        message: String,
        data: Value,
    },
}

/// Everything the tasks share.
struct Core {
    /// Client requests in flight (and recently answered).
    tracker: Tracker,
    /// Server-to-client requests in flight (sampling, elicitation, roots).
    server_requests: Tracker,
    state: ServerState,
    policy: Policy,
    tracer: Tracer,
    cgroup: SessionCgroup,
    label: String,
    events: Option<BufWriter<File>>,
    events_path: Option<PathBuf>,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` at start, to give events wall time.
    realtime_offset_ns: i128,
    counts: Counts,
    /// The client closed its side: the server's exit is expected.
    client_closed: bool,
    /// Who forked whom, from the session's fork events.
    parents: record::Parents,
}

#[derive(Debug, Default)]
struct Counts {
    events: u64,
    killed: u64,
    alerts: u64,
    denied: u64,
}

type Shared = Arc<Mutex<Core>>;

fn lock(core: &Shared) -> MutexGuard<'_, Core> {
    // A panic while holding the lock is a bug; keep serving rather than
    // cascading it, the state is still consistent enough to tear down.
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Core {
    /// Decides what to do with a client message: forward it (and track its
    /// requests) or answer it here.
    fn admit(&mut self, msg: &Message, now: u64) -> Result<(), Vec<String>> {
        let requests = requests_of(msg);
        if let ServerState::Gone { message, data } = &self.state {
            return Err(requests
                .iter()
                .map(|(id, _, _)| {
                    error_response(Some(id), code::SERVER_GONE, message, Some(data.clone()))
                })
                .collect());
        }
        let mut seen = std::collections::HashSet::new();
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
            && self.server_requests.close(id, now).is_none()
        {
            tracing::warn!(id = %id.key, "dropping a client response to no server request in flight");
            return Err(Vec::new());
        }
        if let Message::Batch(items) = msg {
            for item in items {
                if let Message::Response { id, .. } = item {
                    let _ = self.server_requests.close(id, now);
                }
            }
        }
        for (id, method, tool) in requests {
            // Cannot fail: duplicates were ruled out above.
            let _ = self
                .tracker
                .open(id.clone(), method.to_owned(), tool.map(str::to_owned), now);
        }
        Ok(())
    }

    /// Bookkeeping for a server message. First judges every kernel event
    /// already in the ring buffer: whatever the server did before it wrote
    /// this message is in there, so a response never reaches the client
    /// ahead of the verdict on the actions that produced it. Returns whether
    /// to forward the message, and replies for requests a kill failed.
    fn on_server_message(&mut self, msg: &Message, now: u64) -> (bool, Vec<String>) {
        let replies = self.drain_events();
        if !matches!(self.state, ServerState::Running) {
            tracing::warn!("dropping a message from a tool server that was stopped");
            return (false, replies);
        }
        let forward = match msg {
            Message::Response { id, .. } => {
                let known = self.tracker.close(id, now).is_some();
                if !known {
                    tracing::warn!(id = %id.key, "dropping a server response to no request in flight");
                }
                known
            }
            Message::Request { id, method, .. } => {
                // Server-to-client requests are tracked like the client's.
                let fresh = self
                    .server_requests
                    .open(id.clone(), method.clone(), None, now)
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
                            let _ = self.tracker.close(id, now);
                        }
                        Message::Request { id, method, .. } => {
                            let _ =
                                self.server_requests
                                    .open(id.clone(), method.clone(), None, now);
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

    /// Reads every waiting kernel event, records it, and enforces. Returns
    /// the error responses to send for requests failed by a kill.
    fn drain_events(&mut self) -> Vec<String> {
        let mut batch = Vec::new();
        self.tracer.drain(|e| batch.push(e));
        let mut out = Vec::new();
        for event in batch {
            out.extend(self.on_event(&event));
        }
        if let Some(w) = &mut self.events
            && let Err(e) = w.flush()
        {
            tracing::error!("cannot write events file: {e}");
        }
        out
    }

    fn on_event(&mut self, event: &KernelEvent) -> Vec<String> {
        self.parents.observe(event);
        let verdict = record::judge(event, &self.policy);
        let requests = self.tracker.at(event.ts_ns);
        let line = record::event_line(
            event,
            &verdict,
            &requests,
            &self.policy,
            &self.label,
            self.realtime_offset_ns,
            self.parents.of(event),
        );
        self.counts.events += 1;
        if let Some(w) = &mut self.events
            && let Err(e) = writeln!(w, "{line}")
        {
            tracing::error!("cannot write events file: {e}");
        }
        match verdict.action {
            record::Action::Alert => {
                self.counts.alerts += 1;
                tracing::warn!(
                    "policy alert (monitor mode): {}",
                    verdict.describe(event, &self.policy)
                );
                Vec::new()
            }
            record::Action::Killed => {
                self.counts.killed += 1;
                self.kill(event, &verdict)
            }
            record::Action::Denied => {
                self.counts.denied += 1;
                tracing::warn!("{}", verdict.describe(event, &self.policy));
                Vec::new()
            }
            record::Action::Allow => Vec::new(),
        }
    }

    /// Kills the server's tree (the kernel already sent `SIGKILL` to the offending
    /// task when it caught it) and fails every request in flight.
    fn kill(&mut self, event: &KernelEvent, verdict: &record::Verdict) -> Vec<String> {
        if let Err(e) = self.cgroup.kill() {
            tracing::error!("cannot kill the session cgroup: {e}");
        }
        if !matches!(self.state, ServerState::Running) {
            return Vec::new();
        }
        let what = verdict.describe(event, &self.policy);
        tracing::error!("killed the tool server: {what}");
        let data = json!({
            "rule": verdict.rule.map(|r| self.policy.rule_name(r)),
            "kind": event.kind.as_str(),
            "path": verdict.path,
            "pid": event.pid,
            "action": "killed",
            "policy": self.policy.source,
        });
        let blocked = format!(
            "mcpwarden blocked this call: {what}; the tool server's process tree was killed"
        );
        let later = format!(
            "mcpwarden: the tool server is no longer running: it was killed because {what}; start a new session"
        );
        self.end_server((code::BLOCKED, &blocked), later, data)
    }

    /// The server is gone: answers every request in flight with `reply`
    /// (code, message), forgets its own pending requests, and makes every
    /// later request get `later`.
    fn end_server(&mut self, reply: (i64, &str), later: String, data: Value) -> Vec<String> {
        let now = monotonic_ns();
        let (code, message) = reply;
        let out = self
            .tracker
            .fail_all(now)
            .iter()
            .map(|r| error_response(Some(&r.id), code, message, Some(data.clone())))
            .collect();
        self.server_requests.fail_all(now);
        self.state = ServerState::Gone {
            message: later,
            data,
        };
        out
    }

    /// The server closed its output: fail what is in flight.
    fn server_gone(&mut self, how: &str) -> Vec<String> {
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
            }
            let data = json!({ "action": "server_exited", "detail": how });
            let reply = message.clone();
            out.extend(self.end_server((code::SERVER_GONE, &reply), message, data));
        }
        out
    }
}

/// The requests in a message: (id, method, tool).
fn requests_of(msg: &Message) -> Vec<(&message::RequestId, &str, Option<&str>)> {
    match msg {
        Message::Request { id, method, tool } => vec![(id, method.as_str(), tool.as_deref())],
        Message::Batch(items) => items.iter().flat_map(requests_of).collect(),
        _ => Vec::new(),
    }
}

fn realtime_offset_ns() -> i128 {
    let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).map_or(0, |t| {
        i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
    });
    real - i128::from(monotonic_ns())
}

/// Runs one session to its end. Returns when the client closes its input
/// (or on SIGINT/SIGTERM), after the server, its cgroup and the kernel
/// programs are gone.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RunError::NotRoot);
    }
    if opts.command.is_empty() {
        return Err(RunError::NoCommand);
    }
    let policy = Policy::load(&opts.policy)?;
    for warning in policy.warnings() {
        tracing::warn!("{warning}");
    }
    let events = match &opts.events {
        Some(path) => Some(BufWriter::new(
            File::create(path)
                .map_err(io(format!("cannot create events file {}", path.display())))?,
        )),
        None => None,
    };
    let mut spec = policy.sandbox.clone();
    spec.dry_run = opts.dry_run;
    let launch::Session {
        number: session_no,
        label,
        cgroup,
    } = launch::new_session(&spec)?;
    let mut tracer = Tracer::load()?;
    tracer.add_session(
        cgroup.id(),
        session_no,
        policy.mode == Mode::Enforce,
        &policy.deny,
        policy.network.as_deref(),
    )?;
    if policy.network.is_some() {
        tracer.attach_network(cgroup.path())?;
    }
    tracing::info!(
        session = %label, cgroup = %cgroup.path().display(), mode = %policy.mode, deny = ?policy.deny,
        "protecting {:?}", opts.command
    );

    let (server_in, server_out, exit_rx) = spawn_server(&cgroup, &spec, &opts.command)?;
    let ring_fd = tracer
        .ring_fd()
        .map_err(io("cannot duplicate the ring buffer fd"))?;
    let core: Shared = Arc::new(Mutex::new(Core {
        tracker: Tracker::new(),
        server_requests: Tracker::new(),
        state: ServerState::Running,
        policy,
        tracer,
        cgroup,
        label,
        events,
        events_path: opts.events.clone(),
        realtime_offset_ns: realtime_offset_ns(),
        counts: Counts::default(),
        client_closed: false,
        parents: record::Parents::default(),
    }));

    let (to_client, from_core) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(write_client(from_core));
    let events_task = tokio::spawn(pump_events(Arc::clone(&core), ring_fd, to_client.clone()));
    let server_task = tokio::spawn(relay_server(
        Arc::clone(&core),
        server_out,
        opts.max_message,
        to_client.clone(),
        exit_rx.clone(),
    ));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("cannot handle SIGTERM"))?;
    tokio::select! {
        r = relay_client(Arc::clone(&core), server_in, opts.max_message, to_client.clone()) => {
            if let Err(e) = r { tracing::error!("client side: {e}"); }
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = sigterm.recv() => tracing::info!("terminated"),
    }

    teardown(core, exit_rx, server_task, events_task, writer, to_client).await
}

/// Starts the server through the exec helper (`mcpwarden sandbox-exec`),
/// which joins the session cgroup before it execs the command. Returns the
/// server's pipes and a channel that will carry how it ended.
fn spawn_server(
    cgroup: &SessionCgroup,
    spec: &Spec,
    command: &[OsString],
) -> Result<(ChildStdin, ChildStdout, watch::Receiver<Option<String>>), RunError> {
    let helper = launch::helper_command(cgroup, spec, command)
        .map_err(io("cannot build the sandbox helper's command"))?;
    let mut child = Command::from(helper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("cannot start the server"))?;
    let pipe = |what: &str| io(what.to_owned())(std::io::ErrorKind::BrokenPipe.into());
    let server_in = child.stdin.take().ok_or_else(|| pipe("server stdin"))?;
    let server_out = child.stdout.take().ok_or_else(|| pipe("server stdout"))?;
    // How the server ended, once it has.
    let (exit_tx, exit_rx) = watch::channel::<Option<String>>(None);
    tokio::spawn(async move {
        let how = match child.wait().await {
            Ok(status) => match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => format!("ended ({status})"),
            },
            Err(e) => format!("could not be waited for: {e}"),
        };
        let _ = exit_tx.send(Some(how));
    });

    Ok((server_in, server_out, exit_rx))
}

/// The client is gone. Gives the server a moment to exit on its own after
/// its stdin closed, kills it otherwise, stops every task, then [`finish`]es.
async fn teardown(
    core: Shared,
    mut exit_rx: watch::Receiver<Option<String>>,
    server_task: tokio::task::JoinHandle<()>,
    events_task: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    to_client: mpsc::Sender<Vec<u8>>,
) -> Result<(), RunError> {
    lock(&core).client_closed = true;
    let grace = Duration::from_secs(3);
    if tokio::time::timeout(grace, exit_rx.wait_for(Option::is_some))
        .await
        .is_err()
    {
        tracing::warn!(
            "the server did not exit within 3 s of its input closing; killing its cgroup"
        );
        if let Err(e) = lock(&core).cgroup.kill() {
            tracing::error!("{e}");
        }
        let _ = tokio::time::timeout(grace, exit_rx.wait_for(Option::is_some)).await;
    }
    // Each task holds a handle on the core: wait until every one has ended.
    let server_abort = server_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), server_task)
        .await
        .is_err()
    {
        server_abort.abort();
    }
    events_task.abort();
    let _ = events_task.await;
    drop(to_client);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    let core = Arc::into_inner(core).ok_or_else(|| {
        io("session teardown")(std::io::Error::other(
            "a task still holds the session state",
        ))
    })?;
    finish(
        core.into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// Final drain, removal of the cgroup, unloading of the kernel programs.
fn finish(mut core: Core) -> Result<(), RunError> {
    let _ = core.drain_events();
    let dropped = core.tracer.dropped().unwrap_or(0);
    if dropped > 0 {
        tracing::error!(
            dropped,
            "the kernel dropped events: the ring buffer was full"
        );
    }
    let Core {
        tracer,
        cgroup,
        events,
        counts,
        label,
        events_path,
        ..
    } = core;
    if let Some(mut w) = events {
        w.flush().map_err(io("cannot write events file"))?;
    }
    let removed = cgroup.remove(Duration::from_secs(5));
    drop(tracer);
    tracing::info!(
        session = %label, events = counts.events, alerts = counts.alerts, kills = counts.killed,
        denied = counts.denied, dropped,
        events_file = ?events_path, "session ended"
    );
    removed.map_err(RunError::from)
}
