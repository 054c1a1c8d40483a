//! `mcpwarden agent`: register, list, verify and revoke agent identities.
use std::{io::Read as _, path::PathBuf, process::ExitCode};

use clap::Subcommand;

use serde_json::Value;

use super::Scope;
use crate::admin::{Op, client};

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Register an agent and print its API token (shown once: only its
    /// hash is kept).
    Register {
        name: String,
        /// A role for policies' `agent.roles` (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime: `90d`, `12h`, `30m`, `3600s` or `never` (default 90d).
        #[arg(long, default_value = "90d")]
        expires: String,
        /// What the identity may do with the daemon's API: read or admin
        /// (default: nothing).
        #[arg(long)]
        api: Option<Scope>,
        /// State directory (default: $MCPWARDEN_STATE_DIR, else /var/lib/mcpwarden).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// List identities (never their tokens).
    List {
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a token (from $MCPWARDEN_TOKEN, else standard input): print
    /// the identity it proves, exit 1 when it proves none.
    Verify {
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Revoke an identity: its token stops working at once.
    Revoke {
        name: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

/// Seconds in a lifetime such as `90d`; `None` for `never`.
pub fn parse_ttl(text: &str) -> Result<Option<u64>, String> {
    if text == "never" {
        return Ok(None);
    }
    let bad = || format!("{text:?}: a lifetime is a number with s, m, h or d (e.g. 90d), or never");
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: u64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(format!("{text:?}: a lifetime must be more than zero"));
    }
    n.checked_mul(scale).map(Some).ok_or_else(bad)
}

impl AgentCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        crate::exit_code(self.go())
    }

    fn go(self) -> Result<ExitCode, String> {
        match self {
            Self::Register {
                name,
                roles,
                expires,
                api,
                state,
            } => {
                parse_ttl(&expires)?;
                let answer = client::ask(
                    Op::Register {
                        name: name.clone(),
                        roles,
                        expires,
                        api,
                    },
                    state.as_deref(),
                )?;
                let identity = &answer["identity"];
                eprintln!(
                    "registered {name:?} (id {}); its token is shown once, keep it secret:",
                    identity["id"].as_str().unwrap_or_default()
                );
                println!("{}", answer["token"].as_str().unwrap_or_default());
                if let Some(flag) = identity["flagged"].as_str() {
                    eprintln!(
                        "warning: flagged as sybil-like: {flag}; it starts with lowered trust"
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Self::List { state, json } => {
                let all = client::ask(Op::Identities, state.as_deref())?;
                if json {
                    println!("{all}");
                    return Ok(ExitCode::SUCCESS);
                }
                print_list(&all);
                Ok(ExitCode::SUCCESS)
            }
            Self::Verify { state } => {
                let token = if let Ok(t) = std::env::var("MCPWARDEN_TOKEN") {
                    t
                } else {
                    let mut t = String::new();
                    std::io::stdin()
                        .take(4096)
                        .read_to_string(&mut t)
                        .map_err(|e| format!("cannot read the token: {e}"))?;
                    t
                };
                let answer = client::ask(
                    Op::VerifyToken {
                        token: token.trim().to_owned(),
                    },
                    state.as_deref(),
                )?;
                if answer["valid"] == true {
                    println!("{}", answer["identity"]);
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("refused: {}", answer["why"].as_str().unwrap_or_default());
                    Ok(ExitCode::from(1))
                }
            }
            Self::Revoke { name, state } => {
                client::ask(Op::RevokeIdentity { name: name.clone() }, state.as_deref())?;
                println!("revoked {name:?}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// One line per identity.
fn print_list(all: &Value) {
    let now = crate::store::unix_now();
    for i in all.as_array().into_iter().flatten() {
        let status = match (i["revoked"].as_u64(), i["expires"].as_u64()) {
            (Some(_), _) => "revoked".to_owned(),
            (None, Some(e)) if e <= now => "expired".to_owned(),
            (None, Some(e)) => format!("expires in {} d", (e - now) / 86_400),
            (None, None) => "never expires".to_owned(),
        };
        let roles: Vec<&str> = i["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<24} {}  roles [{}]{}  {status}{}",
            i["name"].as_str().unwrap_or_default(),
            i["id"].as_str().unwrap_or_default(),
            roles.join(", "),
            i["api"]
                .as_str()
                .map(|a| format!("  api {a}"))
                .unwrap_or_default(),
            i["flagged"]
                .as_str()
                .map(|f| format!("  FLAGGED: {f}"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DEFAULT_TTL;

    #[test]
    fn lifetimes_parse_and_refuse_nonsense() {
        assert_eq!(parse_ttl("90d"), Ok(Some(DEFAULT_TTL)));
        assert_eq!(parse_ttl("12h"), Ok(Some(43_200)));
        assert_eq!(parse_ttl("never"), Ok(None));
        for bad in ["", "d", "5y", "0d", "-1d", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
