//! The stdio tasks: the client's stdin reader and stdout writer, the
//! server's stdin writer and stdout reader, and the kernel event pump.
use std::{
    os::fd::{AsFd as _, OwnedFd},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader},
    process::{ChildStdin, ChildStdout},
    sync::{mpsc, watch},
};

use super::{
    core::{Shared, lock},
    route::{ToClient, ToServer},
};
use crate::{
    monotonic_ns,
    proxy::{
        lines::{Line, LineReader},
        message::{self, code, error_response},
    },
};

/// Writes lines to `out`: every line already queued, then one flush, so a
/// burst costs one write and a lone message is never held back. Returns
/// when the channel closes or `out` fails.
pub(super) async fn write_lines(
    mut rx: mpsc::Receiver<Vec<u8>>,
    out: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut out = tokio::io::BufWriter::with_capacity(64 << 10, out);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut line) = next {
            line.push(b'\n');
            out.write_all(&line).await?;
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    Ok(())
}

/// The server's stdin, until the channel closes or `closing` turns true
/// (an HTTP client is done). When the server stops reading, every request
/// in flight is answered.
pub(super) async fn write_server(
    core: Shared,
    rx: mpsc::Receiver<Vec<u8>>,
    server_in: impl AsyncWrite + Unpin,
    to_client: ToClient,
    mut closing: watch::Receiver<bool>,
) {
    let written = tokio::select! {
        r = write_lines(rx, server_in) => r,
        _ = closing.wait_for(|c| *c) => Ok(()),
    };
    if let Err(e) = written {
        tracing::warn!("cannot write to the server: {e}");
        let replies = stopped_reading(&core).await;
        to_client.replies(replies).await;
    }
}

/// How long a refused write waits for the server's end to be reported.
const STOPPED_READING_GRACE: Duration = Duration::from_millis(2500);

/// The server's stdin refused a write. A server that is ending also
/// closes its stdout, and [`server_ended`] answers with its exit status
/// (127 for a program that could not start): that account goes first. A
/// server that lives on without reading is answered for after a grace.
async fn stopped_reading(core: &Shared) -> Vec<super::core::Reply> {
    let deadline = tokio::time::Instant::now() + STOPPED_READING_GRACE;
    while tokio::time::Instant::now() < deadline {
        if !matches!(lock(core).state, super::core::ServerState::Running) {
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock(core).server_gone("stopped reading its input")
}

async fn send_lines(to_client: &mpsc::Sender<Vec<u8>>, lines: Vec<String>) {
    for line in lines {
        let _ = to_client.send(line.into_bytes()).await;
    }
}

/// Where a stdio client's messages go.
#[derive(Debug)]
pub(super) enum ServerInput {
    /// Straight into a stdio server's stdin, written by the client's own
    /// task: no task hop per message, and a burst costs one write.
    Pipe(ChildStdin),
    /// Through a transport (an HTTP upstream).
    Routed(ToServer),
}

/// The client's messages (our stdin, or a daemon client's stream),
/// checked and passed to the server.
pub(super) async fn relay_client(
    core: Shared,
    from_client: impl AsyncRead + Unpin,
    input: ServerInput,
    max: usize,
    to_client: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    let mut reader = LineReader::new(BufReader::new(from_client), max);
    let (mut pipe, routed) = match input {
        ServerInput::Pipe(stdin) => (
            Some(tokio::io::BufWriter::with_capacity(64 << 10, stdin)),
            None,
        ),
        ServerInput::Routed(to_server) => (None, Some(to_server)),
    };
    let mut server_open = true;
    loop {
        // Flush what was written for the server unless another complete
        // message is already waiting: bursts cost one write, a lone
        // message is never held back.
        if let Some(w) = &mut pipe
            && server_open
            && !reader.has_complete_line()
            && w.flush().await.is_err()
        {
            server_open = false;
            server_stopped_reading(&core, &to_client).await;
        }
        let line = match reader.next().await? {
            Line::Eof => return Ok(()),
            Line::TooLong { len } => {
                let msg =
                    format!("mcpwarden: message of {len} bytes exceeds the limit of {max} bytes");
                tracing::warn!("{msg}");
                let reply = error_response(None, code::INVALID_REQUEST, &msg, None);
                send_lines(&to_client, vec![reply]).await;
                continue;
            }
            Line::Complete(line) => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg = match message::parse(&line) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!("client sent {e}");
                let reply = error_response(None, e.code(), &format!("mcpwarden: {e}"), None);
                send_lines(&to_client, vec![reply]).await;
                continue;
            }
        };
        let admitted = lock(&core).admit(&msg, &line, "", monotonic_ns());
        match (admitted, &mut pipe, &routed) {
            (Err(replies), _, _) => send_lines(&to_client, replies).await,
            (Ok(()), _, _) if !server_open => {}
            (Ok(()), Some(w), _) => {
                let mut framed = line;
                framed.push(b'\n');
                if let Err(e) = w.write_all(&framed).await {
                    tracing::warn!("cannot write to the server: {e}");
                    server_open = false;
                    server_stopped_reading(&core, &to_client).await;
                }
            }
            (Ok(()), None, Some(to_server)) => {
                if !to_server.send(line, &msg).await {
                    server_open = false;
                }
            }
            (Ok(()), None, None) => unreachable!("a client relay has a server side"),
        }
    }
}

async fn server_stopped_reading(core: &Shared, to_client: &mpsc::Sender<Vec<u8>>) {
    let replies = stopped_reading(core).await;
    send_lines(to_client, replies.into_iter().map(|r| r.line).collect()).await;
}

/// Resolves when the client stops reading for good: the read end of our
/// stdout (a pipe) closed. A client that dies while mcpwarden waits on a
/// server that does not read would otherwise never be noticed, since
/// nothing is being written to it. Never resolves when stdout is not
/// something epoll can watch (a file).
pub(super) async fn stdout_closed() {
    let watched = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| {
            // SAFETY: `fd` is a fresh duplicate of stdout that only this
            // AsyncFd owns, so it stays open and names the same pipe until
            // the AsyncFd is dropped.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::ERROR)
            }
            .map_err(|e| std::io::Error::other(e.to_string()))
        });
    match watched {
        Ok(fd) => {
            let _ = fd.ready(tokio::io::Interest::ERROR).await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// The server's stdout: each message judged by the core (after the kernel
/// events before it), then passed to the client.
pub(super) async fn relay_server(
    core: Shared,
    server_out: ChildStdout,
    max: usize,
    to_client: ToClient,
    exit_rx: watch::Receiver<Option<String>>,
) {
    let mut reader = LineReader::new(BufReader::new(server_out), max);
    loop {
        match reader.next().await {
            Ok(Line::Complete(line)) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let msg = match message::parse(&line) {
                    Ok(msg) => msg,
                    Err(e) => {
                        tracing::warn!("dropping a server line that is not JSON-RPC ({e})");
                        continue;
                    }
                };
                let (forward, replies) =
                    lock(&core).on_server_message(&msg, &line, "", monotonic_ns());
                to_client.replies(replies).await;
                if forward && !to_client.server_message(line, &msg, "").await {
                    return;
                }
            }
            Ok(Line::TooLong { len }) => {
                tracing::warn!("dropping a server message of {len} bytes (limit {max})");
            }
            Ok(Line::Eof) => break,
            Err(e) => {
                tracing::warn!("reading the server: {e}");
                break;
            }
        }
    }
    server_ended(&core, exit_rx, &to_client).await;
}

/// The server's output closed (or, for an HTTP server, it exited): waits
/// (briefly) for the exit status to say why, and fails what is in flight.
pub(super) async fn server_ended(
    core: &Shared,
    mut exit_rx: watch::Receiver<Option<String>>,
    to_client: &ToClient,
) {
    let how = match tokio::time::timeout(Duration::from_secs(2), exit_rx.wait_for(Option::is_some))
        .await
    {
        Ok(Ok(how)) => how.clone().unwrap_or_default(),
        _ => "closed its output".to_owned(),
    };
    let replies = lock(core).server_gone(&how);
    to_client.replies(replies).await;
}

/// How often plain (verdict-free) kernel events are collected at most.
const DRAIN_EVERY: Duration = Duration::from_millis(5);

/// Judges kernel events as they arrive (not only before server messages),
/// so a kill happens even while the server is silent. The ring is shared by
/// the process's sessions: `routed` wakes this one when another session's
/// drain left a verdict (or anything) for it.
pub(super) async fn pump_events(
    core: Shared,
    (ring_fd, routed): (OwnedFd, std::sync::Arc<tokio::sync::Notify>),
    to_client: ToClient,
) {
    // SAFETY: the AsyncFd takes ownership of `ring_fd`, an OwnedFd nobody
    // else holds, so it stays open and refers to the same ring buffer until
    // the AsyncFd is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring_fd, tokio::io::Interest::READABLE)
    };
    let ring = match registered.map_err(|e| e.to_string()) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot poll the event ring buffer: {e}");
            return;
        }
    };
    // The kernel wakes us at once only for verdicts; plain events are
    // collected on this tick (and before every server message).
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = ring.readable() => match ready {
                // Clear first: data that lands while we drain re-arms
                // readiness.
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!("polling the event ring buffer: {e}");
                    return;
                }
            },
            () = routed.notified() => {}
            _ = tick.tick() => {}
        }
        let replies = lock(&core).drain_events();
        to_client.replies(replies).await;
    }
}
