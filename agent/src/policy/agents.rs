//! `[[agents]]`: names, roles and attributes for the agents the host can
//! identify. An entry applies to a client whose every given selector
//! (`uid`, `gid`, `exe`, `identity`) matches what the host proves about it
//! (the peer process's credentials and executable, the identity its API
//! token proves); the first match wins. A client with a registered
//! identity always has that identity's roles as well; an unmatched client
//! without one is an anonymous agent with no roles.
//!
//! `[identity] require = "identity"` makes a proven identity mandatory:
//! HTTP requests without a valid `Authorization: Bearer` token or client
//! certificate get 401, and a stdio session does not start without
//! `MCPWARDEN_TOKEN`.
//!
//! ```toml
//! [[spec.agents]]
//! name = "claude-desktop"
//! uid = 1000
//! exe = "/opt/claude/claude"
//! roles = ["developer"]
//! attrs = { team = "infra" }
//! ```
use std::collections::BTreeMap;

use serde::Deserialize;

use super::expr::Agent;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    name: String,
    uid: Option<u32>,
    gid: Option<u32>,
    exe: Option<String>,
    identity: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    attrs: BTreeMap<String, String>,
}

/// `[identity]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    #[serde(default)]
    pub(super) require: Require,
}

/// Which proof of identity a client must bring.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// Anonymous clients are served (their peer credentials still count).
    #[default]
    None,
    /// A registered identity (`mcpwarden agent register`), proven by its
    /// API token or, over HTTPS, a client certificate of the host's CA.
    /// `"token"` is accepted as another spelling.
    #[serde(alias = "token")]
    Identity,
}

/// One validated `[[agents]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRule {
    pub name: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub exe: Option<String>,
    pub identity: Option<String>,
    pub roles: Vec<String>,
    pub attrs: BTreeMap<String, String>,
}

/// A registered identity a client proved (with an API token).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proven {
    pub name: String,
    pub roles: Vec<String>,
}

/// What the host proves about a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub exe: Option<String>,
    pub identity: Option<Proven>,
}

impl Peer {
    /// The process `pid`, read from /proc (real uid and gid, executable).
    #[must_use]
    pub fn of_process(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let id = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Self {
            uid: id("Uid:"),
            gid: id("Gid:"),
            exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|p| p.display().to_string()),
            identity: None,
        }
    }

    /// The process that started this one: for `mcpwarden run` on stdio,
    /// the MCP client.
    #[must_use]
    pub fn parent() -> Self {
        Self::of_process(std::os::unix::process::parent_id())
    }
}

impl RawAgent {
    pub(super) fn resolve(self, i: usize) -> Result<AgentRule, (String, String)> {
        let key = format!("agents[{i}]");
        if self.name.is_empty() {
            return Err((format!("{key}.name"), "must not be empty".into()));
        }
        if let Some(exe) = &self.exe
            && !exe.starts_with('/')
        {
            return Err((
                format!("{key}.exe"),
                format!("{exe:?}: must be an absolute path"),
            ));
        }
        if self.uid.is_none() && self.gid.is_none() && self.exe.is_none() && self.identity.is_none()
        {
            return Err((
                key,
                "needs at least one of uid, gid, exe, identity: an entry that matches every client would \
                 give every client its roles"
                    .into(),
            ));
        }
        Ok(AgentRule {
            name: self.name,
            uid: self.uid,
            gid: self.gid,
            exe: self.exe,
            identity: self.identity,
            roles: self.roles,
            attrs: self.attrs,
        })
    }
}

/// The agent `peer` is, per `rules`.
#[must_use]
pub fn identify(rules: &[AgentRule], peer: &Peer) -> Agent {
    let fits = |want: Option<u32>, have: Option<u32>| want.is_none() || want == have;
    let proven = peer.identity.as_ref();
    let rule = rules.iter().find(|r| {
        fits(r.uid, peer.uid)
            && fits(r.gid, peer.gid)
            && (r.exe.is_none() || r.exe == peer.exe)
            && (r.identity.is_none() || r.identity.as_deref() == proven.map(|p| p.name.as_str()))
    });
    let mut granted = rule.map(|r| r.roles.clone()).unwrap_or_default();
    for role in proven.map(|p| p.roles.as_slice()).unwrap_or_default() {
        if !granted.contains(role) {
            granted.push(role.clone());
        }
    }
    Agent {
        name: rule
            .map(|r| r.name.clone())
            .or_else(|| proven.map(|p| p.name.clone()))
            .unwrap_or_default(),
        uid: peer.uid.map_or(-1, i64::from),
        gid: peer.gid.map_or(-1, i64::from),
        exe: peer.exe.clone().unwrap_or_default(),
        identity: proven.map(|p| p.name.clone()).unwrap_or_default(),
        roles: granted,
        attrs: rule.map(|r| r.attrs.clone()).unwrap_or_default(),
    }
}
