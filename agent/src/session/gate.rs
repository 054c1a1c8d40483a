//! The policy gate: every `tools/call` is decided by the policy's tool
//! rules (see [`crate::policy::tools`]) before it reaches the server.
//! Allowed calls pass; alerts are recorded and pass; blocked calls get a
//! JSON-RPC error naming the rule; a kill also stops the server's tree.
use serde_json::{Value, json};

use super::core::Core;
use crate::{
    metrics::{self, Counter},
    policy::{
        Policy,
        agents::{Peer, identify},
        expr::{Agent, Context, SessionStats, TrustScores},
        tools::{Action, Buckets},
    },
    proxy::message::{Message, RequestId, code, error_response},
    trust::{Kind, Signal},
};

/// Who is calling and what this session has used up.
#[derive(Debug)]
pub(crate) struct Gate {
    pub peer: Peer,
    pub agent: Agent,
    pub server: String,
    buckets: Buckets,
}

/// What the gate decided about one call.
#[derive(Debug)]
pub(crate) enum Verdict {
    Pass,
    /// Forward it, and record this.
    Alert(Value),
    /// Answer `reply` instead; `kill`: also stop the server.
    Stop {
        record: Value,
        reply: String,
        kill: bool,
    },
}

impl Gate {
    pub fn new(policy: &Policy, peer: Peer, server: String) -> Self {
        Self {
            agent: identify(&policy.agents, &peer),
            peer,
            server,
            buckets: Buckets::default(),
        }
    }

    /// The policy changed (reload): the agent may have other roles now,
    /// and rule indexes may mean other rules.
    pub fn reload(&mut self, policy: &Policy) {
        self.agent = identify(&policy.agents, &self.peer);
        self.buckets = Buckets::default();
    }

    /// Decides on call `id` to `tool` with arguments `args`.
    /// `can_kill`: mcpwarden started the server (else a kill is a block).
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &mut self,
        policy: &Policy,
        args: &Value,
        id: &RequestId,
        tool: &str,
        session: SessionStats,
        trust: TrustScores,
        now: u64,
        can_kill: bool,
    ) -> Verdict {
        let unix_time = crate::store::unix_now() as i64;
        let ctx = Context {
            tool,
            args,
            agent: &self.agent,
            server: &self.server,
            session,
            trust,
            unix_time,
        };
        let decision = policy.tools.decide(&ctx, &mut self.buckets, now);
        if decision.action == Action::Allow {
            return Verdict::Pass;
        }
        let kill = decision.action == Action::Kill && can_kill;
        let action = match decision.action {
            Action::Allow | Action::Alert => "alert",
            Action::Kill if kill => "killed",
            Action::Block | Action::Kill => "blocked",
        };
        let why = policy.tools.explain(&decision);
        let record = json!({
            "kind": "policy",
            "action": action,
            "wanted": decision.wanted.to_string(),
            "rule": policy.tools.rule_key(&decision),
            "why": why,
            "tool": tool,
            "request": id.value,
            "server": self.server,
            "agent": {
                "name": self.agent.name,
                "uid": self.agent.uid,
                "exe": self.agent.exe,
                "roles": self.agent.roles,
            },
            "policy": policy.source,
        });
        if decision.action == Action::Alert {
            tracing::warn!("policy alert on tools/call {tool}: {why}");
            return Verdict::Alert(record);
        }
        tracing::warn!("policy {action} tools/call {tool}: {why}");
        let message = if kill {
            format!(
                "mcpwarden blocked this call to {tool}: {why}; the tool server's process tree was killed"
            )
        } else {
            format!("mcpwarden blocked this call to {tool}: {why}")
        };
        let reply = error_response(Some(id), code::BLOCKED, &message, Some(record.clone()));
        Verdict::Stop {
            record,
            reply,
            kill,
        }
    }
}

impl Core {
    /// The answer to a call of a quarantined tool (recorded).
    fn refuse_quarantined(&mut self, tool: &str, id: &RequestId, batch: bool) -> String {
        self.counts.policy_blocked += 1;
        metrics::add(Counter::PolicyBlocked, 1);
        let server = self.gate.server.clone();
        let message = format!(
            "mcpwarden blocked this call to {tool}: the tool is quarantined (its definition is new or changed since approval); \
             an administrator may approve it with `mcpwarden tools approve --server {server} {tool}`"
        );
        let record = json!({"kind": "pin", "action": "blocked", "tool": tool, "server": server, "request": id.value});
        self.write_record(record.clone());
        if batch {
            error_response(None, code::BLOCKED, &message, None)
        } else {
            error_response(Some(id), code::BLOCKED, &message, Some(record))
        }
    }

    /// Puts every `tools/call` in `msg` (one request or a batch) before
    /// the policy's tool rules. Err: the line that answers `msg` instead
    /// (a batch is refused whole when one of its calls is stopped).
    pub(super) fn gate_calls(
        &mut self,
        msg: &Message,
        body: &[u8],
        now: u64,
    ) -> Result<(), String> {
        let calls: Vec<(usize, &RequestId, &str)> = match msg {
            Message::Request { id, method, tool } if method == "tools/call" => {
                vec![(0, id, tool.as_deref().unwrap_or(""))]
            }
            Message::Batch(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, m)| match m {
                    Message::Request { id, method, tool } if method == "tools/call" => {
                        Some((i, id, tool.as_deref().unwrap_or("")))
                    }
                    _ => None,
                })
                .collect(),
            _ => return Ok(()),
        };
        if calls.is_empty() {
            return Ok(());
        }
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let batch = matches!(msg, Message::Batch(_));
        for (i, id, tool) in calls {
            let item = if batch { &parsed[i] } else { &parsed };
            let args = item.pointer("/params/arguments").unwrap_or(&Value::Null);
            if self.quarantined.contains(tool) {
                return Err(self.refuse_quarantined(tool, id, batch));
            }
            let can_kill = self.confined.is_some();
            let verdict = self.gate.check(
                &self.policy,
                args,
                id,
                tool,
                self.stats(),
                self.trust_scores(),
                now,
                can_kill,
            );
            match verdict {
                Verdict::Pass => {}
                Verdict::Alert(record) => {
                    self.counts.alerts += 1;
                    metrics::add(Counter::Alerts, 1);
                    self.trust_note(Kind::Agent, Signal::PolicyAlert);
                    self.write_record(record);
                }
                Verdict::Stop {
                    record,
                    reply,
                    kill,
                } => {
                    self.counts.policy_blocked += 1;
                    metrics::add(Counter::PolicyBlocked, 1);
                    let signal = if kill {
                        Signal::PolicyKill
                    } else {
                        Signal::PolicyBlock
                    };
                    self.trust_note(Kind::Agent, signal);
                    self.write_record(record.clone());
                    if kill {
                        self.counts.killed += 1;
                        metrics::add(Counter::Kills, 1);
                        self.kill_tree();
                        let later = format!(
                            "mcpwarden: the tool server is no longer running: it was killed by policy rule {} on a call to {tool}; start a new session",
                            record["rule"].as_str().unwrap_or_default()
                        );
                        let replies = self.end_server(
                            (
                                code::SERVER_GONE,
                                "mcpwarden: the tool server was killed by policy",
                            ),
                            later,
                            record,
                        );
                        self.pending.extend(replies);
                    }
                    if batch {
                        let message = format!(
                            "mcpwarden refused this batch: its call {} was blocked",
                            id.key
                        );
                        return Err(error_response(None, code::BLOCKED, &message, None));
                    }
                    return Err(reply);
                }
            }
        }
        Ok(())
    }
}
