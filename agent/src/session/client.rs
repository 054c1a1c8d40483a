//! Where a stdio session's client is: this process's own stdin and stdout
//! (`mcpwarden run` on its own), or a stream on the daemon's socket (a
//! `mcpwarden run` that asked the daemon); and what ends the session early.
use std::{ffi::OsString, future::Future, path::PathBuf, pin::Pin};

use tokio::io::{AsyncRead, AsyncWrite};

use super::relay::stdout_closed;

/// A future that resolves once, when something has happened.
pub(crate) type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A stdio client's two directions and the signals that end its session.
pub struct ClientIo {
    pub(super) input: Box<dyn AsyncRead + Send + Unpin>,
    pub(super) output: Box<dyn AsyncWrite + Send + Unpin>,
    /// Resolves when the client stops reading for good.
    pub(super) gone: Signal,
    /// Resolves when the session must end now (SIGINT or SIGTERM; the
    /// daemon stopping).
    pub(super) stop: Signal,
}

impl std::fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIo").finish_non_exhaustive()
    }
}

impl ClientIo {
    /// This process's stdin and stdout; SIGINT and SIGTERM end the session.
    pub(crate) fn process() -> Self {
        let stop = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!("cannot handle SIGTERM ({e}); only SIGINT ends the session");
                        None
                    }
                };
            let terminated = async {
                match &mut term {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
                () = terminated => tracing::info!("terminated"),
            }
        };
        Self {
            input: Box::new(tokio::io::stdin()),
            output: Box::new(tokio::io::stdout()),
            gone: Box::pin(stdout_closed()),
            stop: Box::pin(stop),
        }
    }

    /// A stream (a daemon client's connection): its end of file is the
    /// client's; `stop` ends the session early.
    pub(crate) fn stream<S>(stream: S, stop: Signal) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (input, output) = tokio::io::split(stream);
        Self {
            input: Box::new(input),
            output: Box::new(output),
            // A client that goes away closes the stream: the reader sees
            // end of file.
            gone: Box::pin(std::future::pending()),
            stop,
        }
    }
}

/// How the server is started for a daemon client: in the client's working
/// directory and with its environment (the sandbox passes on only the
/// variables the policy names). `None`: this process's own.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The client's environment.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// The client's working directory.
    pub cwd: Option<PathBuf>,
    /// The helper dies with the process that starts it (and with it every
    /// process of the session).
    pub die_with_parent: bool,
    /// Where the session's events and records also go (the daemon's feed).
    pub feed: Option<std::sync::Arc<crate::daemon::events::Feed>>,
}
