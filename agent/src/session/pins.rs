//! The tool registry in the session: each `tools/list` answer is checked
//! against the pins (see [`crate::registry`]); quarantined tools are left
//! out of the list the client sees, and their calls are refused.
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{RunError, RunOptions};
use crate::{
    policy::{Mode, Policy, tools::PinAction},
    proxy::message::{RequestId, code, error_response},
    registry::{
        Change,
        store::{Settings, Store, executable_files, state_dir},
    },
};

#[derive(Debug)]
pub(crate) struct Registry {
    pub dir: PathBuf,
    pub server: String,
    pub settings: Settings,
}

/// What a `tools/list` answer becomes.
#[derive(Debug, Default)]
pub(crate) struct Listed {
    /// Records for the events file.
    pub records: Vec<Value>,
    /// Tools quarantined now.
    pub quarantined: Vec<String>,
    /// Findings that count against the server: changed definitions and
    /// shadowing names (a new tool is not a violation).
    pub violations: usize,
    /// The answer to send instead (tools left out, or an error).
    pub replace: Option<String>,
}

impl Registry {
    /// Checks the answer `body` to `tools/list` request `id`.
    pub fn on_list(&self, body: &[u8], id: &RequestId) -> Listed {
        let Ok(mut msg) = serde_json::from_slice::<Value>(body) else {
            return Listed::default();
        };
        let Some(tools) = msg.pointer("/result/tools").and_then(Value::as_array) else {
            return Listed::default();
        };
        let checked =
            Store::open(&self.dir).and_then(|s| s.check_list(&self.server, tools, self.settings));
        let checked = match checked {
            Ok(c) => c,
            Err(e) => {
                // Fail closed: tools that cannot be checked are not shown.
                tracing::error!(
                    "cannot check {}'s tools against their pins: {e}",
                    self.server
                );
                let message =
                    format!("mcpwarden cannot check this server's tools against their pins: {e}");
                return Listed {
                    records: vec![
                        json!({"kind": "pin", "action": "error", "server": self.server, "error": e.to_string()}),
                    ],
                    replace: Some(error_response(Some(id), code::BLOCKED, &message, None)),
                    ..Listed::default()
                };
            }
        };
        let mut out = Listed {
            quarantined: checked.quarantined.clone(),
            violations: checked
                .findings
                .iter()
                .filter(|f| f.change != Change::New)
                .count(),
            ..Listed::default()
        };
        for f in &checked.findings {
            let quarantined = checked.quarantined.contains(&f.tool);
            let what = match f.change {
                Change::New => "is new to this server".to_owned(),
                Change::Changed => format!("changed since approval ({})", f.fields.join(", ")),
                Change::Shadows => format!(
                    "has the name of a tool of server {:?}",
                    f.other.as_deref().unwrap_or_default()
                ),
            };
            if quarantined {
                tracing::error!(
                    "tool {:?} of {} {what}: quarantined until `mcpwarden tools approve --server {} {}`",
                    f.tool,
                    self.server,
                    self.server,
                    f.tool
                );
            } else {
                tracing::warn!("tool {:?} of {} {what}", f.tool, self.server);
            }
            out.records.push(json!({
                "kind": "pin",
                "action": if quarantined { "quarantined" } else { "alert" },
                "change": f.change,
                "tool": f.tool,
                "server": self.server,
                "fields": f.fields,
                "other": f.other,
                "hash": f.hash,
                "request": id.value,
            }));
        }
        if !checked.quarantined.is_empty()
            && let Some(list) = msg
                .pointer_mut("/result/tools")
                .and_then(Value::as_array_mut)
        {
            list.retain(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(|n| !checked.quarantined.iter().any(|q| q == n))
            });
            out.replace = Some(msg.to_string());
        }
        out
    }
}

/// The tool registry for this session, if the policy pins; checks the
/// server's executable against its pin first (a changed one refuses to
/// start under `pin = "quarantine"`).
pub(super) fn registry_for(
    opts: &RunOptions,
    policy: &Policy,
    server: &str,
) -> Result<Option<Registry>, RunError> {
    if policy.metadata.is_none() || policy.tools.pin == PinAction::Off {
        return Ok(None);
    }
    let dir = state_dir(opts.state.as_deref());
    if !opts.command.is_empty() {
        let files = executable_files(&opts.command);
        let store = Store::open(&dir).map_err(|e| RunError::Registry(e.to_string()))?;
        let changed = store
            .check_exe(server, &files)
            .map_err(|e| RunError::Registry(e.to_string()))?;
        if !changed.is_empty() {
            let files = changed
                .iter()
                .map(|(path, old, new)| format!("{path} (sha256 {} -> {})", short(old), short(new)))
                .collect::<Vec<_>>()
                .join(", ");
            let what = format!(
                "the executable of server {server:?} changed since it was approved: {files}"
            );
            if policy.tools.pin == PinAction::Quarantine && policy.mode == Mode::Enforce {
                return Err(RunError::Registry(format!(
                    "{what}; if that is expected, run `mcpwarden tools approve --server {server}`"
                )));
            }
            tracing::warn!("{what}");
        }
    }
    Ok(Some(Registry {
        dir,
        server: server.to_owned(),
        settings: Settings {
            pin: policy.tools.pin,
            shadowing: policy.tools.shadowing,
            first_use: policy.tools.first_use,
        },
    }))
}

fn short(hash: &str) -> &str {
    if hash.is_empty() {
        "(none)"
    } else {
        &hash[..12.min(hash.len())]
    }
}
