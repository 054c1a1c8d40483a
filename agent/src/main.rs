//! The `mcpwarden` command.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mcpwarden::{
    doctor, launch,
    policy::Policy,
    proxy::lines::DEFAULT_MAX_LINE,
    session::{self, RunOptions},
};
use mcpwarden_sandbox::{Spec, exec, explain::explain};

/// Host-level defence for AI agents' MCP tool servers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Probe this kernel for the features mcpwarden uses.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run an MCP server confined and traced, relaying MCP between it and a
    /// client. Each side is stdio unless told otherwise: `--listen` serves
    /// clients over Streamable HTTP, `--upstream` reaches a server that
    /// speaks it (started from CMD, confined, or already running).
    Run {
        /// Policy file (TOML), see policies/.
        #[arg(long)]
        policy: PathBuf,
        /// Write one JSON line per kernel event to this file.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Largest message accepted from either side, in bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_LINE)]
        max_message: usize,
        /// Give the server throw-away copies of its writable paths.
        #[arg(long)]
        dry_run: bool,
        /// Serve MCP clients over Streamable HTTP at http://ADDR/mcp
        /// (e.g. 127.0.0.1:8931) instead of stdio.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// The server speaks Streamable HTTP at this URL (e.g.
        /// http://127.0.0.1:3001/mcp). With CMD, mcpwarden starts it confined
        /// and waits for it to listen; without, it only relays.
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
        /// Serve https://ADDR/mcp with the host CA's endpoint certificate
        /// and accept client certificates it issued (`mcpwarden ca`).
        #[arg(long, requires = "listen")]
        tls: bool,
        /// The endpoint's own certificate chain (PEM) instead of the CA's.
        #[arg(long, requires = "tls", requires = "tls_key", value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// A browser origin allowed to call the endpoint besides loopback
        /// ones (repeatable).
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origins: Vec<String>,
        /// Apply the policy in monitor mode whatever it says: record every
        /// violation, stop nothing.
        #[arg(long)]
        monitor: bool,
        /// State directory of the tool registry's pins (default:
        /// $MCPWARDEN_STATE_DIR, else /var/lib/mcpwarden).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The server command and its arguments.
        #[arg(last = true, required_unless_present = "upstream")]
        command: Vec<OsString>,
    },
    /// Validate policies and run their unit cases.
    Policy {
        #[command(subcommand)]
        command: mcpwarden::policy::cli::PolicyCmd,
    },
    /// The tool registry: pinned tool definitions, approvals.
    Tools {
        #[command(subcommand)]
        command: mcpwarden::registry::cli::ToolsCmd,
    },
    /// Agent identities: API tokens (register, list, verify, revoke).
    Agent {
        #[command(subcommand)]
        command: mcpwarden::identity::cli::AgentCmd,
    },
    /// The host's CA: X.509 client certificates for agents on the HTTPS
    /// endpoint (init, issue, list, revoke, crl).
    Ca {
        #[command(subcommand)]
        command: mcpwarden::identity::ca_cli::CaCmd,
    },
    /// The long-lived service (root, under systemd): holds the store and
    /// serves the API on its Unix socket and on TCP.
    Daemon(mcpwarden::daemon::config::Flags),
    /// Ask the running daemon how it is (exit 1 when none answers).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Sessions the daemon runs and ran, newest first.
    Sessions {
        /// How many.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Read this state directory instead of asking the daemon.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Trust scores of agents and servers, and what moved them.
    Trust {
        #[command(subcommand)]
        command: mcpwarden::trust::cli::TrustCmd,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: mcpwarden::store::cli::AuditCmd,
    },
    /// Scan text for prompt injection with PSI: exit 0 clean, 1 flagged,
    /// 2 error.
    Scan(mcpwarden::inspect::cli::ScanArgs),
    /// The sandbox (PES) on its own.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCmd,
    },
    /// (internal) The exec helper: join the session cgroups, confine, exec.
    #[command(hide = true)]
    SandboxExec {
        /// The sandbox spec, as JSON.
        #[arg(long)]
        spec: String,
        /// The session cgroup's cgroup.procs (v2): only the server joins it.
        #[arg(long)]
        traced_procs: PathBuf,
        /// A limit cgroup's cgroup.procs (v1 companions; repeatable).
        #[arg(long = "procs")]
        procs: Vec<PathBuf>,
        /// Die (SIGKILL) when the process PID that started us exits.
        #[arg(long, value_name = "PID")]
        die_with_parent: Option<i32>,
        /// An inherited unix socket to send the seccomp listener to.
        #[arg(long, value_name = "FD")]
        notify_fd: Option<i32>,
        /// The server command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum SandboxCmd {
    /// Run any command confined by a policy's [sandbox], without MCP.
    Run {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Give the command throw-away copies of its writable paths.
        #[arg(long)]
        dry_run: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Say in plain words what a policy's sandbox allows and refuses.
    Explain {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
    },
}

fn main() -> ExitCode {
    // stdout carries MCP: every log line goes to stderr.
    init_logging();
    match Cli::parse().command {
        Cmd::Scan(args) => args.run(),
        Cmd::Policy { command } => command.run(),
        Cmd::Tools { command } => command.run(),
        Cmd::Agent { command } => command.run(),
        Cmd::Ca { command } => command.run(),
        Cmd::Trust { command } => command.run(),
        Cmd::Daemon(flags) => match mcpwarden::daemon::config::resolve(flags) {
            Ok(opts) => daemon_cmd(opts),
            Err(e) => fail(&e.to_string()),
        },
        Cmd::Status { json } => status_cmd(json),
        Cmd::Sessions { last, json, state } => sessions_cmd(last, json, state.as_deref()),
        Cmd::Audit { command } => command.run(),
        Cmd::Doctor { json } => doctor_cmd(json),
        Cmd::Run {
            policy,
            events,
            max_message,
            dry_run,
            listen,
            upstream,
            tls,
            tls_cert,
            tls_key,
            allow_origins,
            monitor,
            state,
            command,
        } => run_session(RunOptions {
            policy,
            events,
            max_message,
            command,
            dry_run,
            listen,
            upstream,
            tls: tls.then_some(session::TlsFiles {
                cert: tls_cert,
                key: tls_key,
            }),
            allow_origins,
            monitor,
            state,
        }),
        Cmd::Sandbox {
            command: SandboxCmd::Explain { policy },
        } => match Policy::load(&policy) {
            Ok(p) => {
                print!("{}", explain(&p.sandbox));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Cmd::Sandbox {
            command:
                SandboxCmd::Run {
                    policy,
                    dry_run,
                    command,
                },
        } => match sandbox_run(&policy, dry_run, &command) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => fail(&e),
        },
        Cmd::SandboxExec {
            spec,
            traced_procs,
            procs,
            die_with_parent,
            notify_fd,
            command,
        } => sandbox_exec_cmd(
            &spec,
            &traced_procs,
            &procs,
            die_with_parent,
            notify_fd,
            &command,
        ),
    }
}

/// The exec helper (`mcpwarden sandbox-exec`), run by a session.
fn sandbox_exec_cmd(
    spec: &str,
    traced_procs: &std::path::Path,
    procs: &[PathBuf],
    die_with_parent: Option<i32>,
    notify_fd: Option<i32>,
    command: &[OsString],
) -> ExitCode {
    let notify = match notify_fd.map(inherited_socket).transpose() {
        Ok(fd) => fd,
        Err(e) => return fail(&format!("--notify-fd: {e}")),
    };
    if let Some(parent) = die_with_parent
        && let Err(e) = exec::die_with_parent(nix::unistd::Pid::from_raw(parent))
    {
        return fail(&format!("{e}: the process that started the server is gone"));
    }
    let spec: Spec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => return fail(&format!("bad sandbox spec: {e}")),
    };
    let env = exec::server_env(&spec.env, |name| std::env::var_os(name));
    match exec::confine_and_run(traced_procs, procs, &spec, &env, command, notify) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("mcpwarden: {e}");
            ExitCode::from(127)
        }
    }
}

/// Takes ownership of descriptor `fd`, inherited from the session that
/// started us; it must be an open socket.
fn inherited_socket(fd: i32) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::{BorrowedFd, FromRawFd as _};
    if fd < 3 {
        return Err(format!("{fd} is not an inherited descriptor"));
    }
    // SAFETY: only borrowed for the check; `fd` is not closed meanwhile.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(borrowed).map_err(|e| format!("descriptor {fd}: {e}"))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("descriptor {fd} is not a socket"));
    }
    // SAFETY: an open descriptor (fstat worked) that nothing else in this
    // process owns: the session passed it to us alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The runtime of the daemon and of a session: two worker threads (the
/// helpers a session starts die with the thread that started them, and
/// worker threads live as long as the runtime).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(&format!("cannot start the runtime: {e}")))
}

fn daemon_cmd(opts: mcpwarden::daemon::DaemonOptions) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(mcpwarden::daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Logs to stderr; to the journal, with structured fields, when stderr is
/// the journal (a systemd service: `JOURNAL_STREAM` names stderr's device
/// and inode, as systemd.exec(5) says to check).
fn init_logging() {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("MCPWARDEN_LOG")
            .unwrap_or_else(|_| "mcpwarden=info".into())
    };
    if stderr_is_the_journal()
        && let Ok(journal) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter())
            .with(journal.with_syslog_identifier("mcpwarden".to_owned()))
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter())
        .init();
}

fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

fn sessions_cmd(last: usize, json: bool, state: Option<&std::path::Path>) -> ExitCode {
    let records =
        match mcpwarden::admin::client::ask(mcpwarden::admin::Op::Sessions { last }, state) {
            Ok(v) => v,
            Err(e) => return fail(&e),
        };
    if json {
        println!("{records}");
        return ExitCode::SUCCESS;
    }
    for s in records.as_array().into_iter().flatten() {
        let server: Vec<&str> = s["server"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        println!(
            "{}  uid {}  {}  {}",
            s["session"].as_str().unwrap_or_default(),
            s["uid"],
            s["outcome"].as_str().unwrap_or("running"),
            server.join(" ")
        );
    }
    ExitCode::SUCCESS
}

fn status_cmd(json: bool) -> ExitCode {
    let socket = mcpwarden::admin::client::socket_path();
    match mcpwarden::admin::client::daemon_call(&socket, &mcpwarden::admin::Op::Health) {
        Some(Ok(health)) if json => {
            println!("{health}");
            ExitCode::SUCCESS
        }
        Some(Ok(h)) => {
            println!(
                "mcpwarden daemon {} (pid {}) up {} s, store {}",
                h["version"].as_str().unwrap_or_default(),
                h["pid"],
                h["uptime_s"],
                h["state"].as_str().unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Some(Err(e)) => fail(&e.message),
        None => {
            eprintln!("no mcpwarden daemon answers on {}", socket.display());
            ExitCode::from(1)
        }
    }
}

fn run_session(opts: RunOptions) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(session::run(opts));
    // A blocking write to a client that stopped reading (our stdout is a
    // full pipe) must not keep the process alive: the session has ended
    // and its server is gone.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn doctor_cmd(json: bool) -> ExitCode {
    let report = doctor::probe();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print!("{}", report.render());
    }
    if report.missing().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("mcpwarden: {message}");
    ExitCode::FAILURE
}

/// `mcpwarden sandbox run`: the command confined, stdio inherited; the
/// cgroup is removed afterwards. Returns the command's exit code.
fn sandbox_run(
    policy: &std::path::Path,
    dry_run: bool,
    command: &[OsString],
) -> Result<i32, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "mcpwarden sandbox run must run as root (it creates cgroups and namespaces)".into(),
        );
    }
    let policy = Policy::load(policy).map_err(|e| e.to_string())?;
    let mut spec = policy.sandbox;
    spec.dry_run = dry_run;
    let cgroup = launch::new_session(&spec)
        .map_err(|e| e.to_string())?
        .cgroup;
    let status = launch::helper_command(&cgroup, &spec, command, false, None)
        .and_then(|mut cmd| cmd.status())
        .map_err(|e| format!("cannot start the sandbox helper: {e}"))?;
    cgroup
        .remove(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    }))
}
