//! The condition language of tool rules (`when = '...'`): a small, typed,
//! side-effect-free expression language, compiled once when the policy
//! loads and evaluated on every call without allocating.
//!
//! ```text
//! tool == "write_file" && !path_under(args.path, "/srv/data")
//! "admin" in agent.roles || agent.uid == 0
//! host_in(args.url, ["example.com", "*.example.org"]) && size(args.body) < 65536
//! session.blocked < 3 && time.hour >= 8 && time.hour < 20
//! ```
//!
//! Values are booleans, integers, numbers, strings and lists. Every name is
//! known at compile time and has a type (`agent.uid` is an integer,
//! `agent.roles` a list of strings), except the call's arguments
//! (`args.NAME`, `args.NAME.FIELD`, `args["NAME"]`) and the agent's
//! attributes (`agent.attrs.NAME`), whose types are only known at run time.
//! A run-time type mismatch, a missing argument or an invalid URL makes the
//! whole condition *undetermined*: a rule that grants (`allow`) does not
//! apply, a rule that stops (`alert`, `block`, `kill`) does (fail closed).
//! See policies/README.md for the full list of names and functions.
mod eval;
mod parse;

use std::fmt;

use serde_json::Value;

pub use eval::{Undetermined, glob_match, path_under, url_host};

/// A compiled condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    root: Node,
    source: String,
}

/// Why a condition does not compile: where (byte offset in the condition)
/// and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at column {}: {message}", offset + 1)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

impl Expr {
    /// Parses and type-checks `source`; the result must be a boolean.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        let root = parse::compile(source)?;
        Ok(Self {
            root,
            source: source.to_owned(),
        })
    }

    /// The condition as written.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition against a call.
    pub fn eval(&self, ctx: &Context<'_>) -> Result<bool, Undetermined> {
        match eval::eval(&self.root, ctx)? {
            eval::Val::Bool(b) => Ok(b),
            _ => Err(Undetermined),
        }
    }
}

/// Who is calling, as far as the host can prove it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agent {
    /// A registered name, or "" for an unknown agent.
    pub name: String,
    /// Unix uid of the client process (-1: unknown).
    pub uid: i64,
    /// Unix gid of the client process (-1: unknown).
    pub gid: i64,
    /// The client's executable ("": unknown).
    pub exe: String,
    /// The registered identity its API token proved ("": none).
    pub identity: String,
    pub roles: Vec<String>,
    pub attrs: std::collections::BTreeMap<String, String>,
}

/// What the session has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Tool calls admitted before this one.
    pub calls: u64,
    /// Calls blocked or killed by policy, PSI or the registry.
    pub blocked: u64,
    /// Alerts recorded.
    pub alerts: u64,
    /// Messages PSI flagged.
    pub flagged: u64,
}

/// Trust scores in [0, 1] (1: fully trusted).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrustScores {
    pub agent: f64,
    pub server: f64,
}

impl Default for TrustScores {
    fn default() -> Self {
        Self {
            agent: 0.5,
            server: 0.5,
        }
    }
}

/// Everything a condition may read about one call.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub tool: &'a str,
    /// The call's `arguments` (Null when it has none).
    pub args: &'a Value,
    pub agent: &'a Agent,
    /// The server's name (the policy's `metadata.name`).
    pub server: &'a str,
    pub session: SessionStats,
    pub trust: TrustScores,
    /// Seconds since the Unix epoch (UTC).
    pub unix_time: i64,
}

/// Static types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Bool,
    Int,
    Num,
    Str,
    List,
    /// Known at run time only (arguments, attributes).
    Dyn,
    /// `agent`, `session`, ...: a prefix, not a value.
    Namespace,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bool => "a boolean",
            Self::Int => "an integer",
            Self::Num => "a number",
            Self::Str => "a string",
            Self::List => "a list",
            Self::Dyn => "an argument value",
            Self::Namespace => "a namespace (such as `agent`)",
        })
    }
}

/// A name the condition reads.
#[derive(Clone, Debug, PartialEq)]
enum Field {
    Tool,
    Server,
    AgentName,
    AgentUid,
    AgentGid,
    AgentExe,
    AgentIdentity,
    AgentRoles,
    AgentAttr(Box<str>),
    SessionCalls,
    SessionBlocked,
    SessionAlerts,
    SessionFlagged,
    TrustAgent,
    TrustServer,
    TimeUnix,
    TimeHour,
    TimeWeekday,
    /// `args` followed by keys (object members or array indexes as text).
    Args(Box<[Box<str>]>),
}

#[derive(Clone, Debug, PartialEq)]
enum Lit {
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Box<str>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    StartsWith,
    EndsWith,
    Contains,
    Matches,
    IMatches,
    PathUnder,
    UrlHost,
    HostIn,
    Size,
    Has,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Lit(Lit),
    List(Box<[Lit]>),
    Field(Field),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    In(Box<Node>, Box<Node>),
    Call(Func, Box<[Node]>),
}

#[cfg(test)]
mod tests;
