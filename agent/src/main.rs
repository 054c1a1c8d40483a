//! The `mcpwarden` command.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mcpwarden::{
    doctor,
    proxy::lines::DEFAULT_MAX_LINE,
    session::{self, RunOptions},
};

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
    /// Run an MCP stdio server confined and traced, relaying MCP on stdio.
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
        /// The server command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// (internal) Join a session cgroup, then exec the server.
    #[command(hide = true)]
    SandboxExec {
        /// The session cgroup's cgroup.procs file.
        #[arg(long)]
        cgroup_procs: PathBuf,
        /// The server command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // stdout carries MCP: every log line goes to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MCPWARDEN_LOG")
                .unwrap_or_else(|_| "mcpwarden=info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Doctor { json } => {
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
        Cmd::Run {
            policy,
            events,
            max_message,
            command,
        } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mcpwarden: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(session::run(RunOptions {
                policy,
                events,
                max_message,
                command,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcpwarden: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::SandboxExec {
            cgroup_procs,
            command,
        } => {
            let err = mcpwarden_sandbox::exec::join_cgroup_and_exec(&cgroup_procs, &command);
            eprintln!("mcpwarden: {err}");
            ExitCode::from(127)
        }
    }
}
