//! Trust in a session: the agent's and the server's scores, loaded from the
//! store when the session starts, moved by what happens in it (policy
//! decisions, PSI findings, pin violations, kernel kills, clean calls),
//! read by policy conditions (`trust.agent`, `trust.server`), and written
//! back when the session ends.
//!
//! Other sessions may move the same subjects meanwhile, so the session
//! keeps its own events and replays them onto what the store holds at the
//! end, rather than overwriting it with its copy.
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::core::Core;
use crate::{
    policy::expr::{Agent, TrustScores},
    store::{Db, StoreError},
    trust::{self, Decay, Kind, Signal, Trust, now_ms},
};

/// A run of identical events (clean calls come in long runs).
#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
    signal: Signal,
    count: u32,
    at: u64,
}

#[derive(Debug)]
pub(crate) struct TrustBook {
    dir: PathBuf,
    pub agent_name: String,
    pub server_name: String,
    agent: Trust,
    server: Trust,
    log: Vec<Entry>,
    decay: Decay,
}

/// The name trust keeps an agent under: its policy or identity name, else
/// its uid.
#[must_use]
pub(crate) fn agent_name(agent: &Agent) -> String {
    if !agent.name.is_empty() {
        agent.name.clone()
    } else if agent.uid >= 0 {
        format!("uid-{}", agent.uid)
    } else {
        "anonymous".to_owned()
    }
}

/// The trust of each (kind, name), read in one opening of the store;
/// what cannot be read counts as new (0.5).
fn load<const N: usize>(dir: &Path, subjects: [(Kind, &str); N]) -> [Trust; N] {
    let db = Db::open(dir);
    subjects.map(|(kind, name)| {
        db.as_ref()
            .map_err(ToString::to_string)
            .and_then(|db| trust::store::load(db, kind, name).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot read the trust of {}: {e}; it counts as new (0.5)",
                    kind.subject(name)
                );
                Trust::new(kind)
            })
    })
}

impl TrustBook {
    /// Loads the scores of `agent` and `server` from the store in `dir`.
    pub fn open(dir: PathBuf, agent: String, server: String) -> Self {
        let [agent_trust, server_trust] = load(
            &dir,
            [
                (Kind::Agent, agent.as_str()),
                (Kind::Server, server.as_str()),
            ],
        );
        Self {
            agent: agent_trust,
            server: server_trust,
            dir,
            agent_name: agent,
            server_name: server,
            log: Vec::new(),
            decay: Decay::default(),
        }
    }

    /// The agent turned out to be someone else (it proved an identity):
    /// its events so far move the new name's trust.
    pub fn rename_agent(&mut self, name: String) {
        if name == self.agent_name {
            return;
        }
        let [mut agent] = load(&self.dir, [(Kind::Agent, name.as_str())]);
        for e in self.log.iter().filter(|e| e.kind == Kind::Agent) {
            for _ in 0..e.count {
                agent.update(e.signal, e.at, self.decay);
            }
        }
        self.agent = agent;
        self.agent_name = name;
    }

    /// The scores policies read now.
    #[must_use]
    pub fn scores(&self) -> TrustScores {
        let now = now_ms();
        TrustScores {
            agent: self.agent.overall(now, self.decay),
            server: self.server.overall(now, self.decay),
        }
    }

    /// Takes one event about the agent or the server into account.
    pub fn note(&mut self, kind: Kind, signal: Signal) {
        let now = now_ms();
        match kind {
            Kind::Agent => self.agent.update(signal, now, self.decay),
            Kind::Server => self.server.update(signal, now, self.decay),
        }
        // Merge with the last entry of this subject when it is the same
        // event: a session of many clean calls keeps two entries.
        let last = self.log.iter_mut().rev().take(2).find(|e| e.kind == kind);
        match last {
            Some(e) if e.signal == signal && e.count < u32::MAX => {
                e.count += 1;
                e.at = now;
            }
            _ => self.log.push(Entry {
                kind,
                signal,
                count: 1,
                at: now,
            }),
        }
    }

    /// Replays this session's events onto the store's records and writes
    /// them. Returns the record for the events file.
    pub fn persist(&self) -> Result<Value, StoreError> {
        let db = Db::open(&self.dir)?;
        let mut agent = trust::store::load(&db, Kind::Agent, &self.agent_name)?;
        let mut server = trust::store::load(&db, Kind::Server, &self.server_name)?;
        for e in &self.log {
            let t = match e.kind {
                Kind::Agent => &mut agent,
                Kind::Server => &mut server,
            };
            for _ in 0..e.count {
                t.update(e.signal, e.at, self.decay);
            }
        }
        trust::store::save(&db, &self.agent_name, &agent)?;
        trust::store::save(&db, &self.server_name, &server)?;
        let now = now_ms();
        Ok(json!({
            "kind": "trust",
            "agent": { "name": self.agent_name, "trust": agent.explain(now, self.decay) },
            "server": { "name": self.server_name, "trust": server.explain(now, self.decay) },
        }))
    }
}

impl Core {
    /// Moves trust, if this session keeps it.
    pub(super) fn trust_note(&mut self, kind: Kind, signal: Signal) {
        if let Some(book) = &mut self.trust {
            book.note(kind, signal);
        }
    }

    /// The scores policy conditions read (0.5 without a book).
    pub(super) fn trust_scores(&self) -> TrustScores {
        self.trust
            .as_ref()
            .map_or_else(TrustScores::default, TrustBook::scores)
    }

    /// Writes the session's trust to the store and its record to the
    /// events file; a failure is logged (the session's work is done).
    pub(super) fn persist_trust(&mut self) {
        let Some(book) = &self.trust else {
            return;
        };
        match book.persist() {
            Ok(record) => {
                tracing::info!(
                    agent = %book.agent_name,
                    agent_trust = %record["agent"]["trust"]["overall"],
                    server = %book.server_name,
                    server_trust = %record["server"]["trust"]["overall"],
                    "trust updated"
                );
                self.write_record(record);
            }
            Err(e) => tracing::error!("cannot save this session's trust: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_replays_its_events_onto_what_others_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let mut a = TrustBook::open(path.clone(), "bot".into(), "files".into());
        let mut b = TrustBook::open(path.clone(), "bot".into(), "files".into());
        for _ in 0..30 {
            a.note(Kind::Agent, Signal::CleanCall);
            a.note(Kind::Server, Signal::CleanCall);
        }
        assert_eq!(a.log.len(), 2, "runs of clean calls merge");
        b.note(Kind::Server, Signal::KernelKill);
        a.persist().expect("a");
        b.persist().expect("b");
        let db = Db::open(&path).expect("open");
        let server = trust::store::load(&db, Kind::Server, "files").expect("load");
        assert_eq!(server.counts[Signal::CleanCall as usize], 30);
        assert_eq!(server.counts[Signal::KernelKill as usize], 1);
        let agent = trust::store::load(&db, Kind::Agent, "bot").expect("load");
        assert_eq!(agent.counts[Signal::CleanCall as usize], 30);
    }

    #[test]
    fn a_proven_identity_takes_the_events_so_far() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut book = TrustBook::open(dir.path().to_path_buf(), "uid-0".into(), "s".into());
        book.note(Kind::Agent, Signal::PolicyBlock);
        book.rename_agent("ci-bot".into());
        assert_eq!(book.agent_name, "ci-bot");
        assert!(book.scores().agent < 0.5);
    }
}
