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
mod serve;
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
    io::BufWriter,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

pub use self::http_front::ENDPOINT;
use self::{
    core::{Confined, Core, Shared, lock},
    server::Started,
};
use crate::{
    kernel::{KernelError, SessionRules, SessionTracer},
    launch,
    policy::{
        Mode, Policy, PolicyError,
        agents::{Peer, Require},
    },
    proxy::upstream::{Upstream, UpstreamError},
};
use mcpwarden_sandbox::CgroupError;

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
            serve::serve_session(&opts, &core, started, upstream, listener, ring_fd, client).await;
        if let Some(w) = watcher {
            w.abort();
        }
        // The cgroup's removal waits for its processes to be gone, and the
        // kernel programs' detach takes its time: off the runtime's
        // threads, so the daemon's other sessions go on meanwhile.
        let ended = tokio::task::spawn_blocking(move || serve::teardown(&core, exit_rx))
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
