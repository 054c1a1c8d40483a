//! `mcpwarden run`: one protected session.
//!
//! ```text
//! client ──► [client side] ──► core.admit ──► [server side] ──► server
//! client ◄── [client side] ◄── core.on_server_message ◄──────── server
//!                          ◄── core.drain_events ◄── kernel ring buffer
//! ```
//! Either side is stdio or Streamable HTTP ([`route`]): the client side is
//! our stdin/stdout or an HTTP endpoint ([`http_front`]); the server side is
//! the confined server's stdin/stdout or an HTTP upstream
//! ([`upstream_link`], or relayed by the endpoint). All shared state lives in
//! [`core::Core`] behind one mutex, held only for short non-blocking
//! sections. Kill decisions are made where events are drained, and every
//! server message is preceded by a drain, so a kill is always explained by
//! its rule, never as a crash.
mod client;
mod core;
mod gate;
mod http_front;
mod http_host;
mod http_relay;
mod identity;
mod pins;
mod psi;
mod record;
mod relay;
mod reload;
mod route;
mod server;
mod through_daemon;
pub(crate) mod tls;
mod trust;
mod upstream_link;

pub use self::{
    client::{ClientIo, Launch},
    identity::TOKEN_ENV,
};
pub use tls::TlsFiles;

use std::{
    ffi::OsString,
    fs::File,
    io::{BufWriter, Write as _},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use mcpwarden_sandbox::CgroupError;
use tokio::{
    process::{ChildStdin, ChildStdout},
    sync::{mpsc, watch},
    task::JoinHandle,
};

pub use self::http_front::ENDPOINT;
use self::{
    core::{Confined, Core, Shared, lock},
    http_front::{Front, Mode as FrontMode},
    http_host::Host,
    relay::{
        ServerInput, pump_events, relay_client, relay_server, server_ended, write_lines,
        write_server,
    },
    route::{ToClient, ToServer},
    server::Started,
    upstream_link::UpstreamLink,
};
use crate::{
    kernel::{KernelError, SessionRules, SessionTracer},
    launch,
    policy::{
        Mode, Policy, PolicyError,
        agents::{Peer, Require},
    },
    proxy::{
        streams::Router,
        upstream::{Upstream, UpstreamError},
    },
};

/// What wakes a session's event pump: the shared ring buffer, and records
/// another session's drain left for it.
type Wakeups = (std::os::fd::OwnedFd, Arc<tokio::sync::Notify>);

/// What `mcpwarden run` needs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Policy file.
    pub policy: PathBuf,
    /// Where to write one JSON line per kernel event.
    pub events: Option<PathBuf>,
    /// Largest message accepted from either side, in bytes.
    pub max_message: usize,
    /// The server command and its arguments (none: an upstream that
    /// mcpwarden does not start).
    pub command: Vec<OsString>,
    /// Run with throw-away copies of the writable paths.
    pub dry_run: bool,
    /// Serve clients on this address (Streamable HTTP) instead of stdio.
    pub listen: Option<SocketAddr>,
    /// The server speaks Streamable HTTP at this URL instead of stdio.
    pub upstream: Option<String>,
    /// Serve the endpoint over TLS, with client certificates (None: plain
    /// HTTP).
    pub tls: Option<TlsFiles>,
    /// Browser origins allowed on the endpoint besides loopback ones.
    pub allow_origins: Vec<String>,
    /// The global monitor switch: apply the policy without stopping
    /// anything.
    pub monitor: bool,
    /// The tool registry's state directory (None: the default).
    pub state: Option<PathBuf>,
}

/// The server's name for a legacy policy without `metadata.name`: its
/// command line, or its URL.
fn server_label(opts: &RunOptions) -> String {
    if opts.command.is_empty() {
        return opts.upstream.clone().unwrap_or_default();
    }
    opts.command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a session could not start or end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Starting a confined server needs root.
    #[error(
        "mcpwarden run must run as root to start a server confined (it loads kernel programs and creates cgroups)"
    )]
    NotRoot,
    /// No server command was given.
    #[error(
        "no server command given: mcpwarden run --policy FILE [--upstream URL] -- CMD [ARGS...], or --upstream URL alone for a server mcpwarden does not start"
    )]
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
    /// The tool registry refused the server or cannot be used.
    #[error("tool registry: {0}")]
    Registry(String),
    /// The client's API token is missing, refused, or cannot be checked.
    #[error("identity: {0}")]
    Identity(String),
    /// A running daemon holds the store this session would use.
    #[error("{0}")]
    DaemonHolds(String),
    /// The daemon did not start the session, or ended it.
    #[error("{0}")]
    Daemon(String),
    /// No daemon answers, and this user may not run a session alone.
    #[error(
        "no mcpwarden daemon answers on {0} (start it: systemctl start mcpwarden); only root may run a session without it"
    )]
    NoDaemon(String),
    /// The HTTPS endpoint cannot be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// PSI is on and its model cannot be loaded.
    #[error("PSI (prompt injection inspection): {0}")]
    Inspect(#[from] crate::inspect::encoder::EncoderError),
    /// The upstream URL is unusable.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The server started but never answered at its URL.
    #[error("the tool server did not start serving at {url}: {why}")]
    UpstreamDown {
        /// The upstream URL.
        url: String,
        /// What happened instead.
        why: String,
    },
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

/// Runs one session to its end. Returns when the client is done (stdin
/// closed, or DELETE of its HTTP session) or on SIGINT/SIGTERM, after the
/// server, its cgroup and the kernel programs are gone.
///
/// A stdio session goes through the daemon when one answers on its socket
/// (and no `--state` asks for a store of this run's own); otherwise, or for
/// an HTTP endpoint, this process runs it, which takes root.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let confine = !opts.command.is_empty();
    if !confine && opts.upstream.is_none() {
        return Err(RunError::NoCommand);
    }
    let socket = crate::admin::client::socket_path();
    if opts.listen.is_none() && opts.state.is_none() && through_daemon::answers(&socket).await {
        return through_daemon::run(&opts, &socket).await;
    }
    if confine && !nix::unistd::geteuid().is_root() {
        return Err(if opts.listen.is_none() && opts.state.is_none() {
            RunError::NoDaemon(socket.display().to_string())
        } else {
            RunError::NotRoot
        });
    }
    let mut policy = Policy::load(&opts.policy)?;
    if opts.monitor {
        tracing::warn!("--monitor: nothing is stopped, every violation is recorded");
        policy.force_monitor();
    }
    let state = crate::store::state_dir(opts.state.as_deref());
    refuse_if_a_daemon_holds(&state).await?;
    // Who the client is: over HTTP, what each request proves (nothing
    // about a TCP peer is proven); on stdio, the parent process and the
    // token it was given.
    let peer = if opts.listen.is_some() {
        Peer::default()
    } else {
        Peer {
            identity: identity::from_token(
                &policy,
                &state,
                std::env::var(identity::TOKEN_ENV).ok(),
            )?,
            ..Peer::parent()
        }
    };
    let launch = Launch {
        die_with_parent: true,
        ..Launch::default()
    };
    let prepared = prepare(opts, policy, peer, &launch).await?;
    prepared.serve(ClientIo::process(), true).await
}

/// The identity a stdio client's token proves (see `identity::from_token`).
pub(crate) fn identity_from_token(
    policy: &Policy,
    state: &std::path::Path,
    token: Option<String>,
) -> Result<Option<crate::policy::agents::Proven>, RunError> {
    identity::from_token(policy, state, token)
}

/// A session whose server is started and whose kernel programs are loaded,
/// ready to serve its client.
pub(crate) struct Prepared {
    opts: RunOptions,
    core: Shared,
    started: Option<Started>,
    upstream: Option<Upstream>,
    listener: Option<tls::Incoming>,
    ring_fd: Option<Wakeups>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("label", &self.label())
            .finish_non_exhaustive()
    }
}

/// Loads what the session needs (PSI's model, the tool registry, the
/// endpoint, the kernel programs) and starts the server confined. Anything
/// missing is an error here, before the client is served.
pub(crate) async fn prepare(
    opts: RunOptions,
    policy: Policy,
    peer: Peer,
    launch: &Launch,
) -> Result<Prepared, RunError> {
    let confine = !opts.command.is_empty();
    let state = crate::store::state_dir(opts.state.as_deref());
    let server = policy.server_name(&server_label(&opts));
    let registry = pins::registry_for(&opts, &policy, &server)?;
    for warning in policy.warnings() {
        tracing::warn!("{warning}");
    }
    // PSI's model loads before anything starts: a missing model is an
    // error up front, never a session silently uninspected.
    let psi = psi::load(&policy.inspect)?;
    let upstream = opts
        .upstream
        .as_deref()
        .map(|url| Upstream::new(url, opts.max_message))
        .transpose()?;
    let listener = match opts.listen {
        Some(addr) => Some(bind_endpoint(addr, opts.tls.as_ref(), &state, &policy).await?),
        None => None,
    };
    let events = match &opts.events {
        Some(path) => Some(BufWriter::new(
            File::create(path)
                .map_err(io(format!("cannot create events file {}", path.display())))?,
        )),
        None => None,
    };

    let (started, confined, label) = if confine {
        let (started, confined, label) =
            start_confined(&opts, &policy, upstream.is_none(), launch)?;
        (Some(started), Some(confined), label)
    } else {
        let label = format!("relay-{}", std::process::id());
        tracing::info!(session = %label, "relaying to {} (not started by mcpwarden: no sandbox, no kernel tracing)", opts.upstream.as_deref().unwrap_or_default());
        (None, None, label)
    };
    let ring_fd = match &confined {
        Some(c) => Some((
            c.tracer
                .ring_fd()
                .map_err(io("cannot duplicate the ring buffer fd"))?,
            c.tracer.routed(),
        )),
        None => None,
    };
    let core: Shared = Arc::new(Mutex::new(Core::new(
        policy,
        peer,
        confined,
        label,
        events,
        opts.events.clone(),
        server.clone(),
    )));
    {
        let mut core = lock(&core);
        core.psi = psi;
        core.registry = registry;
        core.feed.clone_from(&launch.feed);
        let agent = trust::agent_name(&core.gate.agent);
        core.trust = Some(trust::TrustBook::open(state.clone(), agent, server));
        if let Some(p) = &core.gate.peer.identity {
            tracing::info!(identity = %p.name, roles = ?core.gate.agent.roles, "the client proved its identity ({})", identity::TOKEN_ENV);
            identity::audit_authentication(&state, &p.name, &core.label, "stdio");
        }
    }
    crate::metrics::add(crate::metrics::Counter::Sessions, 1);
    Ok(Prepared {
        opts,
        core,
        started,
        upstream,
        listener,
        ring_fd,
    })
}

/// A running session's policy, as the daemon's API changes it.
#[derive(Clone)]
pub(crate) struct PolicyHandle {
    core: Shared,
    monitor: bool,
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHandle").finish_non_exhaustive()
    }
}

impl PolicyHandle {
    /// Puts `loaded` in force as a reload does (see `reload`): the record
    /// of what happened.
    pub(crate) fn put(
        &self,
        loaded: Result<Policy, PolicyError>,
        source: &str,
    ) -> serde_json::Value {
        reload::apply(&self.core, loaded, source, self.monitor)
    }
}

impl Prepared {
    /// The session's label (`session-<pid>-<nonce>`).
    pub(crate) fn label(&self) -> String {
        lock(&self.core).label.clone()
    }

    /// A handle on the session's policy.
    pub(crate) fn policy_handle(&self) -> PolicyHandle {
        PolicyHandle {
            core: Arc::clone(&self.core),
            monitor: self.opts.monitor,
        }
    }

    /// Serves the client until it is done, then tears the session down.
    /// `watch_policy`: reload the policy file when it changes or on SIGHUP
    /// (a daemon client's policy is text it sent, not a file the daemon
    /// reads).
    pub(crate) async fn serve(self, client: ClientIo, watch_policy: bool) -> Result<(), RunError> {
        let Self {
            opts,
            core,
            started,
            upstream,
            listener,
            ring_fd,
        } = self;
        let exit_rx = started.as_ref().map(|s| s.exit_rx.clone());
        let watcher = watch_policy.then(|| {
            tokio::spawn(reload::watch(
                Arc::clone(&core),
                opts.policy.clone(),
                opts.monitor,
            ))
        });
        let result =
            serve_session(&opts, &core, started, upstream, listener, ring_fd, client).await;
        if let Some(w) = watcher {
            w.abort();
        }
        // The cgroup's removal waits for its processes to be gone, and the
        // kernel programs' detach takes its time: off the runtime's
        // threads, so the daemon's other sessions go on meanwhile.
        let ended = tokio::task::spawn_blocking(move || teardown(&core, exit_rx))
            .await
            .unwrap_or_else(|e| {
                Err(RunError::Io {
                    what: "tearing the session down".to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        result.and(ended)
    }
}

/// Loads the kernel programs, creates the session cgroup and starts the
/// server in it.
fn start_confined(
    opts: &RunOptions,
    policy: &Policy,
    stdio: bool,
    launch: &Launch,
) -> Result<(Started, Confined, String), RunError> {
    let mut spec = policy.sandbox.clone();
    spec.dry_run = opts.dry_run;
    let launch::Session {
        number: session_no,
        label,
        cgroup,
    } = launch::new_session(&spec)?;
    let mut tracer = SessionTracer::start(
        cgroup.id(),
        cgroup.path(),
        &SessionRules {
            session: session_no,
            enforce: policy.mode == Mode::Enforce,
            deny: &policy.deny,
            network: policy
                .network
                .as_deref()
                .map(|allow| (allow, policy.network_bind.as_slice())),
            events_per_second: policy.events_per_second,
            kill: policy.kernel_kill,
            results: policy.call_results,
        },
    )?;
    tracing::info!(
        session = %label, cgroup = %cgroup.path().display(), mode = %policy.mode, deny = ?policy.deny,
        "protecting {:?}", opts.command
    );
    let (started, watch_socket) = server::spawn(&cgroup, &spec, &opts.command, stdio, launch)?;
    tracer
        .watch(
            watch_socket,
            cgroup.path(),
            policy.mode == Mode::Enforce,
            policy.kernel_kill,
        )
        .map_err(io(
            "cannot start the thread that answers the sandbox's privilege calls",
        ))?;
    Ok((started, Confined { tracer, cgroup }, label))
}

/// Wires the two sides to the core and runs until the client is done.
async fn serve_session(
    opts: &RunOptions,
    core: &Shared,
    started: Option<Started>,
    upstream: Option<Upstream>,
    listener: Option<tls::Incoming>,
    ring_fd: Option<Wakeups>,
    client: ClientIo,
) -> Result<(), RunError> {
    let max = opts.max_message;
    let mut tasks = Tasks::default();
    let ClientIo {
        input,
        output,
        gone,
        stop,
    } = client;
    // The client side's sink.
    let (to_client, stdout) = match &listener {
        None => {
            let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
            tasks.writer = Some(tokio::spawn(async move {
                // An error means the client is gone; stdin's EOF ends the run.
                let _ = write_lines(rx, output).await;
            }));
            (ToClient::Stdio(tx.clone()), Some(tx))
        }
        Some(_) => (
            ToClient::Http(Arc::new(Router::new(upstream.is_none()))),
            None,
        ),
    };
    let (closing_tx, closing_rx) = watch::channel(false);
    // The server side.
    let (pipes, exit_rx) = match started {
        Some(s) => (s.pipes, Some(s.exit_rx)),
        None => (None, None),
    };
    let upstream_started = upstream.is_some() && exit_rx.is_some();
    let (to_server, stdin_pipe) = wire_server(
        core,
        upstream.as_ref(),
        pipes,
        exit_rx.as_ref(),
        listener.is_none(),
        (&to_client, &closing_rx, max),
        &mut tasks,
    )
    .await?;
    if let Some((fd, routed)) = ring_fd {
        tasks.pump = Some(tokio::spawn(pump_events(
            Arc::clone(core),
            (fd, routed),
            to_client.clone(),
        )));
    }

    let link = match &to_server {
        Some(ToServer::Http(link)) => Some(Arc::clone(link)),
        _ => None,
    };
    let client = serve_client(
        opts,
        core,
        listener,
        upstream,
        (to_server, stdin_pipe),
        &to_client,
        (stdout, input, gone),
    );
    let result = tokio::select! {
        r = client => r,
        () = stop => Ok(()),
    };
    if let Some(link) = link {
        link.close().await;
        drop(link);
    }
    lock(core).client_closed = true;
    // The server's input closes: a stdio server sees EOF and exits. An HTTP
    // server is asked with SIGTERM.
    let _ = closing_tx.send(true);
    if upstream_started {
        lock(core).terminate_tree();
    }
    drop(to_client);
    tasks.finish(exit_rx, core).await;
    result
}

/// The server's side: a stdio server's relays (its stdin written by the
/// stdio client's own task, or by a writer the HTTP endpoint shares), or an
/// HTTP upstream (waited for when mcpwarden started it, linked to a stdio
/// client). Returns where client messages go.
async fn wire_server(
    core: &Shared,
    upstream: Option<&Upstream>,
    pipes: Option<(ChildStdin, ChildStdout)>,
    exit_rx: Option<&watch::Receiver<Option<String>>>,
    stdio_client: bool,
    (to_client, closing_rx, max): (&ToClient, &watch::Receiver<bool>, usize),
    tasks: &mut Tasks,
) -> Result<(Option<ToServer>, Option<ChildStdin>), RunError> {
    let mut stdin_pipe = None;
    let to_server = match (upstream, pipes) {
        (None, Some((stdin, stdout_pipe))) => {
            let to_server = if stdio_client {
                // stdio to stdio: the client's task writes the pipe itself.
                stdin_pipe = Some(stdin);
                None
            } else {
                let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
                tasks.server_side.push(tokio::spawn(write_server(
                    Arc::clone(core),
                    rx,
                    stdin,
                    to_client.clone(),
                    closing_rx.clone(),
                )));
                Some(ToServer::Stdio(tx))
            };
            tasks.server_side.push(tokio::spawn(relay_server(
                Arc::clone(core),
                stdout_pipe,
                max,
                to_client.clone(),
                exit_rx.cloned().unwrap_or_else(|| watch::channel(None).1),
            )));
            to_server
        }
        (Some(up), _) => {
            if let Some(exit_rx) = exit_rx {
                server::wait_until_serving(up, exit_rx.clone()).await?;
                // The server's exit fails what is in flight, as on stdio.
                let (core, exit_rx, to_client) =
                    (Arc::clone(core), exit_rx.clone(), to_client.clone());
                tasks.server_side.push(tokio::spawn(async move {
                    let mut rx = exit_rx.clone();
                    let _ = rx.wait_for(Option::is_some).await;
                    server_ended(&core, exit_rx, &to_client).await;
                }));
            }
            stdio_client.then(|| {
                ToServer::Http(Arc::new(UpstreamLink::new(
                    up.clone(),
                    Arc::clone(core),
                    to_client.clone(),
                )))
            })
        }
        (None, None) => unreachable!("a stdio server always has pipes"),
    };
    Ok((to_server, stdin_pipe))
}

/// Fails at once, and says why, when a running daemon holds this store:
/// opening it would only wait and fail.
async fn refuse_if_a_daemon_holds(state: &std::path::Path) -> Result<(), RunError> {
    let socket = crate::admin::client::socket_path();
    if !socket.exists() {
        return Ok(());
    }
    let Some(Ok(health)) = crate::admin::client::request(&socket, &crate::admin::Op::Health).await
    else {
        return Ok(());
    };
    let held = health["state"].as_str().map(std::path::Path::new);
    if held.is_some_and(|h| crate::store::same_dir(h, state)) {
        return Err(RunError::DaemonHolds(format!(
            "the mcpwarden daemon (pid {}) holds the store {}: leave out --state to run the \
             session through the daemon, or give this run a store of its own",
            health["pid"],
            state.display()
        )));
    }
    Ok(())
}

/// The HTTP endpoint's listener on `addr`, with TLS when asked.
async fn bind_endpoint(
    addr: SocketAddr,
    tls: Option<&TlsFiles>,
    state: &std::path::Path,
    policy: &Policy,
) -> Result<tls::Incoming, RunError> {
    let acceptor = tls
        .map(|files| tls::acceptor(state, files))
        .transpose()
        .map_err(RunError::Tls)?;
    http_front::warn_if_exposed(
        addr,
        acceptor.is_some(),
        policy.require == Require::Identity,
    );
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(io(format!("cannot listen on {addr}")))?;
    Ok(tls::Incoming::new(tcp, acceptor))
}

/// The client's side, until the client is done: stdin to EOF, or the HTTP
/// endpoint until DELETE.
async fn serve_client(
    opts: &RunOptions,
    core: &Shared,
    listener: Option<tls::Incoming>,
    upstream: Option<Upstream>,
    (to_server, stdin_pipe): (Option<ToServer>, Option<ChildStdin>),
    to_client: &ToClient,
    (stdout, from_client, gone): (
        Option<mpsc::Sender<Vec<u8>>>,
        Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        client::Signal,
    ),
) -> Result<(), RunError> {
    let max = opts.max_message;
    match (listener, stdout) {
        (Some(listener), _) => {
            let addr = listener.local_addr().map_err(io("listener address"))?;
            let ToClient::Http(router) = to_client.clone() else {
                unreachable!("an HTTP client side has a router")
            };
            let (stop_tx, stop_rx) = watch::channel(false);
            let mode = match (upstream, to_server) {
                (Some(up), _) => FrontMode::Relay(up),
                (None, Some(to_server)) => FrontMode::Host(Host::new(to_server, stop_tx)),
                (None, None) => unreachable!("a stdio server has a writer"),
            };
            let require = lock(core).policy.require == Require::Identity;
            let front = Arc::new(Front {
                auth: identity::Auth::new(crate::store::state_dir(opts.state.as_deref()), require),
                core: Arc::clone(core),
                router,
                mode,
                max,
                origins: opts.allow_origins.clone(),
                loopback: addr.ip().is_loopback(),
            });
            let scheme = if listener.is_tls() { "https" } else { "http" };
            tracing::info!("serving MCP (Streamable HTTP) at {scheme}://{addr}{ENDPOINT}");
            http_front::serve(front, listener, stop_rx)
                .await
                .map_err(io("serving HTTP"))
        }
        (None, Some(stdout)) => {
            let input = match (stdin_pipe, to_server) {
                (Some(pipe), _) => ServerInput::Pipe(pipe),
                (None, Some(to_server)) => ServerInput::Routed(to_server),
                (None, None) => unreachable!("a stdio client always has a server side"),
            };
            tokio::select! {
                r = relay_client(Arc::clone(core), from_client, input, max, stdout) => {
                    r.map_err(io("reading the client"))
                }
                () = gone => {
                    tracing::info!("the client closed its end of our output");
                    Ok(())
                }
            }
        }
        (None, None) => unreachable!("stdio clients have stdout"),
    }
}

/// A session's background tasks.
#[derive(Default)]
struct Tasks {
    /// Our stdout's writer (stdio clients).
    writer: Option<JoinHandle<()>>,
    /// The server's input and output relays, the exit watch.
    server_side: Vec<JoinHandle<()>>,
    /// The kernel event pump (never ends on its own).
    pump: Option<JoinHandle<()>>,
}

impl Tasks {
    /// The client is gone. Gives the server a moment to exit on its own
    /// after its input closed, kills it otherwise, lets the relays pass on
    /// its last words, stops the pump, and lets the writer drain.
    async fn finish(self, exit_rx: Option<watch::Receiver<Option<String>>>, core: &Shared) {
        let grace = Duration::from_secs(3);
        if let Some(mut exit_rx) = exit_rx {
            let exited = tokio::time::timeout(grace, exit_rx.wait_for(Option::is_some))
                .await
                .is_ok();
            if !exited {
                tracing::warn!(
                    "the server did not exit within 3 s of its input closing; killing its cgroup"
                );
                lock(core).kill_tree();
                let _ = tokio::time::timeout(grace, exit_rx.wait_for(Option::is_some)).await;
            }
        }
        let wait = |task: JoinHandle<()>| async move {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        };
        for task in self.server_side {
            wait(task).await;
        }
        if let Some(pump) = self.pump {
            pump.abort();
            let _ = pump.await;
        }
        if let Some(writer) = self.writer {
            wait(writer).await;
        }
    }
}

/// Final drain, removal of the cgroup, unloading of the kernel programs.
fn teardown(
    core: &Shared,
    exit_rx: Option<watch::Receiver<Option<String>>>,
) -> Result<(), RunError> {
    drop(exit_rx);
    let mut core = lock(core);
    let _ = core.drain_events();
    let mut confined = core.confined.take();
    let (dropped, rate_limited) = confined
        .as_mut()
        .map_or((0, 0), |c| c.tracer.take_dropped());
    crate::metrics::add(crate::metrics::Counter::KernelEventsLost, dropped);
    crate::metrics::add(
        crate::metrics::Counter::KernelEventsRateLimited,
        rate_limited,
    );
    if dropped > 0 {
        tracing::error!(
            dropped,
            "events were lost: the kernel's ring buffer (shared by this process's sessions; counted since the last session ended) or this session's queue was full"
        );
    }
    if rate_limited > 0 {
        tracing::warn!(
            rate_limited,
            per_second = core.policy.events_per_second,
            "the kernel left out plain events over the session's rate limit ([kernel] events_per_second); verdicts are never left out"
        );
    }
    core.persist_trust();
    if let Some(mut w) = core.events.take() {
        w.flush().map_err(io("cannot write events file"))?;
    }
    let counts = &core.counts;
    tracing::info!(
        session = %core.label, events = counts.events, alerts = counts.alerts, kills = counts.killed,
        denied = counts.denied, dropped, rate_limited,
        events_file = ?core.events_path, "session ended"
    );
    drop(core);
    if let Some(Confined { tracer, cgroup }) = confined {
        let removed = cgroup.remove(Duration::from_secs(5));
        drop(tracer);
        removed?;
    }
    Ok(())
}
