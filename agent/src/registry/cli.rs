//! `mcpwarden tools`: the pinned tool registry.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{Pin, PinState};
use crate::admin::{Op, client};

#[derive(Debug, Subcommand)]
pub enum ToolsCmd {
    /// List pinned tools (with what is pending approval and why).
    List {
        /// Only this server (the policy's metadata.name).
        #[arg(long)]
        server: Option<String>,
        /// State directory (default: $MCPWARDEN_STATE_DIR, else /var/lib/mcpwarden).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a server's pending tools (all of them, and a changed
    /// executable, when no TOOL is named): their current definitions become
    /// the pins and their calls pass again.
    Approve {
        #[arg(long)]
        server: String,
        #[arg(long)]
        state: Option<PathBuf>,
        /// Tools to approve (default: every pending one).
        tools: Vec<String>,
    },
    /// Forget every pin of a server (its next tools/list is pinned afresh).
    Forget {
        #[arg(long)]
        server: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

impl ToolsCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        crate::exit_code(self.go().map(|()| ExitCode::SUCCESS))
    }

    fn go(self) -> Result<(), String> {
        match self {
            Self::List {
                server,
                state,
                json,
            } => {
                let pins = client::ask(Op::Tools { server }, state.as_deref())?;
                if json {
                    println!("{pins}");
                    return Ok(());
                }
                let pins = pins.as_array().cloned().unwrap_or_default();
                for entry in &pins {
                    let pin: Pin = serde_json::from_value(entry["pin"].clone())
                        .map_err(|e| format!("a pin the store answered: {e}"))?;
                    let state = match (pin.state, &pin.approved) {
                        (PinState::Approved, _) => "approved".to_owned(),
                        (PinState::Pending, None) => "pending (new tool)".to_owned(),
                        (PinState::Pending, Some(a)) => {
                            let fields = pin
                                .pending
                                .as_ref()
                                .map(|n| {
                                    super::changed_fields(&a.definition, &n.definition).join(", ")
                                })
                                .unwrap_or_default();
                            format!("pending (changed: {fields})")
                        }
                    };
                    let hash = pin
                        .approved
                        .as_ref()
                        .map_or("-", |a| &a.hash[..16.min(a.hash.len())]);
                    println!(
                        "{}\t{}\t{state}\t{hash}",
                        entry["server"].as_str().unwrap_or_default(),
                        entry["tool"].as_str().unwrap_or_default()
                    );
                }
                if pins.is_empty() {
                    println!("no pinned tools");
                }
                Ok(())
            }
            Self::Approve {
                server,
                state,
                tools,
            } => {
                let a = client::ask(
                    Op::ApproveTools {
                        server: server.clone(),
                        tools,
                    },
                    state.as_deref(),
                )?;
                let done: Vec<&str> = a["approved"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_str)
                    .collect();
                if done.is_empty() {
                    println!("{server}: nothing pending");
                } else {
                    println!("{server}: approved {}", done.join(", "));
                }
                Ok(())
            }
            Self::Forget { server, state } => {
                let a = client::ask(
                    Op::ForgetTools {
                        server: server.clone(),
                    },
                    state.as_deref(),
                )?;
                println!("{server}: forgot {} pin(s)", a["forgot"]);
                Ok(())
            }
        }
    }
}
