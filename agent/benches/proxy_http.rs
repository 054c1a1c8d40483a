//! The Streamable HTTP proxy's cost, in one run:
//! - HTTP to HTTP: a small node HTTP MCP server started confined by
//!   `mcpwarden run --listen --upstream` (kernel programs loaded), pinged
//!   directly on its port and through mcpwarden, alternately; added latency
//!   p50/p99 and throughput with concurrent clients;
//! - HTTP to stdio: `sed` answering pings behind `mcpwarden run --listen`;
//! - mcpwarden's resident memory after the load.
//!
//!     cargo bench --bench proxy_http          (as root; prints a table)
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::Client;

mod common;
use common::{free_port, pct, report, rss_kib, stop, wait_for};

/// An HTTP MCP server in a few lines of node: answers `initialize` and
/// `ping` with JSON, notifications with 202. Fast enough that the proxy,
/// not the server, is what the numbers show.
const NODE_SERVER: &str = r"
const http = require('http');
http.createServer((req, res) => {
  let body = '';
  req.on('data', c => body += c);
  req.on('end', () => {
    let msg; try { msg = JSON.parse(body); } catch { res.writeHead(400); return res.end(); }
    if (msg.id === undefined) { res.writeHead(202); return res.end(); }
    const result = msg.method === 'initialize'
      ? {protocolVersion: '2025-11-25', capabilities: {}, serverInfo: {name: 'bench', version: '0'}}
      : {};
    res.writeHead(200, {'content-type': 'application/json', 'mcp-session-id': 'bench-session'});
    res.end(JSON.stringify({jsonrpc: '2.0', id: msg.id, result}));
  });
}).listen(+process.env.PORT, '127.0.0.1');
";

const SED: [&str; 5] = [
    "/bin/sed",
    "-u",
    "-e",
    r#"s/"method":"ping"}$/"result":{}}/"#,
    r#"-es/"method":"initialize".*$/"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"sed","version":"0"}}}/"#,
];

fn mcpwarden(
    policy: &std::path::Path,
    listen: u16,
    flags: &[&str],
    cmd: &[&str],
    port_env: Option<u16>,
) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mcpwarden"));
    c.args(["run", "--policy"])
        .arg(policy)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(flags)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(p) = port_env {
        c.env("PORT", p.to_string());
    }
    let mut child = c.spawn().expect("start mcpwarden");
    wait_for(listen, &mut child);
    child
}

struct Target {
    http: Client,
    url: String,
    session: Option<String>,
}

impl Target {
    async fn new(url: String) -> Self {
        let http = Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .expect("client");
        let mut t = Self {
            http,
            url,
            session: None,
        };
        let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
        let r = t.post(init.to_owned()).await;
        t.session = r
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let _ = r.bytes().await;
        let r = t
            .post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned())
            .await;
        let _ = r.bytes().await;
        t
    }

    async fn post(&self, body: String) -> reqwest::Response {
        let mut r = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(s) = &self.session {
            r = r.header("mcp-session-id", s);
        }
        r.body(body).send().await.expect("post")
    }

    /// One ping round trip, answer read to its end.
    async fn ping(&self, id: u64) -> Duration {
        let start = Instant::now();
        let r = self
            .post(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#))
            .await;
        let body = r.bytes().await.expect("body");
        let took = start.elapsed();
        let needle = format!("\"id\":{id},");
        assert!(
            body.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{body:?}"
        );
        took
    }
}

/// `clients` concurrent clients, `each` pings apiece: messages per second.
async fn throughput(url: &str, clients: u64, each: u64) -> f64 {
    let mut targets = Vec::new();
    for _ in 0..clients {
        targets.push(Target::new(url.to_owned()).await);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, t) in targets.into_iter().enumerate() {
        tasks.spawn(async move {
            for i in 0..each {
                t.ping(1000 + c as u64 * each + i).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    f64::from(u32::try_from(clients * each).expect("count fits u32"))
        / start.elapsed().as_secs_f64()
}

fn main() {
    if !common::benching_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // HTTP to HTTP.
    let upstream_port = free_port();
    let listen = free_port();
    let policy = dir.path().join("http.toml");
    std::fs::write(
        &policy,
        format!("mode = \"enforce\"\n[sandbox]\nprofile = \"node\"\nenv = [\"PORT\"]\n[sandbox.network]\nbind = [{upstream_port}]\n"),
    )
    .expect("policy");
    let upstream = format!("http://127.0.0.1:{upstream_port}/mcp");
    let mut proxy = mcpwarden(
        &policy,
        listen,
        &["--upstream", &upstream],
        &["/usr/bin/node", "-e", NODE_SERVER],
        Some(upstream_port),
    );
    // mcpwarden listens before its server does: wait for the server too.
    wait_for(upstream_port, &mut proxy);
    let through_url = format!("http://127.0.0.1:{listen}/mcp");
    println!(
        "HTTP proxy, {} (release build); node HTTP server confined by mcpwarden, JSON answers",
        std::env::consts::ARCH
    );
    runtime.block_on(async {
        let direct = Target::new(upstream.clone()).await;
        let through = Target::new(through_url.clone()).await;
        for i in 0..500 {
            direct.ping(i).await;
            through.ping(i).await;
        }
        let (mut d, mut p) = (Vec::new(), Vec::new());
        for i in 0..6000 {
            d.push(direct.ping(10_000 + i).await);
            p.push(through.ping(10_000 + i).await);
        }
        report("HTTP->HTTP round trip, alternating", &mut d, &mut p);
        let dt = throughput(&upstream, 8, 2500).await;
        let pt = throughput(&through_url, 8, 2500).await;
        println!(
            "HTTP->HTTP throughput, 8 clients x 2500 pings: direct {dt:.0} msg/s | through mcpwarden {pt:.0} msg/s"
        );
    });
    println!(
        "mcpwarden RSS after the HTTP->HTTP load: {} KiB",
        rss_kib(proxy.id())
    );
    stop(&mut proxy);

    http_to_stdio(dir.path(), &runtime);
}

/// HTTP to stdio: `sed` answering pings behind `mcpwarden run --listen`.
fn http_to_stdio(dir: &std::path::Path, runtime: &tokio::runtime::Runtime) {
    let listen = free_port();
    let policy = dir.join("stdio.toml");
    std::fs::write(&policy, "mode = \"enforce\"\n").expect("policy");
    let mut proxy = mcpwarden(&policy, listen, &[], &SED, None);
    runtime.block_on(async {
        let through = Target::new(format!("http://127.0.0.1:{listen}/mcp")).await;
        for i in 0..500 {
            through.ping(i).await;
        }
        let mut p = Vec::new();
        for i in 0..6000 {
            p.push(through.ping(10_000 + i).await);
        }
        p.sort();
        println!(
            "HTTP->stdio round trip through mcpwarden to sed (SSE answers; sed itself takes ~7 us): p50 {:.1} us p99 {:.1} us",
            pct(&p, 50),
            pct(&p, 99)
        );
    });
    println!(
        "mcpwarden RSS after the HTTP->stdio load: {} KiB",
        rss_kib(proxy.id())
    );
    stop(&mut proxy);
}
