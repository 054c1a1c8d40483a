//! Starting the tool server: through the exec helper, in the session
//! cgroup, with the client's environment; and waiting for an HTTP server
//! to serve.
use std::{ffi::OsString, os::fd::OwnedFd, process::Stdio, time::Duration};

use mcpwarden_sandbox::{SessionCgroup, Spec};
use tokio::{
    process::{ChildStdin, ChildStdout, Command},
    sync::watch,
};

use super::{RunError, client::Launch, io};
use crate::{launch, proxy::upstream::Upstream};

/// A server mcpwarden started: its pipes (stdio servers) and how it ended.
pub(super) struct Started {
    pub(super) pipes: Option<(ChildStdin, ChildStdout)>,
    pub(super) exit_rx: watch::Receiver<Option<String>>,
}

/// Polls the upstream URL's port until the server started there accepts
/// connections (or exits, or 30 s pass).
pub(super) async fn wait_until_serving(
    upstream: &Upstream,
    mut exit_rx: watch::Receiver<Option<String>>,
) -> Result<(), RunError> {
    let down = |why: String| RunError::UpstreamDown {
        url: upstream.url().to_owned(),
        why,
    };
    let url = reqwest::Url::parse(upstream.url()).map_err(|e| down(e.to_string()))?;
    let host = url
        .host_str()
        .unwrap_or("127.0.0.1")
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(how) = exit_rx.borrow_and_update().clone() {
            return Err(down(format!("it {how}")));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(down("nothing listens there after 30 s".to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the server through the exec helper (`mcpwarden sandbox-exec`),
/// which joins the session cgroup before it execs the command. A stdio
/// server gets pipes; an HTTP server's stdout goes to our stderr (its log).
/// For a daemon client, the helper starts in the client's directory with
/// the client's environment, from which the sandbox passes on only what the
/// policy names. Also returns our end of the socket the sandbox sends its
/// seccomp listener on (see `mcpwarden_sandbox::notify`).
pub(super) fn spawn(
    cgroup: &SessionCgroup,
    spec: &Spec,
    command: &[OsString],
    stdio: bool,
    launch: &Launch,
) -> Result<(Started, OwnedFd), RunError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| io("cannot make the sandbox's notify socket")(e.into()))?;
    let mut helper =
        launch::helper_command(cgroup, spec, command, launch.die_with_parent, Some(&theirs))
            .map_err(io("cannot build the sandbox helper's command"))?;
    if let Some(env) = &launch.env {
        helper.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    if let Some(cwd) = &launch.cwd {
        helper.current_dir(cwd);
    }
    let mut cmd = Command::from(helper);
    if stdio {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null()).stdout(std::io::stderr());
    }
    let mut child = cmd
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("cannot start the server"))?;
    // Only the helper keeps its end: the end of file we then see if it
    // dies early is the sandbox's.
    drop(theirs);
    let pipes = if stdio {
        let pipe = |what: &str| io(what.to_owned())(std::io::ErrorKind::BrokenPipe.into());
        let server_in = child.stdin.take().ok_or_else(|| pipe("server stdin"))?;
        let server_out = child.stdout.take().ok_or_else(|| pipe("server stdout"))?;
        Some((server_in, server_out))
    } else {
        None
    };
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
    Ok((Started { pipes, exit_rx }, ours))
}
