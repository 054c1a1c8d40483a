//! Policy unit cases (`mcpwarden policy test`): next to `NAME.toml`, a
//! `NAME.test.toml` says what the policy must decide for given calls.
//!
//! ```toml
//! [[case]]
//! name = "reads inside the data directory are allowed"
//! tool = "read_file"
//! arguments = { path = "/srv/data/notes.txt" }
//! agent = { uid = 1000, exe = "/usr/bin/claude" }   # the client, as the host sees it
//! session = { blocked = 0 }                         # optional
//! trust = { agent = 0.9, server = 0.9 }             # optional
//! time = 2026-11-18T14:30:00Z                       # optional (default: now)
//! repeat = 1                                        # calls at the same instant; the last is judged
//! expect = "allow"                                  # allow | alert | block | kill
//! ```
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{
    Policy,
    agents::{Peer, Proven, identify},
    expr::{Context, SessionStats, TrustScores},
    tools::{Action, Buckets},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCases {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    uid: Option<u32>,
    gid: Option<u32>,
    exe: Option<String>,
    /// A registered identity the client proved, and its roles.
    identity: Option<String>,
    #[serde(default)]
    identity_roles: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    #[serde(default)]
    calls: u64,
    #[serde(default)]
    blocked: u64,
    #[serde(default)]
    alerts: u64,
    #[serde(default)]
    flagged: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    agent: Option<f64>,
    server: Option<f64>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    tool: String,
    #[serde(default)]
    arguments: Option<toml::Value>,
    #[serde(default)]
    agent: RawPeer,
    #[serde(default)]
    session: RawSession,
    trust: Option<RawTrust>,
    time: Option<toml::value::Datetime>,
    repeat: Option<u32>,
    expect: Action,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub expected: Action,
    pub got: Action,
    /// Which rule decided, in words.
    pub why: String,
}

impl Outcome {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.expected == self.got
    }
}

/// The case file of policy `path`: `NAME.test.toml` next to `NAME.toml`.
#[must_use]
pub fn cases_path(policy: &Path) -> PathBuf {
    let stem = policy
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    policy.with_file_name(format!("{stem}.test.toml"))
}

/// Whether `path` is a case file rather than a policy.
#[must_use]
pub fn is_cases_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".test.toml"))
}

/// Reads the cases in `path`; errors name the file and line.
pub fn load(path: &Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read cases {}: {e}", path.display()))?;
    let raw: RawCases = toml::from_str(&text)
        .map_err(|e| format!("cases {}: {}", path.display(), e.to_string().trim_end()))?;
    if raw.case.is_empty() {
        return Err(format!("cases {}: no [[case]]", path.display()));
    }
    Ok(raw.case)
}

/// Seconds since the epoch of a TOML date-time (UTC when it has no offset).
fn unix_seconds(dt: &toml::value::Datetime) -> Result<i64, String> {
    let date = dt.date.ok_or_else(|| format!("{dt}: needs a date"))?;
    let time = dt.time.unwrap_or(toml::value::Time {
        hour: 0,
        minute: 0,
        second: 0,
        nanosecond: 0,
    });
    // Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    // days_from_civil).
    let (y, m, d) = (
        i64::from(date.year) - i64::from(date.month <= 2),
        i64::from(date.month),
        i64::from(date.day),
    );
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let offset = match dt.offset {
        Some(toml::value::Offset::Custom { minutes }) => i64::from(minutes) * 60,
        _ => 0,
    };
    Ok(days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset)
}

/// Runs every case against `policy`.
pub fn run(policy: &Policy, cases: &[Case]) -> Result<Vec<Outcome>, String> {
    let server = policy.server_name("");
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let args: Value = match &case.arguments {
            Some(v) => serde_json::to_value(v)
                .map_err(|e| format!("case {:?}: arguments: {e}", case.name))?,
            None => Value::Null,
        };
        let peer = Peer {
            uid: case.agent.uid,
            gid: case.agent.gid,
            exe: case.agent.exe.clone(),
            identity: case.agent.identity.clone().map(|name| Proven {
                name,
                roles: case.agent.identity_roles.clone(),
            }),
        };
        let agent = identify(&policy.agents, &peer);
        let unix_time = match &case.time {
            Some(t) => unix_seconds(t).map_err(|e| format!("case {:?}: time {e}", case.name))?,
            None => crate::store::unix_now() as i64,
        };
        let defaults = TrustScores::default();
        let ctx = Context {
            tool: &case.tool,
            args: &args,
            agent: &agent,
            server: &server,
            session: SessionStats {
                calls: case.session.calls,
                blocked: case.session.blocked,
                alerts: case.session.alerts,
                flagged: case.session.flagged,
            },
            trust: TrustScores {
                agent: case
                    .trust
                    .as_ref()
                    .and_then(|t| t.agent)
                    .unwrap_or(defaults.agent),
                server: case
                    .trust
                    .as_ref()
                    .and_then(|t| t.server)
                    .unwrap_or(defaults.server),
            },
            unix_time,
        };
        let mut buckets = Buckets::default();
        let mut decision = policy.tools.decide(&ctx, &mut buckets, 1);
        for _ in 1..case.repeat.unwrap_or(1) {
            decision = policy.tools.decide(&ctx, &mut buckets, 1);
        }
        out.push(Outcome {
            name: case.name.clone(),
            expected: case.expect,
            got: decision.action,
            why: policy.tools.explain(&decision),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_datetimes_become_unix_seconds() {
        let dt: toml::value::Datetime = "2026-11-18T14:30:00Z".parse().expect("datetime");
        assert_eq!(unix_seconds(&dt), Ok(1_795_012_200));
        let dt: toml::value::Datetime = "2026-11-18T15:30:00+01:00".parse().expect("datetime");
        assert_eq!(unix_seconds(&dt), Ok(1_795_012_200));
        let dt: toml::value::Datetime = "1970-01-01".parse().expect("date");
        assert_eq!(unix_seconds(&dt), Ok(0));
        let dt: toml::value::Datetime = "2000-03-01T00:00:00Z".parse().expect("datetime");
        assert_eq!(unix_seconds(&dt), Ok(951_868_800));
    }

    #[test]
    fn cases_files_sit_next_to_their_policy() {
        assert_eq!(
            cases_path(Path::new("/p/filesystem.toml")),
            Path::new("/p/filesystem.test.toml")
        );
        assert!(is_cases_file(Path::new("/p/filesystem.test.toml")));
        assert!(!is_cases_file(Path::new("/p/filesystem.toml")));
    }
}
