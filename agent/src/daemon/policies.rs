//! The policies of the daemon's running sessions: `GET /api/v1/policies`
//! shows each one's text (read scope); `PUT /api/v1/sessions/{session}/policy`
//! with `{"text": "..."}` puts a new one in force (admin scope), as a reload
//! does: what lives in the kernel or the sandbox waits for the next
//! session, and the answer says which keys. A policy that does not parse is
//! refused and the one in force stays. Every change is audited.
use std::collections::BTreeMap;

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
};
use serde_json::{Value, json};

use crate::{
    identity::Scope,
    policy::Policy,
    session::PolicyHandle,
    store::{Db, audit},
};

/// A running session's policy.
#[derive(Debug)]
pub(crate) struct LivePolicy {
    pub handle: PolicyHandle,
    pub text: String,
    pub source: String,
    pub uid: u32,
    pub gid: u32,
}

/// The running sessions' policies, by session.
pub(crate) type Policies = std::sync::Mutex<BTreeMap<String, LivePolicy>>;

fn answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Answers a request for one of this module's routes; `None` for others.
pub(crate) fn route(
    policies: &Policies,
    db: &Db,
    (scope, actor): (Scope, &audit::Actor),
    (method, path): (&str, &str),
    body: &[u8],
) -> Option<Response> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["", "api", "v1", "policies"]) => {
            let live = policies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let list: Vec<Value> = live
                .iter()
                .map(|(session, p)| {
                    json!({"session": session, "uid": p.uid, "policy": p.source, "text": p.text})
                })
                .collect();
            Some(answer(StatusCode::OK, &Value::Array(list)))
        }
        ("PUT", ["", "api", "v1", "sessions", session, "policy"]) => {
            if scope < Scope::Admin {
                return Some(answer(
                    StatusCode::FORBIDDEN,
                    &json!({"error": "this route needs the admin scope"}),
                ));
            }
            Some(put(policies, db, actor, session, body))
        }
        _ => None,
    }
}

fn put(policies: &Policies, db: &Db, actor: &audit::Actor, session: &str, body: &[u8]) -> Response {
    let Some(text) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_owned))
    else {
        return answer(
            StatusCode::BAD_REQUEST,
            &json!({"error": "the body is {\"text\": POLICY}"}),
        );
    };
    let mut live = policies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(current) = live.get_mut(session) else {
        return answer(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no running session {session:?}")}),
        );
    };
    let source = format!("{} (through the API)", current.source);
    let invoker = mcpwarden_sandbox::Invoker {
        uid: current.uid,
        gid: current.gid,
    };
    let loaded = Policy::parse_for(&text, &source, invoker);
    let ok = loaded.is_ok();
    let record = current.handle.put(loaded, &source);
    if ok {
        current.text = text;
    }
    drop(live);
    if let Err(e) = audit::append(db, actor.clone(), "policy.reload", session, record.clone()) {
        tracing::error!("cannot audit a policy change of {session}: {e}");
    }
    answer(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        },
        &record,
    )
}
