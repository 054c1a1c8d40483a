//! `mcpwarden tools`: the pinned tool registry.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{
    PinState,
    store::{Store, state_dir},
};
use crate::store::audit;

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
                let store = Store::open(&state_dir(state.as_deref())).map_err(|e| e.to_string())?;
                let pins = store.pins(server.as_deref()).map_err(|e| e.to_string())?;
                if json {
                    let list: Vec<_> = pins
                        .iter()
                        .map(|(s, t, p)| serde_json::json!({"server": s, "tool": t, "pin": p}))
                        .collect();
                    println!("{}", serde_json::Value::Array(list));
                    return Ok(());
                }
                for (s, t, p) in &pins {
                    let state = match (p.state, &p.approved) {
                        (PinState::Approved, _) => "approved".to_owned(),
                        (PinState::Pending, None) => "pending (new tool)".to_owned(),
                        (PinState::Pending, Some(a)) => {
                            let fields = p
                                .pending
                                .as_ref()
                                .map(|n| {
                                    super::changed_fields(&a.definition, &n.definition).join(", ")
                                })
                                .unwrap_or_default();
                            format!("pending (changed: {fields})")
                        }
                    };
                    let hash = p
                        .approved
                        .as_ref()
                        .map_or("-", |a| &a.hash[..16.min(a.hash.len())]);
                    println!("{s}\t{t}\t{state}\t{hash}");
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
                let store = Store::open(&state_dir(state.as_deref())).map_err(|e| e.to_string())?;
                let done = store.approve(&server, &tools).map_err(|e| e.to_string())?;
                if !done.is_empty() {
                    audit::append(
                        store.db(),
                        audit::Actor::current(),
                        "tools.approve",
                        &server,
                        serde_json::json!({ "tools": done }),
                    )
                    .map_err(|e| e.to_string())?;
                }
                if let Some(missing) = tools.iter().find(|t| !done.contains(t)) {
                    return Err(format!("{server} has no pinned tool {missing:?}"));
                }
                if done.is_empty() {
                    println!("{server}: nothing pending");
                } else {
                    println!("{server}: approved {}", done.join(", "));
                }
                Ok(())
            }
            Self::Forget { server, state } => {
                let store = Store::open(&state_dir(state.as_deref())).map_err(|e| e.to_string())?;
                let n = store.forget(&server).map_err(|e| e.to_string())?;
                audit::append(
                    store.db(),
                    audit::Actor::current(),
                    "tools.forget",
                    &server,
                    serde_json::json!({ "pins": n }),
                )
                .map_err(|e| e.to_string())?;
                println!("{server}: forgot {n} pin(s)");
                Ok(())
            }
        }
    }
}
