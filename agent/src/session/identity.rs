//! Who the client is beyond its peer credentials: the registered identity
//! its API token proves ([`crate::identity`]).
//!
//! On stdio the MCP client's configuration hands `mcpwarden run` the token
//! in `MCPWARDEN_TOKEN`: checked once, before anything starts (a wrong
//! token is an error, never a silent downgrade to anonymous). Over HTTP
//! every request may carry `Authorization: Bearer TOKEN`; the first valid
//! one binds the run to its identity, and a request proving another
//! identity is refused (one run serves one agent). With
//! `[identity] require = "token"`, a client without a valid token is
//! refused (401 over HTTP; the session does not start on stdio).
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use serde_json::json;

use super::{
    RunError,
    core::{Core, Shared, lock},
    http_front::refuse,
    trust::agent_name,
};
use crate::{
    identity::{self, Identity},
    policy::{
        Policy,
        agents::{Proven, Require, identify},
    },
    proxy::message::code,
    store::{Db, audit},
};

/// The variable a stdio client's configuration puts the token in.
pub const TOKEN_ENV: &str = "MCPWARDEN_TOKEN";

/// How long a checked token is believed before the store is asked again
/// (so a revocation takes effect within this time).
const RECHECK: Duration = Duration::from_secs(2);

fn proven(i: &Identity) -> Proven {
    Proven {
        name: i.name.clone(),
        roles: i.roles.clone(),
    }
}

/// The identity `MCPWARDEN_TOKEN` proves, for a stdio session. `None`
/// when no token is given and the policy does not require one.
pub(super) fn from_env(policy: &Policy, dir: &std::path::Path) -> Result<Option<Proven>, RunError> {
    let Ok(token) = std::env::var(TOKEN_ENV) else {
        if policy.require == Require::Token {
            return Err(RunError::Identity(format!(
                "policy {} requires an API token: set {TOKEN_ENV} in the MCP client's \
                 configuration (`mcpwarden agent register NAME` issues one)",
                policy.source
            )));
        }
        return Ok(None);
    };
    let db = Db::open(dir).map_err(|e| RunError::Identity(e.to_string()))?;
    match identity::store::authenticate(&db, &token)
        .map_err(|e| RunError::Identity(e.to_string()))?
    {
        Ok(i) => Ok(Some(proven(&i))),
        Err(e) => Err(RunError::Identity(format!("{TOKEN_ENV} was refused: {e}"))),
    }
}

/// What the store said of a token, and when.
type Checked = (Result<Proven, String>, Instant);

/// Token checks for the HTTP endpoint.
#[derive(Debug)]
pub(crate) struct Auth {
    dir: PathBuf,
    required: bool,
    /// SHA-256 of a token -> what the store said, and when.
    cache: Mutex<HashMap<String, Checked>>,
}

impl Auth {
    pub fn new(dir: PathBuf, required: bool) -> Self {
        Self {
            dir,
            required,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// What `token` proves, from the cache or the store.
    async fn check(&self, token: &str) -> Result<Proven, String> {
        let key = crate::store::sha256_hex(token.as_bytes());
        if let Some((answer, at)) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && at.elapsed() < RECHECK
        {
            return answer.clone();
        }
        let dir = self.dir.clone();
        let token = token.to_owned();
        let answer = tokio::task::spawn_blocking(move || {
            let db = Db::open(&dir).map_err(|e| e.to_string())?;
            match identity::store::authenticate(&db, &token) {
                Ok(Ok(i)) => Ok(proven(&i)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the identity store cannot be read: {e}")),
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the token check failed: {e}")));
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() > 1024 {
            cache.retain(|_, (_, at)| at.elapsed() < RECHECK);
        }
        cache.insert(key, (answer.clone(), Instant::now()));
        answer
    }

    /// Lets a request through (binding the run to the identity it proves)
    /// or answers it with 401/403.
    pub async fn authorize(&self, core: &Shared, headers: &HeaderMap) -> Result<(), Response> {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or_default().trim().to_owned());
        let Some(given) = given else {
            if self.required {
                return Err(unauthorized(
                    "this endpoint requires an API token (Authorization: Bearer ...)",
                ));
            }
            return Ok(());
        };
        let Some(token) = given
            .strip_prefix("Bearer ")
            .or_else(|| given.strip_prefix("bearer "))
        else {
            return Err(unauthorized(
                "the Authorization header must be `Bearer TOKEN`",
            ));
        };
        match self.check(token.trim()).await {
            Ok(p) => {
                let bound = lock(core).bind_identity(&p);
                match bound {
                    Bind::Same => Ok(()),
                    Bind::New => {
                        let dir = self.dir.clone();
                        let label = lock(core).label.clone();
                        let name = p.name.clone();
                        // The audit record is written off the async threads
                        // (the store may wait for another process).
                        let _ = tokio::task::spawn_blocking(move || {
                            audit_authentication(&dir, &name, &label, "http");
                        })
                        .await;
                        Ok(())
                    }
                    Bind::Other(serving) => Err(refuse(
                        StatusCode::FORBIDDEN,
                        code::INVALID_REQUEST,
                        &format!(
                            "mcpwarden: this endpoint serves agent {serving:?}; {:?} needs a session of its own",
                            p.name
                        ),
                    )),
                }
            }
            Err(why) => {
                tracing::warn!("refused an HTTP request's API token: {why}");
                lock(core)
                    .write_record(json!({"kind": "identity", "action": "refused", "why": why}));
                Err(unauthorized("the API token was refused"))
            }
        }
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = refuse(
        StatusCode::UNAUTHORIZED,
        code::INVALID_REQUEST,
        &format!("mcpwarden: {message}"),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"mcpwarden\""),
    );
    r
}

/// Appends `identity.authenticate` to the audit log (logged on failure:
/// the client proved who it is, the session goes on).
pub(super) fn audit_authentication(dir: &std::path::Path, name: &str, session: &str, over: &str) {
    let result = Db::open(dir).and_then(|db| {
        audit::append(
            &db,
            audit::Actor {
                uid: None,
                name: name.to_owned(),
            },
            "identity.authenticate",
            name,
            json!({"session": session, "transport": over}),
        )
    });
    if let Err(e) = result {
        tracing::error!("cannot audit the authentication of {name:?}: {e}");
    }
}

/// What binding an identity to the run did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    /// The run already serves this identity.
    Same,
    /// The run serves it from now on.
    New,
    /// The run serves another identity (its name).
    Other(String),
}

impl Core {
    /// Makes `p` the run's agent, if the run has none yet.
    pub(crate) fn bind_identity(&mut self, p: &Proven) -> Bind {
        if let Some(current) = &self.gate.peer.identity {
            return if current.name == p.name {
                Bind::Same
            } else {
                Bind::Other(current.name.clone())
            };
        }
        self.gate.peer.identity = Some(p.clone());
        self.gate.agent = identify(&self.policy.agents, &self.gate.peer);
        let name = agent_name(&self.gate.agent);
        if let Some(book) = &mut self.trust {
            book.rename_agent(name.clone());
        }
        tracing::info!(identity = %p.name, roles = ?self.gate.agent.roles, "the client proved its identity");
        self.write_record(json!({
            "kind": "identity",
            "action": "authenticated",
            "identity": p.name,
            "agent": name,
            "roles": self.gate.agent.roles,
        }));
        Bind::New
    }
}
