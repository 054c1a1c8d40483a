//! The kernel's side of the core: drained events recorded (events file,
//! the daemon's feed), judged against the policy, and enforced (a kill
//! fails what is in flight, naming the rule).
use std::io::Write as _;

use serde_json::json;

use super::{Core, Reply, ServerState};
use crate::{
    kernel::KernelEvent,
    metrics::{self, Counter},
    proxy::message::code,
    session::record,
    trust::{Kind, Signal},
};

impl Core {
    /// Reads every waiting kernel event, records it, and enforces. Returns
    /// the error responses to send for requests failed by a kill.
    pub fn drain_events(&mut self) -> Vec<Reply> {
        let mut batch = Vec::new();
        if let Some(confined) = &mut self.confined {
            confined.tracer.drain(|e| batch.push(e));
        }
        crate::kernel::failures::attach_failures(&mut batch);
        let mut out = std::mem::take(&mut self.pending);
        for event in batch {
            out.extend(self.on_event(&event));
        }
        if let Some(w) = &mut self.events
            && let Err(e) = w.flush()
        {
            tracing::error!("cannot write events file: {e}");
        }
        out
    }

    fn on_event(&mut self, event: &KernelEvent) -> Vec<Reply> {
        self.parents.observe(event);
        let verdict = record::judge(event, &self.policy);
        self.counts.events += 1;
        metrics::add(Counter::KernelEvents, 1);
        // The JSON line is built only when there is a file or a feed to
        // write it to: under a flood of events this is most of the work.
        if self.events.is_some() || self.feed.is_some() {
            let requests = self.tracker.at(event.ts_ns);
            let line = record::event_line(
                event,
                &verdict,
                &requests,
                &self.policy,
                &self.label,
                self.realtime_offset_ns,
                self.parents.of(event),
            );
            if let Some(w) = &mut self.events
                && let Err(e) = writeln!(w, "{line}")
            {
                tracing::error!("cannot write events file: {e}");
            }
            if let Some(feed) = &self.feed {
                feed.publish(&line);
            }
        }
        match verdict.action {
            record::Action::Alert => {
                self.counts.alerts += 1;
                metrics::add(Counter::Alerts, 1);
                tracing::warn!(
                    "policy alert (monitor mode): {}",
                    verdict.describe(event, &self.policy)
                );
                Vec::new()
            }
            record::Action::Killed => {
                self.counts.killed += 1;
                metrics::add(Counter::Kills, 1);
                self.trust_note(Kind::Server, Signal::KernelKill);
                self.kill(event, &verdict)
            }
            record::Action::Denied => {
                self.counts.denied += 1;
                metrics::add(Counter::Denied, 1);
                self.trust_note(Kind::Server, Signal::KernelDenial);
                tracing::warn!("{}", verdict.describe(event, &self.policy));
                Vec::new()
            }
            record::Action::Allow => Vec::new(),
        }
    }

    /// Kills the server's tree (the kernel already sent `SIGKILL` to the offending
    /// task when it caught it) and fails every request in flight.
    fn kill(&mut self, event: &KernelEvent, verdict: &record::Verdict) -> Vec<Reply> {
        self.kill_tree();
        if !matches!(self.state, ServerState::Running) {
            return Vec::new();
        }
        let what = verdict.describe(event, &self.policy);
        tracing::error!("killed the tool server: {what}");
        let data = json!({
            "rule": verdict.rule_label(event, &self.policy),
            "kind": event.kind.as_str(),
            "path": verdict.path,
            "pid": event.pid,
            "action": "killed",
            "policy": self.policy.source,
        });
        let blocked = format!(
            "mcpwarden blocked this call: {what}; the tool server's process tree was killed"
        );
        let later = format!(
            "mcpwarden: the tool server is no longer running: it was killed because {what}; start a new session"
        );
        self.end_server((code::BLOCKED, &blocked), later, data)
    }
}
