//! Trust scores for agents and servers: evidence from what they did,
//! weighed per dimension, forgotten with time, and explainable.
//!
//! Each subject (`agent:NAME`, `server:NAME`) keeps, per [`Dimension`],
//! good and bad evidence that decays exponentially (bad evidence more
//! slowly than good: a kill is remembered for weeks, a clean call for
//! days). A dimension's score is the mean of a Beta(1 + good, 1 + bad)
//! distribution, so a subject with no history scores 0.5 and each event
//! moves it by less the more is known. The overall score weighs the
//! dimensions' evidence ([`Dimension::weight`]): security history counts
//! three times as much as reliability. The last events that moved the
//! score, and a count per kind of event, explain it.
pub mod cli;
pub mod store;

use serde::{Deserialize, Serialize};

/// What trust is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Calls answered; servers that stay up.
    Reliability,
    /// Calls within policy.
    Compliance,
    /// Tool definitions that stay as approved and carry no injection.
    Honesty,
    /// No injections sent or returned, nothing the kernel had to stop.
    Security,
}

impl Dimension {
    pub const ALL: [Self; 4] = [
        Self::Reliability,
        Self::Compliance,
        Self::Honesty,
        Self::Security,
    ];

    /// How much this dimension's evidence counts in the overall score.
    #[must_use]
    pub fn weight(self) -> f64 {
        match self {
            Self::Reliability | Self::Compliance => 1.0,
            Self::Honesty => 2.0,
            Self::Security => 3.0,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Whose trust: an agent (a client) or a tool server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Agent,
    Server,
}

impl Kind {
    #[must_use]
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Server => "server",
        }
    }

    /// The store key of `name`'s trust.
    #[must_use]
    pub fn subject(self, name: &str) -> String {
        format!("{}:{name}", self.prefix())
    }
}

/// What happened, as trust sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// A tools/call answered with a result (agent and server).
    CleanCall,
    /// The server died or stopped answering with calls in flight.
    ServerFailure,
    /// A policy rule alerted on the agent's call.
    PolicyAlert,
    /// A policy rule refused the agent's call.
    PolicyBlock,
    /// A policy rule killed the server over the agent's call.
    PolicyKill,
    /// PSI found an injection in the agent's arguments.
    InjectionSent,
    /// PSI found an injection in the server's results.
    InjectionReturned,
    /// PSI found an injection in the server's tool descriptions.
    PoisonedDescription,
    /// A tool definition changed after approval, or shadows another
    /// server's tool.
    PinViolation,
    /// The kernel stopped the server's process tree (denied path,
    /// program, privilege change).
    KernelKill,
    /// A kernel-level denial the server survived (a refused connect).
    KernelDenial,
    /// The identity came in a burst of registrations from one uid.
    SybilBurst,
}

impl Signal {
    pub const COUNT: usize = 12;

    /// (dimension, good, bad) evidence for a subject of `kind`.
    #[must_use]
    pub fn evidence(self, kind: Kind) -> (Dimension, f64, f64) {
        use Dimension::{Compliance, Honesty, Reliability, Security};
        match self {
            Self::CleanCall if kind == Kind::Agent => (Compliance, 1.0, 0.0),
            Self::CleanCall => (Reliability, 1.0, 0.0),
            Self::ServerFailure => (Reliability, 0.0, 2.0),
            Self::PolicyAlert => (Compliance, 0.0, 0.5),
            Self::PolicyBlock => (Compliance, 0.0, 2.0),
            Self::PolicyKill => (Compliance, 0.0, 5.0),
            Self::InjectionSent | Self::InjectionReturned => (Security, 0.0, 3.0),
            Self::PoisonedDescription => (Honesty, 0.0, 5.0),
            Self::PinViolation => (Honesty, 0.0, 4.0),
            Self::KernelKill => (Security, 0.0, 5.0),
            Self::KernelDenial => (Security, 0.0, 1.0),
            Self::SybilBurst => (Security, 0.0, 2.0),
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::CleanCall => "clean_call",
            Self::ServerFailure => "server_failure",
            Self::PolicyAlert => "policy_alert",
            Self::PolicyBlock => "policy_block",
            Self::PolicyKill => "policy_kill",
            Self::InjectionSent => "injection_sent",
            Self::InjectionReturned => "injection_returned",
            Self::PoisonedDescription => "poisoned_description",
            Self::PinViolation => "pin_violation",
            Self::KernelKill => "kernel_kill",
            Self::KernelDenial => "kernel_denial",
            Self::SybilBurst => "sybil_burst",
        }
    }

    pub const ALL: [Self; Self::COUNT] = [
        Self::CleanCall,
        Self::ServerFailure,
        Self::PolicyAlert,
        Self::PolicyBlock,
        Self::PolicyKill,
        Self::InjectionSent,
        Self::InjectionReturned,
        Self::PoisonedDescription,
        Self::PinViolation,
        Self::KernelKill,
        Self::KernelDenial,
        Self::SybilBurst,
    ];
}

/// How fast evidence is forgotten: half-lives in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decay {
    pub good: f64,
    pub bad: f64,
}

impl Default for Decay {
    /// Good evidence halves in 7 days, bad evidence in 30.
    fn default() -> Self {
        Self {
            good: 7.0 * 86_400.0,
            bad: 30.0 * 86_400.0,
        }
    }
}

/// One dimension's decayed evidence, as of `at` (Unix milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub good: f64,
    pub bad: f64,
    pub at: u64,
}

impl Evidence {
    /// The evidence as it stands at `now` (never moved back in time).
    #[must_use]
    pub fn at(self, now: u64, decay: Decay) -> Self {
        if now <= self.at {
            return self;
        }
        // Millisecond gaps are far below 2^52: exact in f64.
        #[allow(clippy::cast_precision_loss)]
        let secs = (now - self.at) as f64 / 1000.0;
        Self {
            good: self.good * (-secs / decay.good).exp2(),
            bad: self.bad * (-secs / decay.bad).exp2(),
            at: now,
        }
    }

    #[must_use]
    pub fn score(self) -> f64 {
        (self.good + 1.0) / (self.good + self.bad + 2.0)
    }
}

/// An event that moved the overall score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    /// Unix milliseconds.
    pub at: u64,
    pub signal: Signal,
    /// Overall score before and after.
    pub before: f32,
    pub after: f32,
}

/// How many recent movers a subject keeps.
pub const RECENT: usize = 8;

/// The trust of one subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trust {
    pub kind: Kind,
    pub dims: [Evidence; 4],
    /// Events seen, per [`Signal`] (not decayed).
    pub counts: [u64; Signal::COUNT],
    /// The last [`RECENT`] events that were not clean calls (those are
    /// counted), oldest first once full: a ring at `next`.
    pub recent: [Option<Moved>; RECENT],
    pub next: u8,
}

impl Trust {
    /// No history.
    #[must_use]
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            dims: [Evidence::default(); 4],
            counts: [0; Signal::COUNT],
            recent: [None; RECENT],
            next: 0,
        }
    }

    /// Takes one event at `now` (Unix milliseconds) into account.
    /// Allocation-free.
    pub fn update(&mut self, signal: Signal, now: u64, decay: Decay) {
        let (dim, good, bad) = signal.evidence(self.kind);
        let before = if signal == Signal::CleanCall {
            0.0
        } else {
            self.overall(now, decay)
        };
        let e = &mut self.dims[dim.index()];
        *e = e.at(now, decay);
        e.good += good;
        e.bad += bad;
        self.counts[signal.index()] += 1;
        if signal != Signal::CleanCall {
            let after = self.overall(now, decay);
            self.recent[usize::from(self.next) % RECENT] = Some(Moved {
                at: now,
                signal,
                before: before as f32,
                after: after as f32,
            });
            self.next = ((usize::from(self.next) + 1) % RECENT) as u8;
        }
    }

    /// A dimension's score at `now`.
    #[must_use]
    pub fn dimension(&self, dim: Dimension, now: u64, decay: Decay) -> f64 {
        self.dims[dim.index()].at(now, decay).score()
    }

    /// The overall score at `now`, in [0, 1]; 0.5 for no history.
    #[must_use]
    pub fn overall(&self, now: u64, decay: Decay) -> f64 {
        let (mut good, mut bad) = (0.0, 0.0);
        for dim in Dimension::ALL {
            let e = self.dims[dim.index()].at(now, decay);
            good += dim.weight() * e.good;
            bad += dim.weight() * e.bad;
        }
        (good + 1.0) / (good + bad + 2.0)
    }

    /// The recent movers, oldest first.
    #[must_use]
    pub fn movers(&self) -> Vec<Moved> {
        let n = usize::from(self.next);
        self.recent[n..]
            .iter()
            .chain(&self.recent[..n])
            .filter_map(|m| *m)
            .collect()
    }

    /// A plain account of the score at `now`.
    #[must_use]
    pub fn explain(&self, now: u64, decay: Decay) -> serde_json::Value {
        let dims: serde_json::Map<String, serde_json::Value> = Dimension::ALL
            .iter()
            .map(|d| {
                let e = self.dims[d.index()].at(now, decay);
                (
                    serde_json::to_value(d)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    serde_json::json!({
                        "score": round3(e.score()),
                        "good": round3(e.good),
                        "bad": round3(e.bad),
                    }),
                )
            })
            .collect();
        let counts: serde_json::Map<String, serde_json::Value> = Signal::ALL
            .iter()
            .filter(|s| self.counts[s.index()] > 0)
            .map(|s| (s.name().to_owned(), self.counts[s.index()].into()))
            .collect();
        let movers: Vec<serde_json::Value> = self
            .movers()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "at": m.at / 1000,
                    "event": m.signal.name(),
                    "from": round3(f64::from(m.before)),
                    "to": round3(f64::from(m.after)),
                })
            })
            .collect();
        serde_json::json!({
            "kind": self.kind,
            "overall": round3(self.overall(now, decay)),
            "dimensions": dims,
            "events": counts,
            "recent": movers,
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn no_history_is_neutral_and_clean_calls_build_trust() {
        let d = Decay::default();
        let mut t = Trust::new(Kind::Server);
        assert!((t.overall(0, d) - 0.5).abs() < 1e-9);
        for i in 0..20 {
            t.update(Signal::CleanCall, i, d);
        }
        let score = t.overall(20, d);
        assert!(score > 0.9, "{score}");
        assert_eq!(t.counts[Signal::CleanCall.index()], 20);
        assert!(t.movers().is_empty(), "clean calls are counted, not listed");
    }

    #[test]
    fn a_kill_outweighs_many_clean_calls_and_says_so() {
        let d = Decay::default();
        let mut t = Trust::new(Kind::Server);
        for i in 0..10 {
            t.update(Signal::CleanCall, i, d);
        }
        let before = t.overall(10, d);
        t.update(Signal::KernelKill, 10, d);
        let after = t.overall(10, d);
        assert!(after < 0.5 && after < before, "{before} -> {after}");
        let m = t.movers();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].signal, Signal::KernelKill);
        assert!((f64::from(m[0].before) - before).abs() < 1e-3);
        let why = t.explain(10, d);
        assert_eq!(why["events"]["kernel_kill"], 1);
        assert_eq!(why["recent"][0]["event"], "kernel_kill");
        assert!(
            why["dimensions"]["security"]["score"]
                .as_f64()
                .expect("score")
                < 0.2
        );
    }

    #[test]
    fn evidence_decays_and_bad_evidence_lasts_longer() {
        let d = Decay::default();
        let mut t = Trust::new(Kind::Server);
        t.update(Signal::CleanCall, 0, d);
        t.update(Signal::PolicyBlock, 0, d);
        let week = t.dims[Dimension::Reliability.index()].at(7 * DAY, d);
        assert!((week.good - 0.5).abs() < 1e-9, "{week:?}");
        let month = t.dims[Dimension::Compliance.index()].at(30 * DAY, d);
        assert!((month.bad - 1.0).abs() < 1e-9, "{month:?}");
        // Long after, the subject is back near neutral.
        let later = t.overall(365 * DAY, d);
        assert!((later - 0.5).abs() < 0.01, "{later}");
        // Time never runs backwards.
        assert_eq!(t.dims[0].at(0, d), t.dims[0]);
    }

    #[test]
    fn the_recent_ring_keeps_the_last_eight_in_order() {
        let d = Decay::default();
        let mut t = Trust::new(Kind::Server);
        for i in 0..11u64 {
            t.update(Signal::PolicyAlert, i * 1000, d);
        }
        let m = t.movers();
        assert_eq!(m.len(), RECENT);
        assert_eq!(m[0].at, 3000);
        assert_eq!(m[RECENT - 1].at, 10_000);
        assert!(m.windows(2).all(|w| w[1].after <= w[0].after));
    }

    #[test]
    fn a_record_survives_json() {
        let d = Decay::default();
        let mut t = Trust::new(Kind::Server);
        t.update(Signal::PinViolation, 5, d);
        let back: Trust =
            serde_json::from_str(&serde_json::to_string(&t).expect("json")).expect("parse");
        assert_eq!(back, t);
    }
}
