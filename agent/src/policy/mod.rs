//! Policy documents (TOML, see policies/README.md): a versioned envelope
//! ([`doc`]) around a server's spec:
//!
//! ```toml
//! apiVersion = "mcpwarden.dev/v1"
//! kind = "ServerPolicy"
//! [metadata]
//! name = "files"
//! [spec]
//! mode = "enforce"            # or "monitor"
//! [spec.files]
//! deny = ["/etc/shadow", "/root"]
//! [[spec.tools.rules]]
//! name = "read_file"
//! action = "allow"
//! ```
//!
//! A deny entry is an absolute path prefix matched at component boundaries:
//! `/root` denies `/root` and `/root/x`, not `/rootfs`. Tool rules
//! ([`tools`]) decide every `tools/call` with conditions in a small typed
//! language ([`expr`]) compiled here, once.
pub mod agents;
pub mod cases;
pub mod cli;
pub mod doc;
pub mod expr;
pub mod inspect;
pub mod kernel;
pub mod network;
pub mod tools;

use std::{fmt, path::Path};

use mcpwarden_common::DENY_PATH_LEN;
use mcpwarden_sandbox::{Invoker, SandboxPolicy, Spec};
use serde::Deserialize;

/// What a policy violation does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kill the tool server's process tree and fail the call.
    #[default]
    Enforce,
    /// Record the violation only.
    Monitor,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    files: RawFiles,
    #[serde(default)]
    sandbox: SandboxPolicy,
    network: Option<RawNetwork>,
    #[serde(default)]
    kernel: RawKernel,
    #[serde(default)]
    inspect: inspect::RawInspect,
    tools: Option<tools::RawTools>,
    #[serde(default)]
    agents: Vec<agents::RawAgent>,
    #[serde(default)]
    identity: agents::RawIdentity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    events_per_second: Option<u32>,
    kill: Option<Vec<String>>,
    #[serde(default)]
    call_results: bool,
}

/// Plain kernel events a session may report per second unless its policy
/// says otherwise (`[kernel] events_per_second`; 0: no limit). Far above
/// what a tool call does (a Python server's start is ~700 events), far
/// below what fills the ring buffer (~1.5 million/s measured).
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 200_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    bind: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    #[serde(default)]
    deny: Vec<String>,
}

/// Errors of loading a policy; each names the file and the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("policy {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("policy {path}{}: {key}: {message}", at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: String,
        /// The key, e.g. `spec.files.deny[2]`.
        key: String,
        /// What is wrong with it.
        message: String,
        /// Line and column of the key in the file, when found.
        at: Option<(usize, usize)>,
    },
}

fn invalid(source: &str, key: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        path: source.to_owned(),
        key: key.into(),
        message: message.into(),
        at: None,
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Where it came from (for messages).
    pub source: String,
    /// Enforce or monitor.
    pub mode: Mode,
    /// Denied path prefixes, normalised: absolute, no `.`/`..`/`//`, no
    /// trailing slash except for `/` itself.
    pub deny: Vec<String>,
    /// What the server's sandbox grants (`[sandbox]`; an absent table is the
    /// default sandbox: system files read-only, no network, no root).
    pub sandbox: Spec,
    /// Destinations the server may reach (`[network]`), enforced in the
    /// kernel; `None` when the policy has no `[network]` table.
    pub network: Option<Vec<network::NetAllow>>,
    /// The `[network] allow` entries as written (for messages).
    pub network_entries: Vec<String>,
    /// Local addresses the server may bind (`[network] bind`), enforced in
    /// the kernel with `network`: with a `[network]` table and no `bind`,
    /// every explicit bind is refused.
    pub network_bind: Vec<network::NetAllow>,
    /// Plain kernel events the session may report per second (verdicts
    /// are never limited); 0: no limit.
    pub events_per_second: u32,
    /// `[kernel] kill`: the privilege and evasion calls that kill the
    /// server (enforce) or alert (monitor), as `mcpwarden_common::kill`
    /// bits; every one of them unless the policy says otherwise.
    pub kernel_kill: u32,
    /// `[kernel] call_results`: also watch calls at their exit (failed
    /// file, exec and connect calls with their error; accepted
    /// connections' peers). Off by default: while such a session is live,
    /// every task on the host runs a program at every syscall exit.
    pub call_results: bool,
    /// PSI: what is inspected and what a flagged text does (`[inspect]`).
    pub inspect: inspect::InspectPolicy,
    /// `[metadata]`; `None` for a legacy document without `apiVersion`.
    pub metadata: Option<doc::Metadata>,
    /// Who may call which tool (`[tools]`).
    pub tools: tools::ToolRules,
    /// Names and roles of identified agents (`[[agents]]`).
    pub agents: Vec<agents::AgentRule>,
    /// Which proof of identity clients must bring (`[identity] require`).
    pub require: agents::Require,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates policy text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, PolicyError> {
        Self::parse_for(text, source, Invoker::current())
    }

    /// As [`Policy::parse`], for a session `invoker` asked for (the
    /// daemon's client): the server's default user is theirs.
    pub fn parse_for(text: &str, source: &str, invoker: Invoker) -> Result<Self, PolicyError> {
        let parse_error = |e: toml::de::Error| PolicyError::Parse {
            path: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let (raw, metadata, prefix) = if table.contains_key("apiVersion") {
            let d: doc::RawDocument = toml::from_str(text).map_err(parse_error)?;
            let located = |key: &str, message: String| PolicyError::Invalid {
                path: source.to_owned(),
                key: key.to_owned(),
                message,
                at: doc::locate(text, key),
            };
            if d.api_version != doc::API_VERSION {
                return Err(located(
                    "apiVersion",
                    format!(
                        "{:?}: this mcpwarden reads {:?}",
                        d.api_version,
                        doc::API_VERSION
                    ),
                ));
            }
            if d.kind != doc::KIND {
                return Err(located(
                    "kind",
                    format!("{:?}: expected {:?}", d.kind, doc::KIND),
                ));
            }
            if d.metadata.name.trim().is_empty() {
                return Err(located("metadata.name", "must not be empty".into()));
            }
            (d.spec, Some(d.metadata), "spec.")
        } else {
            let raw: RawPolicy = toml::from_str(text).map_err(parse_error)?;
            (raw, None, "")
        };
        Self::resolve(raw, metadata, source, invoker).map_err(|e| match e {
            PolicyError::Invalid {
                path, key, message, ..
            } => {
                let key = format!("{prefix}{key}");
                PolicyError::Invalid {
                    at: doc::locate(text, &key),
                    path,
                    key,
                    message,
                }
            }
            other => other,
        })
    }

    fn resolve(
        raw: RawPolicy,
        metadata: Option<doc::Metadata>,
        source: &str,
        invoker: Invoker,
    ) -> Result<Self, PolicyError> {
        let legacy = metadata.is_none();
        let mut deny = Vec::with_capacity(raw.files.deny.len());
        for (i, entry) in raw.files.deny.iter().enumerate() {
            let invalid = |message: &str| {
                invalid(
                    source,
                    format!("files.deny[{i}]"),
                    format!("{entry:?}: {message}"),
                )
            };
            if !entry.starts_with('/') {
                return Err(invalid("must be an absolute path"));
            }
            if entry.contains('\0') {
                return Err(invalid("must not contain NUL"));
            }
            let normal = normalize(entry);
            if normal.len() >= DENY_PATH_LEN {
                return Err(invalid(&format!(
                    "longer than the {} bytes the kernel matches",
                    DENY_PATH_LEN - 1
                )));
            }
            deny.push(normal);
        }
        let sandbox = raw
            .sandbox
            .resolve(raw.mode == Mode::Enforce, invoker)
            .map_err(|e| invalid(source, e.key, e.message))?;
        let network_entries = raw
            .network
            .as_ref()
            .map(|n| n.allow.clone())
            .unwrap_or_default();
        let network_bind = raw
            .network
            .as_ref()
            .map(|n| network::parse(&n.bind))
            .transpose()
            .map_err(|(i, message)| invalid(source, format!("network.bind[{i}]"), message))?
            .unwrap_or_default();
        let network = raw
            .network
            .map(|n| network::parse(&n.allow))
            .transpose()
            .map_err(|(i, message)| invalid(source, format!("network.allow[{i}]"), message))?;
        let inspect = raw
            .inspect
            .resolve(raw.mode == Mode::Enforce)
            .map_err(|(key, message)| invalid(source, key, message))?;
        let kernel_kill = match &raw.kernel.kill {
            None => kernel::default_kill(),
            Some(names) => kernel::parse_kill(names)
                .map_err(|(i, message)| invalid(source, format!("kernel.kill[{i}]"), message))?,
        };
        let tools_present = raw.tools.is_some();
        let tools = raw
            .tools
            .unwrap_or_default()
            .resolve(tools_present, legacy, raw.mode == Mode::Monitor)
            .map_err(|(key, message)| invalid(source, key, message))?;
        let agents = raw
            .agents
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.resolve(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(key, message)| invalid(source, key, message))?;
        Ok(Self {
            metadata,
            tools,
            agents,
            source: source.to_owned(),
            mode: raw.mode,
            inspect,
            deny,
            sandbox,
            network,
            network_entries,
            network_bind,
            events_per_second: raw
                .kernel
                .events_per_second
                .unwrap_or(DEFAULT_EVENTS_PER_SECOND),
            kernel_kill,
            call_results: raw.kernel.call_results,
            require: raw.identity.require,
        })
    }

    /// The longest deny rule that `path` falls under, as its index.
    /// Same semantics as the kernel's trie lookup.
    #[must_use]
    pub fn deny_match(&self, path: &str) -> Option<usize> {
        self.deny
            .iter()
            .enumerate()
            .filter(|(_, prefix)| under(path, prefix))
            .max_by_key(|(_, prefix)| prefix.len())
            .map(|(i, _)| i)
    }

    /// Things that are allowed but probably not meant: a denied prefix
    /// inside a writable sandbox grant. The kernel kills at syscall entry,
    /// and a mutation completes before the signal lands; only the sandbox
    /// prevents it.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.metadata.is_none() {
            out.push(format!(
                "policy {}: no apiVersion: read as a legacy document{}; see policies/README.md for the {} format",
                self.source,
                if self.tools.default == tools::Action::Allow && self.tools.rules.is_empty() {
                    " (no [tools] table: every tool may be called)"
                } else {
                    ""
                },
                doc::API_VERSION
            ));
        } else if self.tools.rules.is_empty() && self.tools.default >= tools::Action::Block {
            out.push(format!(
                "policy {}: no [[spec.tools.rules]] and tools.default = {:?}: every tool call is refused",
                self.source,
                self.tools.default.to_string()
            ));
        }
        for (i, prefix) in self.deny.iter().enumerate() {
            // /tmp and /dev/shm are private mounts in the sandbox: host paths
            // under them are writable only if granted on their own.
            let private =
                |w: &std::path::Path| w == std::path::Path::new("/tmp") || w.starts_with("/dev");
            if let Some(grant) = self
                .sandbox
                .write
                .iter()
                .filter(|w| !private(w))
                .find(|w| std::path::Path::new(prefix).starts_with(w))
            {
                out.push(format!(
                    "policy {}: {} lies inside the writable grant {:?}: changes there complete before the kernel's kill; \
                     remove it from [sandbox] write to prevent them",
                    self.source,
                    self.rule_name(i),
                    grant.display()
                ));
            }
        }
        out
    }

    /// The global monitor switch: the policy is applied as if its mode were
    /// `monitor` (nothing is stopped, everything is recorded), without
    /// editing it.
    pub fn force_monitor(&mut self) {
        self.mode = Mode::Monitor;
        self.tools.monitor = true;
        self.sandbox.enforce = false;
        if self.inspect.action == inspect::Action::Block {
            self.inspect.action = inspect::Action::Alert;
        }
    }

    /// The server's name: `metadata.name`, or `fallback` (e.g. the
    /// command line) for a legacy document.
    #[must_use]
    pub fn server_name(&self, fallback: &str) -> String {
        self.metadata
            .as_ref()
            .map_or_else(|| fallback.to_owned(), |m| m.name.clone())
    }

    /// Human name of rule `i`, as error messages and events show it.
    #[must_use]
    pub fn rule_name(&self, i: usize) -> String {
        match self.deny.get(i) {
            Some(prefix) => format!("files.deny[{i}] {prefix:?}"),
            None => format!("files.deny[{i}]"),
        }
    }
}

/// Whether `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Lexical normalisation of an absolute path: collapses `//`, drops `.`,
/// resolves `..` (never above `/`), strips a trailing slash.
#[must_use]
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_schema() {
        let p = Policy::parse(
            "mode = \"monitor\"\n[files]\ndeny = [\"/etc/shadow\", \"/srv/secret/\"]\n",
            "t",
        )
        .expect("valid");
        assert_eq!(p.mode, Mode::Monitor);
        assert_eq!(p.deny, vec!["/etc/shadow", "/srv/secret"]);
    }

    #[test]
    fn defaults_are_enforce_and_nothing_denied() {
        let p = Policy::parse("", "t").expect("empty policy is valid");
        assert_eq!(p.mode, Mode::Enforce);
        assert!(p.deny.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            Policy::parse("[files]\ndeny = [\"/ok\", \"relative/x\"]\n", "p.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy p.toml:2:16: files.deny[1]: \"relative/x\": must be an absolute path"
        );
        let err = Policy::parse("mode = \"loud\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("enforce"), "{err}");
        let err = Policy::parse("[file]\ndeny = []\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `file`"), "{err}");
        let long = format!("[files]\ndeny = [\"/{}\"]\n", "a".repeat(300));
        let err = Policy::parse(&long, "p.toml").unwrap_err().to_string();
        assert!(
            err.contains("files.deny[0]") && err.contains("247 bytes"),
            "{err}"
        );
    }

    #[test]
    fn deny_matches_at_component_boundaries_and_prefers_the_longest() {
        let p = Policy::parse(
            "[files]\ndeny = [\"/srv\", \"/srv/secret\", \"/etc/shadow\"]\n",
            "t",
        )
        .expect("valid");
        assert_eq!(p.deny_match("/srv/secret/key"), Some(1));
        assert_eq!(p.deny_match("/srv/other"), Some(0));
        assert_eq!(p.deny_match("/srv"), Some(0));
        assert_eq!(p.deny_match("/srvx"), None);
        assert_eq!(p.deny_match("/etc/shadow"), Some(2));
        assert_eq!(p.deny_match("/etc/shadow-"), None);
        assert_eq!(p.rule_name(2), "files.deny[2] \"/etc/shadow\"");
        let root = Policy::parse("[files]\ndeny = [\"/\"]\n", "t").expect("valid");
        assert_eq!(root.deny_match("/anything"), Some(0));
    }

    #[test]
    fn every_shipped_policy_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("policies/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "toml") && !cases::is_cases_file(&path) {
                let p = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!p.deny.is_empty(), "{} denies nothing", path.display());
                assert!(
                    p.metadata.is_some(),
                    "{} is a legacy document",
                    path.display()
                );
                assert!(p.warnings().is_empty(), "{:?}", p.warnings());
                seen += 1;
            }
        }
        assert!(seen > 0, "no policy found in {}", dir.display());
    }

    #[test]
    fn sandbox_errors_name_the_file_and_key() {
        let err = Policy::parse("[sandbox]\nread = [\"x\"]\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "policy p.toml:2:9: sandbox.read[0]: \"x\": must be an absolute path"
        );
        let p = Policy::parse("mode = \"monitor\"\n", "p.toml").expect("valid");
        assert!(
            !p.sandbox.enforce,
            "monitor mode tolerates partial landlock"
        );
        assert_ne!(p.sandbox.uid, 0);
    }

    #[test]
    fn denied_prefixes_inside_writable_grants_are_warned_about() {
        let p = Policy::parse(
            "[files]\ndeny = [\"/srv/w/secret\", \"/etc/x\", \"/tmp/y\"]\n[sandbox]\nwrite = [\"/srv/w\"]\n",
            "p.toml",
        )
        .expect("valid");
        let w: Vec<_> = p
            .warnings()
            .into_iter()
            .filter(|w| w.contains("writable"))
            .collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("files.deny[0]") && w[0].contains("/srv/w"),
            "{w:?}"
        );
    }

    #[test]
    fn normalize_resolves_dots_and_slashes() {
        assert_eq!(normalize("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(normalize("/../../etc"), "/etc");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("//"), "/");
    }
}
