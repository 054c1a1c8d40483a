//! The session's tasks: the client relay, the server relay, the kernel event
//! pump and the single writer of the client's stdout.
use std::{os::fd::OwnedFd, time::Duration};

use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    process::{ChildStdin, ChildStdout},
    sync::{mpsc, watch},
};

use super::{Shared, lock};
use crate::{
    monotonic_ns,
    proxy::{
        lines::{Line, LineReader},
        message::{self, code, error_response},
    },
};

/// The only writer of our stdout. Writes every line already queued, then
/// flushes once: one syscall for a burst, no delay for a single message.
pub(super) async fn write_client(mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut out = tokio::io::BufWriter::with_capacity(64 << 10, tokio::io::stdout());
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut line) = next {
            line.push(b'\n');
            if out.write_all(&line).await.is_err() {
                // The client is gone; the client task sees EOF and tears down.
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

async fn send_all(to_client: &mpsc::Sender<Vec<u8>>, lines: Vec<String>) {
    for line in lines {
        let _ = to_client.send(line.into_bytes()).await;
    }
}

pub(super) async fn relay_client(
    core: Shared,
    server_in: ChildStdin,
    max: usize,
    to_client: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    let mut reader = LineReader::new(BufReader::new(tokio::io::stdin()), max);
    let mut server_in = tokio::io::BufWriter::with_capacity(64 << 10, server_in);
    let mut server_open = true;
    loop {
        // Flush what was written for the server unless another complete
        // message is already waiting: bursts cost one write, a lone
        // message is never held back.
        if server_open && !reader.has_complete_line() && server_in.flush().await.is_err() {
            server_open = false;
            let replies = lock(&core).server_gone("stopped reading its input");
            send_all(&to_client, replies).await;
        }
        let line = match reader.next().await? {
            Line::Eof => return Ok(()),
            Line::TooLong { len } => {
                let msg =
                    format!("mcpwarden: message of {len} bytes exceeds the limit of {max} bytes");
                tracing::warn!("{msg}");
                send_all(
                    &to_client,
                    vec![error_response(None, code::INVALID_REQUEST, &msg, None)],
                )
                .await;
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
                send_all(
                    &to_client,
                    vec![error_response(
                        None,
                        e.code(),
                        &format!("mcpwarden: {e}"),
                        None,
                    )],
                )
                .await;
                continue;
            }
        };
        let admitted = lock(&core).admit(&msg, monotonic_ns());
        match admitted {
            Err(replies) => send_all(&to_client, replies).await,
            Ok(()) if server_open => {
                let mut framed = line;
                framed.push(b'\n');
                if let Err(e) = server_in.write_all(&framed).await {
                    tracing::warn!("cannot write to the server: {e}");
                    server_open = false;
                    let replies = lock(&core).server_gone("stopped reading its input");
                    send_all(&to_client, replies).await;
                }
            }
            Ok(()) => {}
        }
    }
}

pub(super) async fn relay_server(
    core: Shared,
    server_out: ChildStdout,
    max: usize,
    to_client: mpsc::Sender<Vec<u8>>,
    mut exit_rx: watch::Receiver<Option<String>>,
) {
    let mut reader = LineReader::new(BufReader::new(server_out), max);
    loop {
        match reader.next().await {
            Ok(Line::Complete(line)) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let (forward, replies) = match message::parse(&line) {
                    Ok(msg) => lock(&core).on_server_message(&msg, monotonic_ns()),
                    Err(e) => {
                        tracing::warn!("dropping a server line that is not JSON-RPC ({e})");
                        (false, Vec::new())
                    }
                };
                send_all(&to_client, replies).await;
                if forward && to_client.send(line).await.is_err() {
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
    // Output closed: wait (briefly) for the exit status to say why.
    let how = match tokio::time::timeout(Duration::from_secs(2), exit_rx.wait_for(Option::is_some))
        .await
    {
        Ok(Ok(how)) => how.clone().unwrap_or_default(),
        _ => "closed its output".to_owned(),
    };
    let replies = lock(&core).server_gone(&how);
    send_all(&to_client, replies).await;
}

pub(super) async fn pump_events(core: Shared, ring_fd: OwnedFd, to_client: mpsc::Sender<Vec<u8>>) {
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
    loop {
        let mut guard = match ring.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("polling the event ring buffer: {e}");
                return;
            }
        };
        // Clear first: data that lands while we drain re-arms readiness.
        guard.clear_ready();
        let replies = lock(&core).drain_events();
        send_all(&to_client, replies).await;
    }
}
