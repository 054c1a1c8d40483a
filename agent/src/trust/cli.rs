//! `mcpwarden trust`: what the store knows of each agent and server.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use serde_json::Value;

use super::Dimension;
use crate::admin::{Op, client};

#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    /// Show trust scores and what moved them (every subject, or one:
    /// `agent:NAME` or `server:NAME`).
    Show {
        subject: Option<String>,
        /// State directory (default: $MCPWARDEN_STATE_DIR, else /var/lib/mcpwarden).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a subject's history (audited).
    Reset {
        subject: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

impl TrustCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        crate::exit_code(self.go().map(|()| ExitCode::SUCCESS))
    }

    fn go(self) -> Result<(), String> {
        match self {
            Self::Show {
                subject,
                state,
                json,
            } => {
                let all = client::ask(Op::Trust { subject }, state.as_deref())?;
                if json {
                    println!("{all}");
                    return Ok(());
                }
                let all = all.as_array().cloned().unwrap_or_default();
                if all.is_empty() {
                    println!("no trust history yet");
                }
                let now = crate::store::unix_now();
                for t in &all {
                    print_one(t, now);
                }
                Ok(())
            }
            Self::Reset { subject, state } => {
                let a = client::ask(Op::ResetTrust { subject }, state.as_deref())?;
                println!(
                    "{}: history forgotten (was {:.3})",
                    a["subject"].as_str().unwrap_or_default(),
                    a["was"].as_f64().unwrap_or_default()
                );
                Ok(())
            }
        }
    }
}

/// One subject's account ([`super::Trust::explain`]) in plain lines.
fn print_one(t: &Value, now: u64) {
    println!(
        "{}  trust {:.3}",
        t["subject"].as_str().unwrap_or_default(),
        t["overall"].as_f64().unwrap_or_default()
    );
    for d in Dimension::ALL {
        let name = serde_json::to_value(d)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let e = &t["dimensions"][&name];
        println!(
            "  {name:<12} {:.3}  (good {:.1}, bad {:.1})",
            e["score"].as_f64().unwrap_or_default(),
            e["good"].as_f64().unwrap_or_default(),
            e["bad"].as_f64().unwrap_or_default()
        );
    }
    for m in t["recent"].as_array().into_iter().flatten() {
        println!(
            "  {} s ago: {} moved it {:.3} -> {:.3}",
            now.saturating_sub(m["at"].as_u64().unwrap_or_default()),
            m["event"].as_str().unwrap_or_default(),
            m["from"].as_f64().unwrap_or_default(),
            m["to"].as_f64().unwrap_or_default()
        );
    }
}
