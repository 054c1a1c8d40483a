//! `mcpwarden agent`: register, list, verify and revoke agent identities.
use std::{io::Read as _, path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{Identity, Sybil, store};
use crate::store::{Db, audit::Actor, state_dir};

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

fn describe(i: &Identity) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "id": format!("{:016x}", i.id),
        "roles": i.roles,
        "created": i.created,
        "expires": i.expires,
        "revoked": i.revoked,
        "registered_by": i.registered_by,
        "flagged": i.flagged,
    })
}

impl AgentCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        crate::exit_code(self.go())
    }

    fn go(self) -> Result<ExitCode, String> {
        let open = |state: Option<PathBuf>| {
            Db::open(&state_dir(state.as_deref())).map_err(|e| e.to_string())
        };
        match self {
            Self::Register {
                name,
                roles,
                expires,
                state,
            } => {
                let ttl = parse_ttl(&expires)?;
                let db = open(state)?;
                let (identity, token) =
                    store::register(&db, &Actor::current(), &name, roles, ttl, Sybil::default())
                        .map_err(|e| e.to_string())?;
                eprintln!(
                    "registered {name:?} (id {:016x}); its token is shown once, keep it secret:",
                    identity.id
                );
                println!("{}", token.0);
                if let Some(flag) = &identity.flagged {
                    eprintln!(
                        "warning: flagged as sybil-like: {flag}; it starts with lowered trust"
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Self::List { state, json } => {
                let db = open(state)?;
                let all = store::list(&db).map_err(|e| e.to_string())?;
                if json {
                    let list: Vec<_> = all.iter().map(describe).collect();
                    println!("{}", serde_json::Value::Array(list));
                    return Ok(ExitCode::SUCCESS);
                }
                let now = crate::store::unix_now();
                for i in &all {
                    let status = match (i.revoked, i.expires) {
                        (Some(_), _) => "revoked".to_owned(),
                        (None, Some(e)) if e <= now => "expired".to_owned(),
                        (None, Some(e)) => format!("expires in {} d", (e - now) / 86_400),
                        (None, None) => "never expires".to_owned(),
                    };
                    println!(
                        "{:<24} {:016x}  roles [{}]  {status}{}",
                        i.name,
                        i.id,
                        i.roles.join(", "),
                        i.flagged
                            .as_deref()
                            .map(|f| format!("  FLAGGED: {f}"))
                            .unwrap_or_default()
                    );
                }
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
                let db = open(state)?;
                match store::authenticate(&db, token.trim()).map_err(|e| e.to_string())? {
                    Ok(i) => {
                        println!("{}", describe(&i));
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        eprintln!("refused: {e}");
                        Ok(ExitCode::from(1))
                    }
                }
            }
            Self::Revoke { name, state } => {
                let db = open(state)?;
                match store::revoke(&db, &Actor::current(), &name).map_err(|e| e.to_string())? {
                    Some(_) => {
                        println!("revoked {name:?}");
                        Ok(ExitCode::SUCCESS)
                    }
                    None => Err(format!(
                        "no identity named {name:?} (see `mcpwarden agent list`)"
                    )),
                }
            }
        }
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
