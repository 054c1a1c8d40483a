//! Unmanaged MCP servers: tool servers started on this host outside
//! mcpwarden. The daemon watches every exec on the host (one
//! `sched_process_exec` program, see [`watch`]), reads the command line of
//! each new program, and matches it against the patterns of MCP servers in
//! its settings (`[unmanaged]`). A match that is not one of mcpwarden's own
//! sessions is recorded, alerted on, or killed with its descendants: fleet
//! hosts may allow only managed tool servers. When the watch begins, the
//! processes already running are judged the same way: a server started
//! while no daemon watched (it was stopped, or not yet installed) is found
//! at the next start.
pub mod watch;

use std::{
    collections::{HashSet, VecDeque},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::json;

use crate::policy::expr::glob_match;

/// What a match does (`[unmanaged] action`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// No watching at all (nothing is loaded into the kernel).
    Off,
    /// Logged and put in the event feed.
    Record,
    /// An alert: logged, in the feed and kept with the verdicts.
    #[default]
    Alert,
    /// The process and its descendants get SIGKILL; kept with the verdicts.
    Kill,
}

/// Command lines of MCP servers as they are usually started: by npx or
/// uvx, from the official packages, or as programs named `*-mcp`. A
/// pattern is matched against the whole command line (arguments joined by
/// spaces) with the policy language's [`glob_match`]: `*` stands for any
/// text, `?` for one byte.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*npx *server-*",
    "*npx *mcp*",
    "*uvx mcp-server-*",
    "*uvx *-mcp*",
    "*mcp-server-*",
    "*@modelcontextprotocol/server-*",
    "*-mcp",
    "*-mcp *",
];

/// `[unmanaged]` in the daemon's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub action: Action,
    pub patterns: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            action: Action::default(),
            patterns: DEFAULT_PATTERNS.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

/// How the watcher came upon a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Its exec, while the watcher ran.
    Exec,
    /// Already running when the watcher started (it was started while no
    /// daemon watched, or before this one was installed).
    Start,
}

impl Found {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Start => "start",
        }
    }
}

/// The processes running now, with their real uid: every `/proc/PID`
/// directory whose status can still be read.
#[must_use]
pub fn running() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((pid, uid))
        })
        .collect()
}

/// What the watcher learnt about one new program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub pid: u32,
    pub uid: u32,
    pub exe: String,
    pub cmdline: String,
    /// Index of the first matching pattern.
    pub pattern: usize,
}

/// Reads what `/proc` says of a new program and decides whether it is an
/// unmanaged MCP server.
#[derive(Debug)]
pub struct Judge {
    patterns: Vec<String>,
    /// mcpwarden's own executable: its processes (`run`, the sandbox's
    /// helper) carry a server's command line in their arguments.
    own_exe: Option<PathBuf>,
    /// Processes already reported (a shebang script execs twice: the
    /// interpreter lookup, then the interpreter).
    seen: HashSet<u32>,
    order: VecDeque<u32>,
}

impl Judge {
    const SEEN: usize = 4096;

    #[must_use]
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns,
            own_exe: std::fs::read_link("/proc/self/exe").ok(),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// The sighting, when process `pid` (of uid `uid`) runs a command line
    /// that matches, outside mcpwarden's sessions and is not mcpwarden.
    pub fn look(&mut self, pid: u32, uid: u32) -> Option<Sighting> {
        if self.seen.contains(&pid) {
            return None;
        }
        let proc = PathBuf::from(format!("/proc/{pid}"));
        if managed(&proc) {
            return None;
        }
        let exe = std::fs::read_link(proc.join("exe")).ok()?;
        if self.own_exe.as_deref() == Some(exe.as_path()) {
            return None;
        }
        let raw = std::fs::read(proc.join("cmdline")).ok()?;
        let cmdline = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        if through_mcpwarden(&cmdline) {
            return None;
        }
        let pattern = self
            .patterns
            .iter()
            .position(|p| glob_match(p.as_bytes(), cmdline.as_bytes()))?;
        if self.order.len() == Self::SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(pid);
        self.order.push_back(pid);
        Some(Sighting {
            pid,
            uid,
            exe: exe.display().to_string(),
            cmdline,
            pattern,
        })
    }

    /// Forgets a process (it exited, or was killed).
    pub fn forget(&mut self, pid: u32) {
        if self.seen.remove(&pid) {
            self.order.retain(|&p| p != pid);
        }
    }

    /// The event line for the feed.
    #[must_use]
    pub fn event_line(&self, s: &Sighting, action: &str, found: Found) -> String {
        json!({
            "kind": "unmanaged_server",
            "found": found.as_str(),
            "session": "",
            "unix_ns": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            "pid": s.pid,
            "uid": s.uid,
            "exe": s.exe,
            "cmdline": s.cmdline,
            "rule": format!("unmanaged.patterns[{}] {:?}", s.pattern, self.patterns[s.pattern]),
            "action": action,
        })
        .to_string()
    }
}

/// Whether a command line starts its server through `mcpwarden run` (an
/// MCP client's launcher, a wrapper shell): that server is a session.
fn through_mcpwarden(cmdline: &str) -> bool {
    let words: Vec<&str> = cmdline.split(' ').collect();
    words
        .windows(2)
        .any(|w| w[0].rsplit('/').next() == Some("mcpwarden") && w[1] == "run")
}

/// Whether the process at `proc` lives in one of mcpwarden's session
/// cgroups (its server and everything the server started).
fn managed(proc: &Path) -> bool {
    std::fs::read_to_string(proc.join("cgroup")).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.strip_prefix("0::"))
            .any(|path| path.starts_with("/mcpwarden/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str, text: &str) -> bool {
        glob_match(pattern.as_bytes(), text.as_bytes())
    }

    #[test]
    fn globs_match_whole_command_lines() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(!glob("*-mcp", "github-mcp --stdio"));
        assert!(glob("*-mcp *", "github-mcp --stdio"));
        assert!(glob("**a*b**", "xxaxxbxx"));
        // No exponential blow-up on a hostile pattern.
        let text = "a".repeat(10_000);
        assert!(!glob(&format!("{}b", "*a".repeat(50)), &text));
    }

    #[test]
    fn the_default_patterns_know_the_usual_ways_of_starting_a_server() {
        let d = Settings::default().patterns;
        let hit = |cmdline: &str| d.iter().any(|p| glob(p, cmdline));
        // npx as the kernel shows it after the shebang.
        assert!(hit(
            "node /usr/bin/npx -y @modelcontextprotocol/server-filesystem /home/me"
        ));
        assert!(hit("/root/.local/bin/uvx mcp-server-git --repository ."));
        assert!(hit(
            "node /opt/x/node_modules/.bin/mcp-server-filesystem /srv"
        ));
        assert!(hit(
            "node /opt/x/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
        ));
        assert!(hit("/usr/local/bin/github-mcp"));
        assert!(hit("/usr/local/bin/github-mcp stdio"));
        assert!(through_mcpwarden(
            "sh -c /usr/bin/mcpwarden run --policy p.toml -- npx -y @modelcontextprotocol/server-git"
        ));
        assert!(!through_mcpwarden("npx -y mcp-server-mcpwarden run"));
        for benign in [
            "gcc -O2 -c main.c",
            "git status",
            "npm install",
            "python3 -m http.server",
        ] {
            assert!(!hit(benign), "{benign}");
        }
    }

    #[test]
    fn a_process_is_reported_once_and_mcpwarden_itself_never() {
        let mut j = Judge::new(vec!["*sleep*".into()]);
        // The test binary plays mcpwarden here: its own exe is skipped.
        assert_eq!(j.look(std::process::id(), 0), None);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        // Until the fork has exec'd, the child is this binary.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_or(true, |c| !c.starts_with(b"sleep"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = j.look(pid, 0).expect("matches");
        assert!(s.cmdline.ends_with("sleep 30"), "{}", s.cmdline);
        assert_eq!(j.look(pid, 0), None, "seen already");
        j.forget(pid);
        assert!(j.look(pid, 0).is_some());
        child.kill().expect("kill");
        child.wait().expect("wait");
        let line: serde_json::Value =
            serde_json::from_str(&j.event_line(&s, "alert", Found::Exec)).expect("json");
        assert_eq!(line["kind"], "unmanaged_server");
        assert_eq!(line["rule"], "unmanaged.patterns[0] \"*sleep*\"");
        assert_eq!(line["action"], "alert");
        assert_eq!(line["found"], "exec");
    }

    #[test]
    fn running_lists_this_process_with_its_real_uid() {
        let me = std::process::id();
        let uid = nix::unistd::getuid().as_raw();
        let all = running();
        assert!(
            all.contains(&(me, uid)),
            "{me} (uid {uid}) not in {} processes",
            all.len()
        );
    }
}
