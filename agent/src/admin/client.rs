//! Where the command line's ops go: to the daemon when one is running (it
//! holds the store; its Unix socket proves who is asking), else straight
//! to the store. `--state DIR` always works on that store directly.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Op, OpError, execute};
use crate::store::{Db, audit::Actor, state_dir};

/// The daemon's socket unless `MCPWARDEN_SOCKET` names another.
pub const DEFAULT_SOCKET: &str = "/run/mcpwarden/mcpwarden.sock";

/// The variable holding an API token (`agent register --api`) for users
/// other than root.
pub const API_TOKEN_ENV: &str = "MCPWARDEN_API_TOKEN";

/// The daemon's socket: `MCPWARDEN_SOCKET`, else [`DEFAULT_SOCKET`].
#[must_use]
pub fn socket_path() -> PathBuf {
    std::env::var_os("MCPWARDEN_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// Carries out `op`: through the daemon when one answers on its socket and
/// no `--state` was given, else on the store in `state_dir(state)`.
pub fn call(op: Op, state: Option<&Path>) -> Result<Value, OpError> {
    if state.is_none()
        && let Some(answer) = daemon_call(&socket_path(), &op)
    {
        return answer;
    }
    let dir = state_dir(state);
    let db = Db::open(&dir)?;
    execute(&db, &dir, &Actor::current(), op)
}

/// [`call`] for a command: the error is its message.
pub fn ask(op: Op, state: Option<&Path>) -> Result<Value, String> {
    call(op, state).map_err(|e| e.message)
}

/// The daemon's answer, or `None` when no daemon listens at `socket`.
#[must_use]
pub fn daemon_call(socket: &Path, op: &Op) -> Option<Result<Value, OpError>> {
    if !socket.exists() {
        return None;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Some(Err(OpError::new(500, format!("no runtime: {e}")))),
    };
    runtime.block_on(request(socket, op))
}

/// [`daemon_call`] from async code.
pub async fn request(socket: &Path, op: &Op) -> Option<Result<Value, OpError>> {
    let client = match reqwest::Client::builder().unix_socket(socket).build() {
        Ok(c) => c,
        Err(e) => return Some(Err(OpError::new(500, format!("HTTP client: {e}")))),
    };
    let route = op.route();
    let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap_or_default();
    // The host is never resolved: the socket is the connection.
    let mut req = client.request(method, format!("http://mcpwarden{}", route.target));
    // Root needs none: the socket proves its uid. (Not MCPWARDEN_TOKEN:
    // that is the agent's own token, which `agent verify` checks.)
    if let Ok(token) = std::env::var(API_TOKEN_ENV) {
        req = req.bearer_auth(token);
    }
    if let Some(body) = route.body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = match req.send().await {
        Ok(r) => r,
        // A socket left behind by a daemon that is gone: use the store.
        Err(e) if e.is_connect() => {
            tracing::debug!("no daemon at {}: {e}", socket.display());
            return None;
        }
        Err(e) => {
            return Some(Err(OpError::new(
                502,
                format!("the daemon at {} did not answer: {e}", socket.display()),
            )));
        }
    };
    let status = response.status().as_u16();
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => return Some(Err(OpError::new(502, format!("the daemon's answer: {e}")))),
    };
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some(if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(OpError::new(
            status,
            value["error"].as_str().map_or_else(
                || format!("the daemon answered {status}: {value}"),
                |m| format!("the daemon refused: {m}"),
            ),
        ))
    })
}
