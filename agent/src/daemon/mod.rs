//! `mcpwarden daemon`: the long-lived service. It holds the store for its
//! whole life and serves the API twice: on a Unix socket, where the
//! kernel's peer credentials say who is asking (root administers), and on
//! TCP (127.0.0.1:8000 unless told otherwise, optionally HTTPS with client
//! certificates), where a token or a certificate must. Under systemd it
//! reports READY once both listen, pets the watchdog, and stops cleanly on
//! SIGTERM (socket removed, store flushed).
pub mod api;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod policies;
pub mod records;
pub mod retention;
pub mod sessions;

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tokio::{net::UnixListener, signal::unix::SignalKind, sync::watch};

use crate::{
    session::tls::{self, Incoming, TlsFiles},
    store::{Db, state_dir},
};

/// How long a stopping daemon waits for its sessions to tear down.
const SESSION_DRAIN: std::time::Duration = std::time::Duration::from_secs(15);

/// The daemon's API address unless told otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:8000";

/// How the daemon runs.
#[derive(Debug)]
pub struct DaemonOptions {
    pub state: Option<PathBuf>,
    pub socket: PathBuf,
    /// `None`: no TCP API.
    pub api: Option<SocketAddr>,
    /// Serve the TCP API over HTTPS with client certificates.
    pub api_tls: bool,
    /// How much history the store keeps.
    pub retention: config::Retention,
    /// Watching for MCP servers started outside mcpwarden.
    pub unmanaged: crate::unmanaged::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("another daemon already answers on {0}")]
    Running(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("settings {path}: {message}")]
    Config { path: String, message: String },
    #[error(
        "cannot watch for unmanaged MCP servers ([unmanaged] action = \"off\" turns this off): {0}"
    )]
    Watch(#[from] crate::kernel::KernelError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Binds the Unix socket: its directory is made if missing, a socket left
/// by a dead daemon is replaced, a live daemon's is not. Any local user may
/// connect (0666): what each may do, the peer credentials decide.
fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Running(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(io(format!(
            "cannot remove the stale socket {}",
            path.display()
        )))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io(format!("cannot listen on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io(format!("cannot open {} to local users", path.display())))?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let state = state_dir(opts.state.as_deref());
    let db = Db::open_resident(&state)?;
    let feed = Arc::new(events::Feed::durable(db.clone()));
    // Watching starts before the socket answers: a daemon that answers is
    // one that watches.
    let watcher = crate::unmanaged::watch::Watcher::start(&opts.unmanaged, Arc::clone(&feed))?;
    // Likewise, a daemon that answers has removed what a dead one left:
    // its sandboxes, then its kernel programs.
    let closed = records::recover(&db)?;
    let unix = bind_socket(&opts.socket)?;
    let tcp = match opts.api {
        Some(addr) => {
            let acceptor = if opts.api_tls {
                Some(tls::acceptor(&state, &TlsFiles::default()).map_err(DaemonError::Tls)?)
            } else {
                None
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("cannot listen on {addr}")))?;
            Some(Incoming::new(listener, acceptor))
        }
        None => None,
    };
    retention::apply_logged(&db, opts.retention);
    if closed > 0 {
        tracing::warn!(
            closed,
            "closed the records of sessions that were running when the daemon last stopped"
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let api = Arc::new(api::Api {
        db,
        state: state.clone(),
        started: Instant::now(),
        sessions: sessions::Sessions::new(stop_rx.clone()),
        feed,
    });
    let unix_task = tokio::spawn(api::serve_unix(Arc::clone(&api), unix, stop_rx.clone()));
    let tcp_task = tcp.map(|listener| {
        let scheme = if listener.is_tls() { "https" } else { "http" };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("API at {scheme}://{addr}{}", crate::admin::route::PREFIX);
        }
        tokio::spawn(api::serve_tcp(Arc::clone(&api), listener, stop_rx.clone()))
    });
    tracing::info!(
        socket = %opts.socket.display(),
        state = %state.display(),
        "mcpwarden daemon ready"
    );
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot tell systemd we are ready: {e}");
    }
    let pruner = {
        let (db, limits) = (api.db.clone(), opts.retention);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(retention::EVERY);
            tick.tick().await; // the first pass ran at start
            loop {
                tick.tick().await;
                let (db, limits) = (db.clone(), limits);
                let _ =
                    tokio::task::spawn_blocking(move || retention::apply_logged(&db, limits)).await;
            }
        })
    };
    let watchdog = sd_notify::watchdog_enabled().map(|period| {
        tokio::spawn(async move {
            // Pet twice per period, as systemd advises.
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });
    wait_for_stop().await;
    tracing::info!("stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    // Every session ends with its server; the watchdog is still petted
    // while they tear down.
    let left = api.sessions.drain(SESSION_DRAIN).await;
    if left > 0 {
        tracing::error!(
            left,
            "sessions did not end within {} s; their sandboxes die with the daemon",
            SESSION_DRAIN.as_secs()
        );
    }
    drop(watcher);
    pruner.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = unix_task.await;
    if let Some(t) = tcp_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&opts.socket);
    api.db.flush()?;
    Ok(())
}

async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate()).ok();
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = async { match &mut term { Some(s) => s.recv().await, None => std::future::pending().await } } => {}
        _ = async { match &mut int { Some(s) => s.recv().await, None => std::future::pending().await } } => {}
    }
}
