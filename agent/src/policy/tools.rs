//! `[tools]`: who may call which tool, with which arguments, how often.
//!
//! ```toml
//! [spec.tools]
//! default = "block"       # what a call no rule matches gets
//! pin = "quarantine"      # a changed or new tool definition: quarantine | alert | off
//! shadowing = "alert"     # a tool named like another server's: quarantine | alert | off
//! first_use = "pin"       # a server's first tools/list: pin it as it is, or quarantine
//!                         # every tool until `mcpwarden tools approve`
//!
//! [[spec.tools.rules]]
//! name = "read_*"                          # glob over the tool name; default "*"
//! when = 'path_under(args.path, "/srv")'   # condition (see expr); default: always
//! action = "allow"                         # allow | alert | block | kill
//! rate = "20/s"                            # calls per second / minute / hour, optional
//! reason = "reads stay in /srv"            # shown with the verdict, optional
//! ```
//!
//! Rules are tried in order; the first whose name matches and whose
//! condition holds decides. A condition that cannot be decided for a call
//! (a missing argument, a wrong type) does not grant (`allow` rules are
//! skipped) and does stop (`alert`, `block` and `kill` rules apply).
//! A call over a rule's rate is blocked. In monitor mode `block` and
//! `kill` become `alert`.
use std::fmt;

use serde::Deserialize;

use super::expr::{Context, Expr, glob_match};

/// What a rule does with a call.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Forward the call.
    Allow,
    /// Forward it and record an alert.
    Alert,
    /// Answer it with a JSON-RPC error; the server never sees it.
    Block,
    /// Block it and kill the server's process tree.
    Kill,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Alert => "alert",
            Self::Block => "block",
            Self::Kill => "kill",
        })
    }
}

/// What a changed, new or shadowing tool definition does (the tool
/// registry, see `crate::registry`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PinAction {
    /// The tool is left out of `tools/list` and its calls are blocked until
    /// `mcpwarden tools approve`.
    #[default]
    Quarantine,
    /// Recorded and forwarded; the old pin stays until approved.
    Alert,
    /// No pinning.
    Off,
}

/// A server's first `tools/list`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FirstUse {
    /// Pin the tools as listed (trust on first use).
    #[default]
    Pin,
    /// Quarantine every tool until approved.
    Quarantine,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTools {
    default: Option<Action>,
    pin: Option<PinAction>,
    shadowing: Option<PinAction>,
    first_use: Option<FirstUse>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    action: Action,
    when: Option<String>,
    rate: Option<String>,
    reason: Option<String>,
}

/// A call rate: `count` calls per `period_ns`, as a token bucket of
/// `count` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period_ns: u64,
}

impl Rate {
    fn parse(text: &str) -> Result<Self, String> {
        let err = || format!("{text:?}: expected COUNT/s, COUNT/min or COUNT/h, e.g. \"10/s\"");
        let (count, unit) = text.split_once('/').ok_or_else(err)?;
        let count: u32 = count.trim().parse().map_err(|_| err())?;
        let period_ns = match unit.trim() {
            "s" | "sec" | "second" => 1_000_000_000,
            "m" | "min" | "minute" => 60_000_000_000,
            "h" | "hour" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        if count == 0 {
            return Err(format!(
                "{text:?}: a rate of 0 never allows a call; use action = \"block\""
            ));
        }
        Ok(Self { count, period_ns })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_ns {
            1_000_000_000 => "s",
            60_000_000_000 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// One compiled rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Where it is written, e.g. `tools.rules[2]`.
    pub key: String,
    pub name: String,
    pub when: Option<Expr>,
    pub action: Action,
    pub rate: Option<Rate>,
    pub reason: Option<String>,
}

/// The compiled `[tools]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolRules {
    pub default: Action,
    /// Changed and new tool definitions (off for legacy documents, which
    /// name no server).
    pub pin: PinAction,
    /// Tools named like another server's.
    pub shadowing: PinAction,
    pub first_use: FirstUse,
    pub rules: Vec<Rule>,
    /// Monitor mode: block and kill are recorded as alerts.
    pub monitor: bool,
}

/// Why a decision was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Rule `i` matched.
    Rule(usize),
    /// Rule `i`'s condition could not be decided; it stops the call.
    Undetermined(usize),
    /// Rule `i` matched but its rate is used up.
    RateLimited(usize),
    /// No rule matched.
    Default,
}

/// The decision on one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What happens (after monitor mode).
    pub action: Action,
    /// What the policy asked for (before monitor mode).
    pub wanted: Action,
    pub why: Why,
}

/// Per-session rate state: a token bucket per rule.
#[derive(Clone, Debug, Default)]
pub struct Buckets {
    /// (tokens scaled by period, last refill time) per rule index.
    state: Vec<(u64, u64)>,
}

impl Buckets {
    /// Takes one token from rule `i`'s bucket at `now` (ns); false when empty.
    fn take(&mut self, i: usize, rate: Rate, now: u64) -> bool {
        if self.state.len() <= i {
            self.state.resize(i + 1, (u64::MAX, 0));
        }
        // Tokens are kept in units of 1/period_ns, so refills are exact
        // integer arithmetic: full = count * period_ns.
        let full = u64::from(rate.count).saturating_mul(rate.period_ns);
        let (tokens, last) = &mut self.state[i];
        let refill = now
            .saturating_sub(*last)
            .saturating_mul(u64::from(rate.count));
        *tokens = tokens.saturating_add(refill).min(full);
        *last = now;
        if *tokens >= rate.period_ns {
            *tokens -= rate.period_ns;
            true
        } else {
            false
        }
    }
}

impl RawTools {
    /// Compiles the table; the error is (key, message). `present`: the
    /// policy has the table at all (an absent one in a legacy document
    /// allows every tool).
    pub(super) fn resolve(
        self,
        present: bool,
        legacy: bool,
        monitor: bool,
    ) -> Result<ToolRules, (String, String)> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, raw) in self.rules.into_iter().enumerate() {
            let key = format!("tools.rules[{i}]");
            let when = raw
                .when
                .as_deref()
                .map(Expr::compile)
                .transpose()
                .map_err(|e| (format!("{key}.when"), e.to_string()))?;
            let rate = raw
                .rate
                .as_deref()
                .map(Rate::parse)
                .transpose()
                .map_err(|e| (format!("{key}.rate"), e))?;
            let name = raw.name.unwrap_or_else(|| "*".into());
            if name.is_empty() {
                return Err((format!("{key}.name"), "must not be empty".into()));
            }
            rules.push(Rule {
                key,
                name,
                when,
                action: raw.action,
                rate,
                reason: raw.reason,
            });
        }
        let default = self.default.unwrap_or(if legacy && !present {
            Action::Allow
        } else {
            Action::Block
        });
        Ok(ToolRules {
            default,
            pin: self.pin.unwrap_or(if legacy {
                PinAction::Off
            } else {
                PinAction::Quarantine
            }),
            shadowing: self.shadowing.unwrap_or(if legacy {
                PinAction::Off
            } else {
                PinAction::Alert
            }),
            first_use: self.first_use.unwrap_or_default(),
            rules,
            monitor,
        })
    }
}

impl ToolRules {
    /// Decides on one call at `now` (monotonic ns, for rates).
    #[must_use]
    pub fn decide(&self, ctx: &Context<'_>, buckets: &mut Buckets, now: u64) -> Decision {
        let (wanted, why) = self.first_match(ctx, buckets, now);
        let action = if self.monitor && wanted >= Action::Block {
            Action::Alert
        } else {
            wanted
        };
        Decision {
            action,
            wanted,
            why,
        }
    }

    fn first_match(&self, ctx: &Context<'_>, buckets: &mut Buckets, now: u64) -> (Action, Why) {
        for (i, rule) in self.rules.iter().enumerate() {
            if !glob_match(rule.name.as_bytes(), ctx.tool.as_bytes()) {
                continue;
            }
            match rule.when.as_ref().map(|w| w.eval(ctx)) {
                None | Some(Ok(true)) => {}
                Some(Ok(false)) => continue,
                Some(Err(_)) if rule.action == Action::Allow => continue,
                Some(Err(_)) => return (rule.action, Why::Undetermined(i)),
            }
            if let Some(rate) = rule.rate
                && !buckets.take(i, rate, now)
            {
                return (Action::Block.max(rule.action), Why::RateLimited(i));
            }
            return (rule.action, Why::Rule(i));
        }
        (self.default, Why::Default)
    }

    /// A sentence for the verdict: which rule and why.
    #[must_use]
    pub fn explain(&self, d: &Decision) -> String {
        let rule = |i: usize| {
            let r = &self.rules[i];
            let reason = r
                .reason
                .as_deref()
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("{} (name {:?}){reason}", r.key, r.name)
        };
        match d.why {
            Why::Rule(i) => rule(i),
            Why::Undetermined(i) => format!(
                "{}, whose condition cannot be decided for this call",
                rule(i)
            ),
            Why::RateLimited(i) => format!(
                "{} allows {}; this call is over it",
                rule(i),
                self.rules[i]
                    .rate
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            ),
            Why::Default => format!(
                "no rule grants it (tools.default = {:?})",
                self.default.to_string()
            ),
        }
    }

    /// The rule a decision names, as its key.
    #[must_use]
    pub fn rule_key(&self, d: &Decision) -> &str {
        match d.why {
            Why::Rule(i) | Why::Undetermined(i) | Why::RateLimited(i) => &self.rules[i].key,
            Why::Default => "tools.default",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::policy::{
        Policy,
        expr::{Agent, SessionStats, TrustScores},
    };

    const POLICY: &str = r#"apiVersion = "mcpwarden.dev/v1"
kind = "ServerPolicy"
[metadata]
name = "files"
[spec.tools]
default = "block"
[[spec.tools.rules]]
name = "write_*"
when = '!path_under(args.path, "/srv/data")'
action = "kill"
reason = "writes stay in /srv/data"
[[spec.tools.rules]]
name = "read_file"
when = 'path_under(args.path, "/srv/data")'
action = "allow"
rate = "3/s"
[[spec.tools.rules]]
name = "write_*"
action = "alert"
[[spec.tools.rules]]
name = "delete_*"
when = '"admin" in agent.roles'
action = "allow"
"#;

    fn decide(p: &Policy, tool: &str, args: &Value, buckets: &mut Buckets, now: u64) -> Decision {
        let agent = Agent::default();
        let ctx = Context {
            tool,
            args,
            agent: &agent,
            server: "files",
            session: SessionStats::default(),
            trust: TrustScores::default(),
            unix_time: 0,
        };
        p.tools.decide(&ctx, buckets, now)
    }

    #[test]
    fn first_matching_rule_decides_and_the_default_denies() {
        let p = Policy::parse(POLICY, "t").expect("valid");
        let mut b = Buckets::default();
        let d = decide(&p, "read_file", &json!({"path": "/srv/data/a"}), &mut b, 0);
        assert_eq!((d.action, d.why), (Action::Allow, Why::Rule(1)));
        let d = decide(&p, "read_file", &json!({"path": "/etc/passwd"}), &mut b, 0);
        assert_eq!((d.action, d.why), (Action::Block, Why::Default));
        assert!(p.tools.explain(&d).contains("no rule grants it"));
        let d = decide(
            &p,
            "write_file",
            &json!({"path": "/srv/data/../../etc/x"}),
            &mut b,
            0,
        );
        assert_eq!((d.action, d.why), (Action::Kill, Why::Rule(0)));
        assert!(p.tools.explain(&d).contains("writes stay in /srv/data"));
        let d = decide(&p, "write_file", &json!({"path": "/srv/data/x"}), &mut b, 0);
        assert_eq!((d.action, d.why), (Action::Alert, Why::Rule(2)));
        let d = decide(&p, "delete_file", &json!({}), &mut b, 0);
        assert_eq!(d.action, Action::Block, "no role, no grant");
    }

    #[test]
    fn undecidable_conditions_fail_closed() {
        let p = Policy::parse(POLICY, "t").expect("valid");
        let mut b = Buckets::default();
        // No path: the kill rule cannot be decided, so it applies...
        let d = decide(&p, "write_file", &json!({"content": "x"}), &mut b, 0);
        assert_eq!((d.action, d.why), (Action::Kill, Why::Undetermined(0)));
        // ...and the allow rule does not grant.
        let d = decide(&p, "read_file", &json!({"path": 7}), &mut b, 0);
        assert_eq!((d.action, d.why), (Action::Block, Why::Default));
    }

    #[test]
    fn rates_refill_over_time() {
        let p = Policy::parse(POLICY, "t").expect("valid");
        let mut b = Buckets::default();
        let args = json!({"path": "/srv/data/a"});
        let at = |b: &mut Buckets, t: u64| decide(&p, "read_file", &args, b, t).action;
        assert_eq!(
            [at(&mut b, 0), at(&mut b, 0), at(&mut b, 0)],
            [Action::Allow; 3]
        );
        let over = decide(&p, "read_file", &args, &mut b, 1);
        assert_eq!(
            (over.action, over.why),
            (Action::Block, Why::RateLimited(1))
        );
        assert!(
            p.tools.explain(&over).contains("allows 3/s"),
            "{}",
            p.tools.explain(&over)
        );
        // A third of a second later one token is back, not two.
        assert_eq!(at(&mut b, 333_333_334), Action::Allow);
        assert_eq!(at(&mut b, 333_333_334), Action::Block);
    }

    #[test]
    fn monitor_mode_records_instead_of_stopping() {
        let mut p = Policy::parse(POLICY, "t").expect("valid");
        p.force_monitor();
        let d = decide(
            &p,
            "write_file",
            &json!({"path": "/etc/x"}),
            &mut Buckets::default(),
            0,
        );
        assert_eq!((d.action, d.wanted), (Action::Alert, Action::Kill));
        let monitor = Policy::parse(
            &POLICY.replace("[spec.tools]", "[spec]\nmode = \"monitor\"\n[spec.tools]"),
            "t",
        )
        .expect("valid");
        let d = decide(&monitor, "nope", &json!({}), &mut Buckets::default(), 0);
        assert_eq!((d.action, d.wanted), (Action::Alert, Action::Block));
    }
}
