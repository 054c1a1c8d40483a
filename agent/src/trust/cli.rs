//! `mcpwarden trust`: what the store knows of each agent and server.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{Decay, Dimension, Kind, Trust, now_ms, store};
use crate::store::{Db, audit, state_dir};

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

fn parse_subject(s: &str) -> Result<(Kind, &str), String> {
    match s.split_once(':') {
        Some(("agent", name)) if !name.is_empty() => Ok((Kind::Agent, name)),
        Some(("server", name)) if !name.is_empty() => Ok((Kind::Server, name)),
        _ => Err(format!(
            "{s:?}: a subject is agent:NAME or server:NAME (see `mcpwarden trust show`)"
        )),
    }
}

impl TrustCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        crate::exit_code(self.go().map(|()| ExitCode::SUCCESS))
    }

    fn go(self) -> Result<(), String> {
        let now = now_ms();
        let decay = Decay::default();
        match self {
            Self::Show {
                subject,
                state,
                json,
            } => {
                let db = Db::open(&state_dir(state.as_deref())).map_err(|e| e.to_string())?;
                let subjects: Vec<(String, Trust)> = match &subject {
                    Some(s) => {
                        let (kind, name) = parse_subject(s)?;
                        vec![(
                            s.clone(),
                            store::load(&db, kind, name).map_err(|e| e.to_string())?,
                        )]
                    }
                    None => store::all(&db).map_err(|e| e.to_string())?,
                };
                if json {
                    let list: Vec<_> = subjects
                        .iter()
                        .map(|(s, t)| {
                            let mut v = t.explain(now, decay);
                            v["subject"] = s.clone().into();
                            v
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(list));
                    return Ok(());
                }
                if subjects.is_empty() {
                    println!("no trust history yet");
                }
                for (s, t) in &subjects {
                    print_one(s, t, now, decay);
                }
                Ok(())
            }
            Self::Reset { subject, state } => {
                let (kind, name) = parse_subject(&subject)?;
                let db = Db::open(&state_dir(state.as_deref())).map_err(|e| e.to_string())?;
                let old = store::load(&db, kind, name).map_err(|e| e.to_string())?;
                store::save(&db, name, &Trust::new(kind)).map_err(|e| e.to_string())?;
                audit::append(
                    &db,
                    audit::Actor::current(),
                    "trust.reset",
                    &subject,
                    serde_json::json!({"was": old.overall(now, decay)}),
                )
                .map_err(|e| e.to_string())?;
                println!(
                    "{subject}: history forgotten (was {:.3})",
                    old.overall(now, decay)
                );
                Ok(())
            }
        }
    }
}

fn print_one(subject: &str, t: &Trust, now: u64, decay: Decay) {
    println!("{subject}  trust {:.3}", t.overall(now, decay));
    for d in Dimension::ALL {
        let e = t.dims[d as usize].at(now, decay);
        println!(
            "  {:<12} {:.3}  (good {:.1}, bad {:.1})",
            format!("{d:?}").to_lowercase(),
            e.score(),
            e.good,
            e.bad
        );
    }
    for m in t.movers() {
        println!(
            "  {} s ago: {} moved it {:.3} -> {:.3}",
            now.saturating_sub(m.at) / 1000,
            m.signal.name(),
            m.before,
            m.after
        );
    }
}
