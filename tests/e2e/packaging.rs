//! The packages `make package` builds, for real: the .deb installs on this
//! Debian machine with dpkg, its daemon starts from the installed unit's
//! command line, answers `mcpwarden status` and serves an unprivileged
//! user's session with the packaged model, and the package removes and
//! purges cleanly. The .rpm is read with Debian's `rpm`.
//!
//! The test installs into the host's /usr, /etc and /var/lib: it refuses
//! to run where mcpwarden is already installed, and sets an existing
//! /var/lib/mcpwarden aside for its duration.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::support::{Fixture, Run, http_exchange, repo, serial};

const SOCKET: &str = "/run/mcpwarden/mcpwarden.sock";
const STATE: &str = "/var/lib/mcpwarden";
const UNIT: &str = "/usr/lib/systemd/system/mcpwarden.service";

/// The newest file with `suffix` in target/`dir` (built by `make package`).
fn built(dir: &str, suffix: &str) -> PathBuf {
    let dir = repo().join("target").join(dir);
    let newest = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make package` first", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    newest.unwrap_or_else(|| panic!("no *{suffix} in {}; run `make package`", dir.display()))
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "mcpwarden"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn sh(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Undoes the installation whatever happens: stops the daemon, purges the
/// package, puts the host's own store back.
struct Installation {
    daemon: Option<Child>,
    aside: Option<PathBuf>,
}

impl Drop for Installation {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if installed() {
            let _ = sh("dpkg", &["--purge", "mcpwarden"]);
        }
        if let Some(aside) = self.aside.take() {
            let _ = std::fs::remove_dir_all(STATE);
            let _ = std::fs::rename(aside, STATE);
        }
    }
}

/// An HTTP status from 127.0.0.1:8000 (the packaged settings' API).
fn api_status(path: &str) -> u16 {
    let tcp = std::net::TcpStream::connect("127.0.0.1:8000").expect("the API listens");
    http_exchange(&mut std::io::BufReader::new(tcp), "GET", path, None)
        .expect("an HTTP answer")
        .status
}

/// Starts the daemon with the installed unit's command line, with only the
/// packaged model in reach; returns its log's path.
fn start_as_the_unit_does(setup: &mut Installation) -> PathBuf {
    let unit = std::fs::read_to_string(UNIT).expect("the unit");
    let exec: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart")
        .split_whitespace()
        .collect();
    let log_path =
        std::env::temp_dir().join(format!("mcpwarden-e2e-pkg-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("log");
    setup.daemon = Some(
        Command::new(exec[0])
            .args(&exec[1..])
            .env_remove("MCPWARDEN_SOCKET")
            .env_remove("MCPWARDEN_STATE_DIR")
            .env("MCPWARDEN_MODEL_DIR", "/usr/lib/mcpwarden/models")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the installed daemon"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(SOCKET).is_err() {
        assert!(
            Instant::now() < deadline,
            "the installed daemon never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    log_path
}

#[test]
fn the_deb_installs_serves_a_session_and_purges_cleanly() {
    let _serial = serial();
    assert!(
        !installed(),
        "mcpwarden is installed on this machine; this test installs and purges the package, so \
         remove it first (dpkg -r mcpwarden)"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(SOCKET).is_err(),
        "a daemon answers on {SOCKET}; stop it first"
    );
    let mut setup = Installation {
        daemon: None,
        aside: None,
    };
    if Path::new(STATE).exists() {
        let aside = PathBuf::from(format!("{STATE}.before-e2e-{}", std::process::id()));
        std::fs::rename(STATE, &aside).expect("set the host's store aside");
        setup.aside = Some(aside);
    }
    let deb = built("debian", "_amd64.deb");
    let (ok, out) = sh("dpkg", &["-i", &deb.display().to_string()]);
    assert!(ok, "dpkg -i: {out}");
    for file in [
        "/usr/bin/mcpwarden",
        UNIT,
        "/usr/lib/tmpfiles.d/mcpwarden.conf",
        "/etc/mcpwarden/mcpwarden.toml",
        "/usr/lib/mcpwarden/models/encoder/model.onnx",
        "/usr/share/mcpwarden/policies/filesystem.toml",
    ] {
        assert!(Path::new(file).is_file(), "{file} was not installed");
    }
    let (ok, out) = sh("systemd-analyze", &["verify", UNIT]);
    assert!(ok && out.trim().is_empty(), "the installed unit: {out}");

    let log_path = start_as_the_unit_does(&mut setup);
    let status = Command::new("/usr/bin/mcpwarden")
        .arg("status")
        .env_remove("MCPWARDEN_SOCKET")
        .output()
        .expect("mcpwarden status");
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status: {said}");
    assert!(said.contains(&format!("store {STATE}")), "{said}");
    // The packaged settings: the TCP API on 127.0.0.1:8000, behind tokens.
    assert_eq!(api_status("/metrics"), 401);

    // The line an MCP client's configuration gets: an unprivileged user's
    // session through the installed daemon, confined and enforced.
    let fx = Fixture::new("enforce");
    let mut command = vec![
        "/usr/bin/mcpwarden".to_owned(),
        "run".to_owned(),
        "--policy".to_owned(),
        fx.policy.display().to_string(),
        "--".to_owned(),
    ];
    command.extend(fx.server_cmd());
    let scenario = json!([
        {"call": "whoami", "args": {}},
        {"call": "read_file", "args": {"path": fx.secret()}},
    ]);
    let run = Run::client_as(65534, &scenario, command, &[]);
    assert_eq!(run.whoami(0)["uid"], 65534, "{}", run.raw);
    assert_eq!(run.step(1)["error"]["code"], -32001, "{}", run.raw);
    let daemon_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        daemon_log.contains("PSI ready"),
        "PSI did not load the packaged model:\n{daemon_log}"
    );

    let mut daemon = setup.daemon.take().expect("daemon");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert!(daemon.wait().expect("wait").success());
    let _ = std::fs::remove_file(&log_path);

    // Remove keeps the settings; purge takes everything.
    let (ok, out) = sh("dpkg", &["-r", "mcpwarden"]);
    assert!(ok, "dpkg -r: {out}");
    assert!(!Path::new("/usr/bin/mcpwarden").exists());
    assert!(!Path::new("/usr/lib/mcpwarden").exists());
    assert!(
        Path::new("/etc/mcpwarden/mcpwarden.toml").exists(),
        "a conffile stays until purge"
    );
    let (ok, out) = sh("dpkg", &["-P", "mcpwarden"]);
    assert!(ok, "dpkg -P: {out}");
    for gone in ["/etc/mcpwarden", STATE, "/run/mcpwarden", UNIT] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    assert!(!installed());
}

#[test]
fn the_rpm_says_what_it_is_and_holds_what_the_deb_holds() {
    let rpm = built("generate-rpm", ".x86_64.rpm").display().to_string();
    let (ok, info) = sh("rpm", &["-qip", &rpm]);
    assert!(ok, "rpm -qip: {info}");
    for (key, value) in [
        ("Name", "mcpwarden"),
        ("Version", env!("CARGO_PKG_VERSION")),
        ("License", "MIT OR Apache-2.0"),
    ] {
        assert!(
            info.lines().any(|l| l.starts_with(key)
                && l.split_once(": ").is_some_and(|(_, v)| v.trim() == value)),
            "{key}: {value} missing in:\n{info}"
        );
    }
    let (ok, list) = sh("rpm", &["-qlp", &rpm]);
    assert!(ok, "rpm -qlp: {list}");
    let (ok, config) = sh("rpm", &["-qcp", &rpm]);
    assert!(
        ok && config.trim() == "/etc/mcpwarden/mcpwarden.toml",
        "{config}"
    );
    let (ok, deb) = sh(
        "dpkg-deb",
        &["-c", &built("debian", "_amd64.deb").display().to_string()],
    );
    assert!(ok, "{deb}");
    let in_deb: Vec<String> = deb
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    let files: Vec<&str> = list.lines().collect();
    assert!(
        files.contains(&"/usr/bin/mcpwarden") && files.contains(&UNIT),
        "{list}"
    );
    for file in files {
        assert!(
            in_deb.iter().any(|d| d == file),
            "{file} is in the .rpm but not in the .deb"
        );
    }
}
