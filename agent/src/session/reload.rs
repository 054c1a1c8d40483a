//! Policy reload without dropping the session: on SIGHUP, and when the
//! policy file changes (checked every second). A policy that does not load
//! is refused and the one in force stays. Tool rules, agents and PSI's
//! action and points apply at once; what lives in the kernel and the
//! sandbox (denied paths, network rules, mode of the kernel's kills,
//! sandbox grants, PSI's threshold) applies to the next session, and the
//! log says so.
use std::{path::PathBuf, time::Duration};

use serde_json::json;

use super::core::{Core, Shared, lock};
use crate::policy::Policy;

/// How often the policy file's modification time is looked at.
const POLL: Duration = Duration::from_secs(1);

fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches `path` until the task is aborted.
pub(super) async fn watch(core: Shared, path: PathBuf, monitor: bool) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "cannot listen for SIGHUP ({e}); the policy reloads on file change only"
            );
            None
        }
    };
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hangup = async {
            match &mut hup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hangup => tracing::info!("SIGHUP: reloading the policy {}", path.display()),
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                tracing::info!("the policy {} changed: reloading it", path.display());
            }
        }
        reload(&core, &path, monitor);
    }
}

fn reload(core: &Shared, path: &std::path::Path, monitor: bool) {
    apply(
        core,
        Policy::load(path),
        &path.display().to_string(),
        monitor,
    );
}

/// Puts `loaded` in force, or keeps the policy in force when it did not
/// load; records and returns what happened (`applied` with the keys that
/// wait for the next session, or `rejected` with the error).
pub(super) fn apply(
    core: &Shared,
    loaded: Result<Policy, crate::policy::PolicyError>,
    source: &str,
    monitor: bool,
) -> serde_json::Value {
    let mut core = lock(core);
    match loaded {
        Err(e) => {
            tracing::error!("policy reload refused, the policy in force stays: {e}");
            let record = json!({
                "kind": "policy_reload",
                "action": "rejected",
                "policy": source,
                "error": e.to_string(),
            });
            core.write_record(record.clone());
            record
        }
        Ok(mut new) => {
            if monitor {
                new.force_monitor();
            }
            let later = core.reload_policy(new);
            if later.is_empty() {
                tracing::info!("policy reloaded");
            } else {
                tracing::warn!(
                    "policy reloaded; these changes apply to the next session: {}",
                    later.join(", ")
                );
            }
            let record = json!({
                "kind": "policy_reload",
                "action": "applied",
                "policy": source,
                "next_session": later,
            });
            core.write_record(record.clone());
            record
        }
    }
}

impl Core {
    /// Puts `new` in force for what can change within a session (tool
    /// rules, agents, PSI's action and points); returns the keys whose
    /// changes wait for the next session (they live in the kernel or the
    /// sandbox, or are baked into the loaded model).
    pub fn reload_policy(&mut self, new: Policy) -> Vec<&'static str> {
        let old = &self.policy;
        let mut later = Vec::new();
        if old.mode != new.mode {
            later.push("mode (of the kernel's kills)");
        }
        if old.deny != new.deny {
            later.push("files.deny");
        }
        if old.network != new.network || old.network_bind != new.network_bind {
            later.push("network");
        }
        if old.sandbox != new.sandbox {
            later.push("sandbox");
        }
        if old.events_per_second != new.events_per_second {
            later.push("kernel.events_per_second");
        }
        if old.kernel_kill != new.kernel_kill {
            later.push("kernel.kill");
        }
        if old.call_results != new.call_results {
            later.push("kernel.call_results");
        }
        if old.inspect.threshold != new.inspect.threshold {
            later.push("inspect.threshold");
        }
        if self.psi.is_none()
            && new.inspect.enabled
            && new.inspect.action != crate::policy::inspect::Action::Allow
        {
            later.push("inspect (PSI was off when the session started)");
        }
        if let Some(psi) = &mut self.psi {
            psi.policy = new.inspect.clone();
        }
        self.gate.reload(&new);
        // The kernel's rule indexes keep meaning the old deny list.
        let kept = Policy {
            mode: old.mode,
            deny: old.deny.clone(),
            sandbox: old.sandbox.clone(),
            network: old.network.clone(),
            network_entries: old.network_entries.clone(),
            network_bind: old.network_bind.clone(),
            events_per_second: old.events_per_second,
            kernel_kill: old.kernel_kill,
            call_results: old.call_results,
            ..new
        };
        self.policy = kept;
        later
    }
}
