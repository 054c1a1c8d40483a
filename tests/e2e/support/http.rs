//! HTTP helpers: free ports, an `mcpwarden run --listen` endpoint in the
//! background, and plain HTTP/1.1 exchanges on a kept-open connection.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use super::mcpwarden;

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("exited before listening on {port}: {status}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Endpoint {
    /// A failed test still stops its mcpwarden (and so its server).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// `mcpwarden run --listen` in the background: an MCP endpoint over HTTP.
pub struct Endpoint {
    pub child: std::process::Child,
    pub url: String,
    pub port: u16,
    /// Reads mcpwarden's stderr as it comes, so the pipe never fills.
    log: Option<std::thread::JoinHandle<String>>,
}

impl Endpoint {
    /// Starts `mcpwarden run --policy P --listen 127.0.0.1:PORT FLAGS -- CMD`
    /// (no `--` when `command` is empty) and waits until it listens.
    pub fn start(policy: &Path, flags: &[&str], command: &[String]) -> Self {
        Self::start_with_env(policy, flags, command, &[])
    }

    /// [`Endpoint::start`] with extra environment variables for mcpwarden
    /// (a policy's `sandbox.env` passes them on to the server).
    pub fn start_with_env(
        policy: &Path,
        flags: &[&str],
        command: &[String],
        env: &[(&str, String)],
    ) -> Self {
        let port = free_port();
        let mut cmd = mcpwarden();
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.args(["run", "--policy"])
            .arg(policy)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(flags);
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcpwarden");
        let mut stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        wait_for_port(port, &mut child);
        Self {
            child,
            url: format!(
                "{}://127.0.0.1:{port}/mcp",
                if flags.contains(&"--tls") {
                    "https"
                } else {
                    "http"
                }
            ),
            port,
            log: Some(log),
        }
    }

    /// Waits (up to `secs`) for mcpwarden to end on its own; SIGTERM after.
    /// Returns its exit status and what it logged.
    pub fn finish(&mut self, secs: u64) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.child.try_wait().expect("try_wait").is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        }
        let status = self.child.wait().expect("wait for mcpwarden");
        let log = self
            .log
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (status, log)
    }
}

/// What an HTTP/1.1 exchange answered: the status, the header lines, the
/// body.
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request on `conn` (a Unix or TCP stream, kept open for
/// the next), with a JSON `body` when given; the answer is read by its
/// Content-Length, so the connection may stay alive.
pub fn http_exchange<S: std::io::Read + std::io::Write>(
    conn: &mut BufReader<S>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Answer> {
    http_exchange_with(conn, method, path, "", body)
}

/// [`http_exchange`] with more header lines (`extra`, each ending in
/// CRLF).
pub fn http_exchange_with<S: std::io::Read + std::io::Write>(
    conn: &mut BufReader<S>,
    method: &str,
    path: &str,
    extra: &str,
    body: Option<&str>,
) -> std::io::Result<Answer> {
    use std::io::Read as _;
    let body = body.unwrap_or_default();
    write!(
        conn.get_mut(),
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut status = String::new();
    conn.read_line(&mut status)?;
    let status = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {status:?}")))?;
    let (mut headers, mut length) = (String::new(), 0);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        headers.push_str(&line);
    }
    let mut answer = vec![0; length];
    conn.read_exact(&mut answer)?;
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&answer).into_owned(),
    })
}
