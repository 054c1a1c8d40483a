//! `mcpwarden run` as the daemon's client: it sends the policy's text and
//! the server's command line on the daemon's socket (see
//! `daemon::sessions` for the protocol), then relays its stdin and stdout
//! over the connection. Everything is inspected, confined and traced in the
//! daemon; this process only carries bytes, so any user may run it.
use std::path::Path;

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{RunError, RunOptions, io, relay::stdout_closed};
use crate::daemon::sessions::{ROUTE, StartReply, StartRequest, UPGRADE};

/// Whether a daemon answers on `socket`.
pub(super) async fn answers(socket: &Path) -> bool {
    socket.exists() && UnixStream::connect(socket).await.is_ok()
}

/// The reasons a run through the daemon is refused before it starts.
fn refused(why: impl Into<String>) -> RunError {
    RunError::Daemon(why.into())
}

/// Runs the session in the daemon listening on `socket`, relaying this
/// process's stdin and stdout, until the client or the daemon is done.
pub(super) async fn run(opts: &RunOptions, socket: &Path) -> Result<(), RunError> {
    if opts.events.is_some() {
        return Err(refused(
            "--events writes a file of this process's own session; through the daemon, the \
             daemon keeps the events (give --state DIR to run a session of your own, as root)",
        ));
    }
    let policy = std::fs::read_to_string(&opts.policy).map_err(|source| {
        RunError::Policy(crate::policy::PolicyError::Read {
            path: opts.policy.display().to_string(),
            source,
        })
    })?;
    let command = opts
        .command
        .iter()
        .map(|a| {
            a.to_str().map(str::to_owned).ok_or_else(|| {
                refused(format!(
                    "the argument {} is not UTF-8, which the daemon's protocol carries",
                    a.display()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ask = StartRequest {
        policy,
        policy_path: std::path::absolute(&opts.policy)
            .unwrap_or_else(|_| opts.policy.clone())
            .display()
            .to_string(),
        command,
        upstream: opts.upstream.clone(),
        dry_run: opts.dry_run,
        monitor: opts.monitor,
        max_message: opts.max_message,
    };
    let stream = UnixStream::connect(socket).await.map_err(io(format!(
        "cannot connect to the daemon at {}",
        socket.display()
    )))?;
    let mut stream = BufReader::new(stream);
    switch_protocols(&mut stream).await?;
    let mut line = serde_json::to_vec(&ask).map_err(|e| refused(e.to_string()))?;
    line.push(b'\n');
    stream
        .get_mut()
        .write_all(&line)
        .await
        .map_err(io("cannot send the session request"))?;
    let mut answer = String::new();
    stream
        .read_line(&mut answer)
        .await
        .map_err(io("cannot read the daemon's answer"))?;
    let reply: StartReply = serde_json::from_str(&answer).map_err(|_| {
        refused(if answer.is_empty() {
            "the daemon closed the connection without starting the session".to_owned()
        } else {
            format!("the daemon answered {:?}", answer.trim_end())
        })
    })?;
    let session = match (reply.session, reply.error) {
        (_, Some(error)) => {
            return Err(refused(format!("the daemon refused the session: {error}")));
        }
        (Some(s), None) => s,
        (None, None) => return Err(refused("the daemon answered without a session")),
    };
    tracing::info!(%session, "the daemon runs the session");
    relay(stream).await
}

/// `POST /api/v1/sessions` with `Upgrade`; anything but 101 is an error
/// that quotes the daemon.
async fn switch_protocols(stream: &mut BufReader<UnixStream>) -> Result<(), RunError> {
    let request = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: mcpwarden\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE}\r\nContent-Length: 0\r\n\r\n"
    );
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(io("cannot ask the daemon for a session"))?;
    let mut status = String::new();
    stream
        .read_line(&mut status)
        .await
        .map_err(io("cannot read the daemon's answer"))?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        let n = stream
            .read_line(&mut header)
            .await
            .map_err(io("cannot read the daemon's answer"))?;
        let header = header.trim_end();
        if n == 0 || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    if status.split_whitespace().nth(1) == Some("101") {
        return Ok(());
    }
    let mut body = vec![0; length.min(64 << 10)];
    let _ = stream.read_exact(&mut body).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Err(refused(format!(
        "the daemon did not start a session: {} {}",
        status.trim_end(),
        body["error"].as_str().unwrap_or_default()
    )))
}

/// Copies stdin to the daemon and the daemon to stdout. Our stdin's end is
/// passed on (the session then ends as a stdio one does); the daemon's end
/// ends the run.
async fn relay(stream: BufReader<UnixStream>) -> Result<(), RunError> {
    let (mut from_daemon, mut to_daemon) = tokio::io::split(stream);
    let upstream = async {
        let mut stdin = tokio::io::stdin();
        let copied = tokio::io::copy(&mut stdin, &mut to_daemon).await;
        let _ = to_daemon.shutdown().await;
        copied
    };
    let downstream = async {
        let mut stdout = tokio::io::stdout();
        let copied = tokio::io::copy(&mut from_daemon, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    };
    let gone = stdout_closed();
    tokio::pin!(upstream, downstream, gone);
    let mut stdin_done = false;
    loop {
        tokio::select! {
            r = &mut upstream, if !stdin_done => {
                stdin_done = true;
                if let Err(e) = r {
                    tracing::warn!("cannot pass the client's input on: {e}");
                }
            }
            r = &mut downstream => {
                r.map_err(io("cannot pass the daemon's output on"))?;
                return if stdin_done {
                    Ok(())
                } else {
                    Err(refused(
                        "the daemon ended the session (it stopped, or the server is gone)",
                    ))
                };
            }
            () = &mut gone => {
                tracing::info!("the client closed its end of our output");
                return Ok(());
            }
        }
    }
}
