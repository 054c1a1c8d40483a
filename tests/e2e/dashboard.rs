//! The dashboard in a real browser: Debian's Chromium, headless, driven by
//! chromedriver over the W3C WebDriver protocol. The test signs in with an
//! API token, watches a user's tool call get blocked through the daemon,
//! sees it appear live among the alerts and in the request timeline, and
//! saves a screenshot (target/dashboard-e2e.png).
use std::{
    io::BufReader,
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::{
    daemon::{Daemon, register},
    support::{Fixture, Run, free_port, http_exchange, mcpwarden_path, repo, serial},
};

/// The W3C name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, and the browser session it drives; both ended on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (package chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Self {
            driver,
            port,
            session: String::new(),
        };
        let created = browser.call(
            "POST",
            "/session",
            &json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    // Root needs --no-sandbox; the window size fixes the
                    // screenshot's.
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1000"]
                }
            }}}),
        );
        created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .clone_into(&mut browser.session);
        browser
    }

    /// One WebDriver command: its `value`.
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = (!body.is_null()).then(|| body.to_string());
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("chromedriver");
        let answer = http_exchange(&mut BufReader::new(tcp), method, path, body.as_deref())
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
        let value: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("chromedriver answered {}: {e}", answer.body));
        value["value"].clone()
    }

    fn command(&self, method: &str, what: &str, body: &Value) -> Value {
        self.call(method, &format!("/session/{}{what}", self.session), body)
    }

    fn find(&self, css: &str) -> Option<String> {
        let found = self.command(
            "POST",
            "/element",
            &json!({"using": "css selector", "value": css}),
        );
        assert!(
            !found["error"].is_string() || found["error"] == "no such element",
            "finding {css}: {found}"
        );
        found[ELEMENT].as_str().map(str::to_owned)
    }

    fn text(&self, css: &str) -> String {
        self.find(css)
            .map(|e| {
                self.command("GET", &format!("/element/{e}/text"), &Value::Null)
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    }

    /// Waits until the text of `css` satisfies `what`; returns it.
    fn wait_for(&self, css: &str, limit: Duration, what: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text(css);
            if what(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed what was expected; it shows {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call(
                "DELETE",
                &format!("/session/{}", self.session),
                &Value::Null,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_dashboard_shows_a_blocked_call_live_in_a_real_browser() {
    let _serial = serial();
    let d = Daemon::start();
    let viewer = register(&d, "viewer", &["--api", "read"]);
    let browser = Browser::start();
    browser.command(
        "POST",
        "/url",
        &json!({"url": format!("http://127.0.0.1:{}/dashboard", d.port)}),
    );

    // A wrong token is refused on the page.
    let token = browser.find("#token").unwrap_or_else(|| {
        panic!(
            "no token field at {}: {}",
            browser.command("GET", "/url", &Value::Null),
            browser.command("GET", "/source", &Value::Null)
        )
    });
    let type_in = |text: &str| {
        browser.command("POST", &format!("/element/{token}/clear"), &json!({}));
        browser.command(
            "POST",
            &format!("/element/{token}/value"),
            &json!({ "text": text }),
        );
        let button = browser.find("#login").expect("the sign-in button");
        browser.command("POST", &format!("/element/{button}/click"), &json!({}));
    };
    type_in("mcpw_0000000000000000_00");
    browser.wait_for("#login-error", Duration::from_secs(10), |t| {
        t.contains("refused")
    });
    type_in(&viewer);
    browser.wait_for("#status", Duration::from_secs(10), |t| {
        t.contains("sessions running")
    });

    // A user's call is blocked through the daemon while the page watches.
    let fx = Fixture::new("enforce");
    let mut command = vec![
        mcpwarden_path(),
        "run".to_owned(),
        "--policy".to_owned(),
        fx.policy.display().to_string(),
        "--".to_owned(),
    ];
    command.extend(fx.server_cmd());
    let socket = d.socket.display().to_string();
    let run = Run::client_as(
        65534,
        &json!([{"call": "read_file", "args": {"path": fx.secret()}}]),
        command,
        &[("MCPWARDEN_SOCKET", socket.as_str())],
    );
    assert_eq!(run.step(0)["error"]["code"], -32001, "{}", run.raw);

    let secret = fx.secret();
    let alerts = browser.wait_for("#alerts", Duration::from_secs(20), |t| {
        t.contains("killed") && t.contains(&secret)
    });
    assert!(alerts.contains("open"), "{alerts}");
    let timeline = browser.wait_for("#timeline", Duration::from_secs(10), |t| {
        t.contains("read_file")
    });
    assert!(timeline.contains(&secret), "{timeline}");
    browser.wait_for("#sessions", Duration::from_secs(10), |t| {
        t.contains("65534")
    });

    let shot = browser.command("GET", "/screenshot", &Value::Null);
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().expect("a base64 screenshot"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let path = repo().join("target/dashboard-e2e.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
}
