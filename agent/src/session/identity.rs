//! Who the client is beyond its peer credentials: the registered identity
//! its API token or its client certificate proves ([`crate::identity`]).
//!
//! On stdio the MCP client's configuration hands `mcpwarden run` the token
//! in `MCPWARDEN_TOKEN`: checked once, before anything starts (a wrong
//! token is an error, never a silent downgrade to anonymous). Over HTTP
//! every request may carry `Authorization: Bearer TOKEN`; the first valid
//! one binds the run to its identity, and a request proving another
//! identity is refused (one run serves one agent). Over HTTPS (`--tls`) a
//! client certificate of the host's CA proves its identity the same way,
//! checked against the store at each request (revocation included). With
//! `[identity] require = "identity"`, a client that proves none is refused
//! (401 over HTTP; the session does not start on stdio).
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::ConnectInfo,
    http::{Extensions, HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use serde_json::json;

use super::{
    RunError,
    core::{Core, Shared, lock},
    http_front::refuse,
    tls::ClientConn,
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

/// The identity `token` (the client's `MCPWARDEN_TOKEN`) proves, for a
/// stdio session. `None` when no token is given and the policy does not
/// require one.
pub(super) fn from_token(
    policy: &Policy,
    dir: &std::path::Path,
    token: Option<String>,
) -> Result<Option<Proven>, RunError> {
    let Some(token) = token else {
        if policy.require == Require::Identity {
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

    /// What a proof proves, from the cache or the store: `key` names it in
    /// the cache, `ask` asks the store.
    async fn check(
        &self,
        key: String,
        ask: impl FnOnce(&Db) -> Result<Result<Identity, identity::AuthError>, crate::store::StoreError>
        + Send
        + 'static,
    ) -> Result<Proven, String> {
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
        let answer = tokio::task::spawn_blocking(move || {
            let db = Db::open(&dir).map_err(|e| e.to_string())?;
            match ask(&db) {
                Ok(Ok(i)) => Ok(proven(&i)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the identity store cannot be read: {e}")),
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the identity check failed: {e}")));
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

    /// Lets a request through (binding the run to the identity its client
    /// certificate or API token proves) or answers it with 401/403.
    pub async fn authorize(
        &self,
        core: &Shared,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<(), Response> {
        let cert = extensions
            .get::<ConnectInfo<ClientConn>>()
            .and_then(|c| c.0.cert.clone());
        let mut proven = false;
        if let Some(fingerprint) = cert {
            let fp = fingerprint.clone();
            match self
                .check(format!("cert:{fingerprint}"), move |db| {
                    identity::ca::authenticate(db, &fp)
                })
                .await
            {
                Ok(p) => {
                    self.bind(core, &p, "https-certificate").await?;
                    proven = true;
                }
                Err(why) => return Err(refused(core, "certificate", &why)),
            }
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or_default().trim().to_owned());
        let Some(given) = given else {
            if self.required && !proven {
                return Err(unauthorized(
                    "this endpoint requires a registered identity: an API token \
                     (Authorization: Bearer ...) or a client certificate of the host's CA",
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
        let token = token.trim().to_owned();
        let key = crate::store::sha256_hex(token.as_bytes());
        match self
            .check(key, move |db| identity::store::authenticate(db, &token))
            .await
        {
            Ok(p) => self.bind(core, &p, "http-token").await,
            Err(why) => Err(refused(core, "token", &why)),
        }
    }

    /// Binds the run to `p`: the first identity proven binds it, the same
    /// one passes, another one gets 403.
    async fn bind(&self, core: &Shared, p: &Proven, over: &'static str) -> Result<(), Response> {
        let bound = lock(core).bind_identity(p);
        match bound {
            Bind::Same => Ok(()),
            Bind::New => {
                let dir = self.dir.clone();
                let label = lock(core).label.clone();
                let name = p.name.clone();
                // The audit record is written off the async threads (the
                // store may wait for another process).
                let _ = tokio::task::spawn_blocking(move || {
                    audit_authentication(&dir, &name, &label, over);
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
}

/// A refused proof: logged and recorded with its reason; the client only
/// learns that it was refused.
fn refused(core: &Shared, proof: &str, why: &str) -> Response {
    tracing::warn!("refused an HTTP client's {proof}: {why}");
    lock(core)
        .write_record(json!({"kind": "identity", "action": "refused", "proof": proof, "why": why}));
    unauthorized(&format!("the {proof} was refused"))
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
