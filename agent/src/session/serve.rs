//! A session's life once it is prepared: the two sides wired to the core,
//! the client served until it is done, the background tasks stopped and
//! the session torn down (last drain, counters, cgroup, kernel programs).
use std::{io::Write as _, sync::Arc, time::Duration};

use tokio::{
    process::{ChildStdin, ChildStdout},
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    ClientIo, ENDPOINT, RunError, RunOptions, Wakeups, client,
    core::{Confined, Shared, lock},
    http_front::{self, Front, Mode as FrontMode},
    http_host::Host,
    identity, io,
    relay::{
        ServerInput, pump_events, relay_client, relay_server, server_ended, write_lines,
        write_server,
    },
    route::{ToClient, ToServer},
    server::{self, Started},
    tls,
    upstream_link::UpstreamLink,
};
use crate::{
    policy::agents::Require,
    proxy::{streams::Router, upstream::Upstream},
};

/// Wires the two sides to the core and runs until the client is done.
pub(super) async fn serve_session(
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
pub(super) fn teardown(
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
