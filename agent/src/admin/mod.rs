//! Administrative operations on the store: one definition of each, used by
//! the command line and by the daemon's API.
//!
//! An [`Op`] is what an administrator asks (list identities, issue a
//! certificate, verify the audit chain, ...). [`execute`] carries it out on
//! a store for an actor and answers JSON. The command line either executes
//! it on the store itself or, when the daemon runs and holds the store,
//! sends it to the daemon's API ([`client`]); the API maps its routes to
//! the same ops ([`route`]) and checks the caller's [`Scope`] first.
pub mod client;
pub mod route;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    identity::{
        self, Identity, RegisterError, Scope, Sybil,
        ca::{self, CaError, Paths},
        cli::parse_ttl,
    },
    policy::Policy,
    registry::store::Store,
    store::{Db, StoreError, audit},
    trust::{self, Decay, Kind, Trust},
};

/// What an administrator asks of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Health,
    Identities,
    Register {
        name: String,
        #[serde(default)]
        roles: Vec<String>,
        /// `90d`, `12h`, ... or `never`.
        expires: String,
        #[serde(default)]
        api: Option<Scope>,
    },
    RevokeIdentity {
        name: String,
    },
    VerifyToken {
        token: String,
    },
    CaInit {
        name: String,
        #[serde(default)]
        server_names: Vec<String>,
    },
    CaServer {
        #[serde(default)]
        server_names: Vec<String>,
    },
    IssueCert {
        name: String,
        expires: String,
    },
    Certs,
    RevokeCert {
        what: String,
    },
    Crl {
        valid: String,
    },
    Trust {
        subject: Option<String>,
    },
    ResetTrust {
        subject: String,
    },
    Audit {
        last: usize,
    },
    VerifyAudit,
    /// Sessions the daemon ran or runs, newest first.
    Sessions {
        last: usize,
    },
    Tools {
        server: Option<String>,
    },
    ApproveTools {
        server: String,
        #[serde(default)]
        tools: Vec<String>,
    },
    ForgetTools {
        server: String,
    },
    CheckPolicy {
        text: String,
    },
}

impl Op {
    /// The scope an API caller needs for it.
    #[must_use]
    pub fn scope(&self) -> Scope {
        match self {
            Self::Health
            | Self::Identities
            | Self::VerifyToken { .. }
            | Self::Certs
            | Self::Crl { .. }
            | Self::Trust { .. }
            | Self::Audit { .. }
            | Self::VerifyAudit
            | Self::Sessions { .. }
            | Self::Tools { .. }
            | Self::CheckPolicy { .. } => Scope::Read,
            _ => Scope::Admin,
        }
    }
}

/// Why an op failed, with the HTTP status the API answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub status: u16,
    pub message: String,
}

impl OpError {
    #[must_use]
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        Self::new(500, e.to_string())
    }
}

impl From<CaError> for OpError {
    fn from(e: CaError) -> Self {
        let status = match &e {
            CaError::Missing(_) | CaError::NoIdentity(_) | CaError::NoCertificate(_) => 404,
            CaError::Exists(_) => 409,
            CaError::Cert(_) | CaError::File { .. } | CaError::Store(_) => 500,
        };
        Self::new(status, e.to_string())
    }
}

impl From<RegisterError> for OpError {
    fn from(e: RegisterError) -> Self {
        let status = match &e {
            RegisterError::Taken(_) => 409,
            RegisterError::BadName(_) => 400,
            _ => 500,
        };
        Self::new(status, e.to_string())
    }
}

/// An identity as shown (never its secret's hash).
#[must_use]
pub fn describe(i: &Identity) -> Value {
    json!({
        "name": i.name,
        "id": format!("{:016x}", i.id),
        "roles": i.roles,
        "api": i.api,
        "created": i.created,
        "expires": i.expires,
        "revoked": i.revoked,
        "registered_by": i.registered_by,
        "flagged": i.flagged,
    })
}

fn parse_subject(s: &str) -> Result<(Kind, &str), OpError> {
    match s.split_once(':') {
        Some(("agent", name)) if !name.is_empty() => Ok((Kind::Agent, name)),
        Some(("server", name)) if !name.is_empty() => Ok((Kind::Server, name)),
        _ => Err(OpError::bad(format!(
            "{s:?}: a subject is agent:NAME or server:NAME (see `mcpwarden trust show`)"
        ))),
    }
}

/// Carries out `op` on the store `db` (in the state directory `state`)
/// for `actor`.
pub fn execute(db: &Db, state: &Path, actor: &audit::Actor, op: Op) -> Result<Value, OpError> {
    match op {
        Op::Identities
        | Op::Register { .. }
        | Op::RevokeIdentity { .. }
        | Op::VerifyToken { .. } => identity_op(db, actor, op),
        Op::CaInit { .. }
        | Op::CaServer { .. }
        | Op::IssueCert { .. }
        | Op::Certs
        | Op::RevokeCert { .. }
        | Op::Crl { .. } => ca_op(db, &Paths::new(state), actor, op),
        other => store_op(db, state, actor, other),
    }
}

/// Identities: list, register, revoke, verify a token.
fn identity_op(db: &Db, actor: &audit::Actor, op: Op) -> Result<Value, OpError> {
    match op {
        Op::Identities => Ok(Value::Array(
            identity::store::list(db)?.iter().map(describe).collect(),
        )),
        Op::Register {
            name,
            roles,
            expires,
            api,
        } => {
            let ttl = parse_ttl(&expires).map_err(OpError::bad)?;
            let (identity, token) =
                identity::store::register(db, actor, &name, roles, ttl, api, Sybil::default())?;
            Ok(json!({"identity": describe(&identity), "token": token.0}))
        }
        Op::RevokeIdentity { name } => match identity::store::revoke(db, actor, &name)? {
            Some(i) => Ok(describe(&i)),
            None => Err(OpError::not_found(format!(
                "no identity named {name:?} (see `mcpwarden agent list`)"
            ))),
        },
        Op::VerifyToken { token } => Ok(match identity::store::authenticate(db, token.trim())? {
            Ok(i) => json!({"valid": true, "identity": describe(&i)}),
            Err(e) => json!({"valid": false, "why": e.to_string()}),
        }),
        other => Err(OpError::new(500, format!("not an identity op: {other:?}"))),
    }
}

/// The CA and its certificates.
fn ca_op(db: &Db, paths: &Paths, actor: &audit::Actor, op: Op) -> Result<Value, OpError> {
    match op {
        Op::CaInit { name, server_names } => {
            let names = or_default_names(server_names);
            ca::init(db, actor, paths, &name, &names)?;
            Ok(json!({
                "name": name,
                "dir": paths.dir.display().to_string(),
                "ca_cert": paths.ca_cert().display().to_string(),
                "server_cert": paths.server_cert().display().to_string(),
                "server_names": names,
            }))
        }
        Op::CaServer { server_names } => {
            let names = or_default_names(server_names);
            ca::issue_server(db, actor, paths, &names)?;
            Ok(json!({
                "server_cert": paths.server_cert().display().to_string(),
                "server_names": names,
            }))
        }
        Op::IssueCert { name, expires } => {
            let ttl = parse_ttl(&expires).map_err(OpError::bad)?;
            let issued = ca::issue(db, actor, paths, &name, ttl)?;
            let ca_pem = std::fs::read_to_string(paths.ca_cert())
                .map_err(|e| OpError::new(500, format!("{}: {e}", paths.ca_cert().display())))?;
            Ok(json!({
                "record": issued.record,
                "cert_pem": issued.cert_pem,
                "key_pem": issued.key_pem,
                "ca_pem": ca_pem,
            }))
        }
        Op::Certs => Ok(serde_json::to_value(ca::list(db)?).unwrap_or_default()),
        Op::RevokeCert { what } => {
            Ok(serde_json::to_value(ca::revoke(db, actor, &what)?).unwrap_or_default())
        }
        Op::Crl { valid } => {
            let valid = parse_ttl(&valid)
                .map_err(OpError::bad)?
                .ok_or_else(|| OpError::bad("a CRL's validity cannot be `never`"))?;
            Ok(json!({ "pem": ca::crl(db, paths, valid)? }))
        }
        other => Err(OpError::new(500, format!("not a CA op: {other:?}"))),
    }
}

/// Health, trust, audit, tool pins and policy checks.
fn store_op(db: &Db, state: &Path, actor: &audit::Actor, op: Op) -> Result<Value, OpError> {
    match op {
        Op::Health => Ok(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "state": state.display().to_string(),
            "pid": std::process::id(),
        })),
        Op::Trust { subject } => trust_of(db, subject.as_deref()),
        Op::ResetTrust { subject } => {
            let (kind, name) = parse_subject(&subject)?;
            let (now, decay) = (trust::now_ms(), Decay::default());
            let old = trust::store::load(db, kind, name)?;
            trust::store::save(db, name, &Trust::new(kind))?;
            let was = old.overall(now, decay);
            audit::append(
                db,
                actor.clone(),
                "trust.reset",
                &subject,
                json!({"was": was}),
            )?;
            Ok(json!({"subject": subject, "was": was}))
        }
        Op::Audit { last } => Ok(serde_json::to_value(audit::tail(db, last)?).unwrap_or_default()),
        Op::Sessions { last } => Ok(serde_json::to_value(crate::daemon::records::history(
            db, last,
        )?)
        .unwrap_or_default()),
        Op::VerifyAudit => Ok(match audit::verify(db)? {
            audit::Verdict::Intact { records } => json!({"intact": true, "records": records}),
            audit::Verdict::Broken { seq, why } => {
                json!({"intact": false, "seq": seq, "why": why})
            }
        }),
        Op::Tools { server } => tools(db, server.as_deref()),
        Op::ApproveTools { server, tools } => {
            let store = Store::from_db(db.clone())?;
            let done = store.approve(&server, &tools)?;
            if !done.is_empty() {
                audit::append(
                    db,
                    actor.clone(),
                    "tools.approve",
                    &server,
                    json!({"tools": done}),
                )?;
            }
            if let Some(missing) = tools.iter().find(|t| !done.contains(t)) {
                return Err(OpError::not_found(format!(
                    "{server} has no pinned tool {missing:?}"
                )));
            }
            Ok(json!({"server": server, "approved": done}))
        }
        Op::ForgetTools { server } => {
            let n = Store::from_db(db.clone())?.forget(&server)?;
            audit::append(
                db,
                actor.clone(),
                "tools.forget",
                &server,
                json!({"pins": n}),
            )?;
            Ok(json!({"server": server, "forgot": n}))
        }
        Op::CheckPolicy { text } => Ok(match Policy::parse(&text, "(request)") {
            Ok(p) => json!({
                "valid": true,
                "name": p.metadata.as_ref().map(|m| m.name.clone()),
                "warnings": p.warnings(),
            }),
            Err(e) => json!({"valid": false, "error": e.to_string()}),
        }),
        other => Err(OpError::new(500, format!("not a store op: {other:?}"))),
    }
}

fn or_default_names(given: Vec<String>) -> Vec<String> {
    if given.is_empty() {
        ca::default_server_names()
    } else {
        given
    }
}

fn trust_of(db: &Db, subject: Option<&str>) -> Result<Value, OpError> {
    let (now, decay) = (trust::now_ms(), Decay::default());
    let subjects: Vec<(String, Trust)> = match subject {
        Some(s) => {
            let (kind, name) = parse_subject(s)?;
            vec![(s.to_owned(), trust::store::load(db, kind, name)?)]
        }
        None => trust::store::all(db)?,
    };
    Ok(Value::Array(
        subjects
            .iter()
            .map(|(s, t)| {
                let mut v = t.explain(now, decay);
                v["subject"] = s.clone().into();
                v
            })
            .collect(),
    ))
}

fn tools(db: &Db, server: Option<&str>) -> Result<Value, OpError> {
    let pins = Store::from_db(db.clone())?.pins(server)?;
    Ok(Value::Array(
        pins.iter()
            .map(|(s, t, p)| json!({"server": s, "tool": t, "pin": p}))
            .collect(),
    ))
}
