//! Judging a kernel event against the policy and writing it as a JSON line.
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::{
    kernel::{EventKind, KernelEvent},
    policy::{Mode, Policy, kernel::kill_call, normalize},
    proxy::tracker::Request,
};

/// What mcpwarden did about an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    Allow,
    /// A deny rule matched in monitor mode.
    Alert,
    /// A deny rule matched in enforce mode: the tree is killed.
    Killed,
    /// A network destination no rule allows: refused with EPERM in the
    /// kernel (the server lives on and sees the error).
    Denied,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Alert => "alert",
            Self::Killed => "killed",
            Self::Denied => "denied",
        }
    }
}

/// The outcome of [`judge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// The deny rule that matched.
    pub rule: Option<usize>,
    /// Who caught it: `kernel` (the tracepoint, before the syscall ran) or
    /// `agent` (user space, after resolving a relative or `..` path).
    pub by: Option<&'static str>,
    /// The path as resolved by user space (absolute, normalised), when it
    /// could be resolved.
    pub path: Option<String>,
}

impl Verdict {
    /// The rule behind the verdict, as events and error data name it: a
    /// deny rule, or the `[kernel] kill` entry of a kill-listed call.
    #[must_use]
    pub fn rule_label(&self, event: &KernelEvent, policy: &Policy) -> Option<String> {
        if let Some(r) = self.rule {
            return Some(policy.rule_name(r));
        }
        if self.action == Action::Allow {
            return None;
        }
        match event.kind {
            EventKind::Connect => Some("network.allow (no rule matches)".into()),
            EventKind::Bind => Some("network.bind (no rule matches)".into()),
            _ => event
                .kill_call()
                .and_then(kill_call)
                .map(|(name, _)| format!("kernel.kill {name:?}")),
        }
    }

    /// One sentence for logs and error messages.
    #[must_use]
    pub fn describe(&self, event: &KernelEvent, policy: &Policy) -> String {
        let path = self
            .path
            .as_deref()
            .or(event.path.as_deref())
            .unwrap_or("?");
        let verb = match event.kind {
            EventKind::Open => "opened",
            EventKind::Exec => "executed",
            EventKind::Connect => "connected to",
            EventKind::Bind => "bound",
            EventKind::Unlink => "removed",
            EventKind::Rename => "renamed",
            EventKind::Mkdir => "made the directory",
            EventKind::Chmod => "changed the mode of",
            EventKind::Chown => "changed the owner of",
            EventKind::Truncate => "truncated",
            EventKind::Symlink => "made the symlink",
            EventKind::Link => "hard-linked",
            EventKind::Fork
            | EventKind::Exit
            | EventKind::Ptrace
            | EventKind::Privilege
            | EventKind::Module
            | EventKind::Bpf
            | EventKind::Memfd
            | EventKind::ExecMemory
            | EventKind::Listen
            | EventKind::Accept
            | EventKind::Accepted
            | EventKind::Send
            | EventKind::Failed => "acted on",
        };
        if let Some(bit) = event.kill_call()
            && self.rule.is_none()
        {
            let (name, what) = kill_call(bit).unwrap_or(("?", "?"));
            let did = match event.call_name() {
                Some(call) => format!("called {call}"),
                None => format!("executed {path:?}"),
            };
            let outcome = if self.action == Action::Killed {
                "killed"
            } else {
                "reported (monitor mode)"
            };
            return format!(
                "the tool server ({} pid {}) {did}: {what}, which kernel.kill {name:?} forbids: {outcome} (policy {}, {} mode)",
                event.comm, event.pid, policy.source, policy.mode
            );
        }
        if event.kind.is_socket() {
            let to = event.addr.as_deref().unwrap_or("?");
            let what = if self.action == Action::Denied {
                "refused with EPERM"
            } else {
                "allowed (monitor mode)"
            };
            let (did, rules) = if event.kind == EventKind::Bind {
                ("bound", "network.bind")
            } else {
                ("connected or sent to", "network.allow")
            };
            return format!(
                "the tool server ({} pid {}) {did} {to}, which no {rules} rule permits: {what} (policy {}, {} mode)",
                event.comm, event.pid, policy.source, policy.mode
            );
        }
        let rule = self
            .rule
            .map_or_else(|| "a deny rule".to_owned(), |r| policy.rule_name(r));
        format!(
            "the tool server ({} pid {}) {verb} {path:?}, denied by {rule} (policy {}, {} mode)",
            event.comm, event.pid, policy.source, policy.mode
        )
    }
}

/// Decides what an event means under `policy`. The kernel has matched the
/// raw path already; user space looks again at the resolved path, which
/// catches relative paths and `..` tricks the raw match cannot see.
#[must_use]
pub fn judge(event: &KernelEvent, policy: &Policy) -> Verdict {
    // A kill-listed call the kernel acted on (an exec from a memfd falls
    // through to the deny rules when it was not acted on as such).
    if event.kill_call().is_some() && event.rule.is_none() {
        let action = match event.action {
            mcpwarden_common::action::KILLED => Action::Killed,
            mcpwarden_common::action::ALERT => Action::Alert,
            _ => Action::Allow,
        };
        if action != Action::Allow || event.kind != EventKind::Exec {
            return Verdict {
                action,
                rule: None,
                by: (action != Action::Allow).then_some("kernel"),
                path: None,
            };
        }
    }
    if event.kind.is_socket() {
        let action = match event.action {
            mcpwarden_common::action::DENIED => Action::Denied,
            mcpwarden_common::action::ALERT => Action::Alert,
            _ => Action::Allow,
        };
        return Verdict {
            action,
            rule: None,
            by: (action != Action::Allow).then_some("kernel"),
            path: None,
        };
    }
    let path = if event.kind.touches_path() {
        event
            .path
            .as_deref()
            .and_then(|p| resolve(p, event, event.fd))
    } else {
        None
    };
    // The destination of a rename or link (and the link of a symlink).
    let path2 = event
        .path2
        .as_deref()
        .and_then(|p| resolve(p, event, event.fd2));
    let matching = |rule: usize| {
        [&path, &path2]
            .into_iter()
            .flatten()
            .find(|p| policy.deny_match(p) == Some(rule))
            .cloned()
    };
    if let Some(rule) = event.rule {
        let action = if event.action == mcpwarden_common::action::KILLED {
            Action::Killed
        } else {
            Action::Alert
        };
        return Verdict {
            action,
            rule: Some(rule as usize),
            by: Some("kernel"),
            path: matching(rule as usize).or(path),
        };
    }
    let denied = [&path, &path2]
        .into_iter()
        .flatten()
        .find_map(|p| Some((policy.deny_match(p)?, p.clone())));
    if let Some((rule, path)) = denied {
        let action = match policy.mode {
            Mode::Enforce => Action::Killed,
            Mode::Monitor => Action::Alert,
        };
        return Verdict {
            action,
            rule: Some(rule),
            by: Some("agent"),
            path: Some(path),
        };
    }
    Verdict {
        action: Action::Allow,
        rule: None,
        by: None,
        path,
    }
}

/// The absolute, normalised form of one of an event's paths, using the
/// process's cwd or the directory `fd` for relative paths (if the process
/// still exists).
fn resolve(path: &str, event: &KernelEvent, fd: i32) -> Option<String> {
    const AT_FDCWD: i32 = -100;
    if path.starts_with('/') {
        return Some(normalize(path));
    }
    if path.is_empty() {
        return None;
    }
    let base = if event.kind == EventKind::Exec || fd == AT_FDCWD {
        format!("/proc/{}/cwd", event.pid)
    } else {
        format!("/proc/{}/fd/{}", event.pid, fd)
    };
    let base = std::fs::read_link(Path::new(&base)).ok()?;
    Some(normalize(&format!("{}/{path}", base.to_string_lossy())))
}

/// Parent of each process of a session, learnt from its fork events (the
/// kernel reports the child's id with the parent's event), so that exec
/// events can name who started the program.
#[derive(Debug, Default)]
pub struct Parents {
    of: std::collections::HashMap<u32, u32>,
}

impl Parents {
    /// At most this many processes are remembered; a session that forks
    /// more starts over (the oldest parents are the least useful).
    const MAX: usize = 65_536;

    /// Learns from a fork, forgets on exit.
    pub fn observe(&mut self, event: &KernelEvent) {
        match event.kind {
            EventKind::Fork => {
                if self.of.len() >= Self::MAX {
                    self.of.clear();
                }
                if let Ok(child) = u32::try_from(event.arg) {
                    self.of.insert(child, event.pid);
                }
            }
            // exit_group ends the whole process, whichever thread calls it.
            EventKind::Exit => {
                self.of.remove(&event.pid);
            }
            _ => {}
        }
    }

    /// The parent of the event's process, when its fork was seen.
    #[must_use]
    pub fn of(&self, event: &KernelEvent) -> Option<u32> {
        self.of.get(&event.pid).copied()
    }
}

/// The fields of privilege and evasion events: the call, its first
/// arguments, its result or error; what a memfd or executable mapping was.
fn call_fields(event: &KernelEvent, o: &mut Map<String, Value>) {
    if let Some(call) = event.call_name() {
        o.insert("call".into(), json!(call));
    }
    if let Some(ret) = event.ret {
        if ret < 0 {
            let errno = nix::errno::Errno::from_raw(i32::try_from(-ret).unwrap_or(0));
            o.insert("error".into(), json!(format!("{errno:?}")));
        } else {
            o.insert("ret".into(), json!(ret));
        }
    }
    match event.kind {
        EventKind::Ptrace | EventKind::Privilege | EventKind::Module | EventKind::Bpf => {
            o.insert(
                "args".into(),
                json!([event.arg, i64::from(event.fd), i64::from(event.fd2)]),
            );
        }
        EventKind::Memfd => {
            o.insert("memfd_flags".into(), json!(event.arg));
        }
        EventKind::ExecMemory => {
            o.insert("prot".into(), json!(event.flags));
            o.insert("length".into(), json!(event.arg));
            if event.fd >= 0 {
                o.insert("fd".into(), json!(event.fd));
                o.insert("from_memfd".into(), json!(true));
            }
        }
        EventKind::Exec if event.flags & mcpwarden_common::EXEC_FROM_MEMFD != 0 => {
            o.insert("from_memfd".into(), json!(true));
        }
        EventKind::Listen => {
            o.insert("fd".into(), json!(event.fd));
            o.insert("backlog".into(), json!(event.arg));
        }
        EventKind::Accept => {
            o.insert("fd".into(), json!(event.fd));
        }
        EventKind::Accepted => {
            o.insert("local_port".into(), json!(event.arg));
        }
        EventKind::Send => {
            o.insert("fd".into(), json!(event.fd));
            if event.flags & mcpwarden_common::send::CONNECTED != 0 {
                o.insert("connected".into(), json!(true));
            }
            o.insert("length".into(), json!(event.arg));
            if let Some(name) = &event.dns {
                o.insert("dns".into(), json!(name));
            }
        }
        _ => {}
    }
}

/// One event as a JSON line for the events file.
#[must_use]
pub fn event_line(
    event: &KernelEvent,
    verdict: &Verdict,
    requests: &[&Request],
    policy: &Policy,
    session: &str,
    realtime_offset_ns: i128,
    ppid: Option<u32>,
) -> String {
    let primary = requests.first();
    let mut o = Map::new();
    o.insert("ts".into(), json!(event.ts_ns));
    o.insert(
        "unix_ns".into(),
        json!((i128::from(event.ts_ns) + realtime_offset_ns) as i64),
    );
    o.insert("session".into(), json!(session));
    o.insert(
        "request_id".into(),
        primary.map_or(Value::Null, |r| r.id.value.clone()),
    );
    o.insert(
        "method".into(),
        primary.map_or(Value::Null, |r| json!(r.method)),
    );
    o.insert(
        "tool".into(),
        primary
            .and_then(|r| r.tool.as_ref())
            .map_or(Value::Null, |t| json!(t)),
    );
    if requests.len() > 1 {
        // Concurrent requests: the event cannot be pinned to one of them.
        o.insert(
            "in_flight".into(),
            Value::Array(requests.iter().map(|r| r.id.value.clone()).collect()),
        );
    }
    o.insert("kind".into(), json!(event.kind.as_str()));
    o.insert("pid".into(), json!(event.pid));
    o.insert("tid".into(), json!(event.tid));
    o.insert("comm".into(), json!(event.comm));
    if let Some(path) = &event.path {
        o.insert("path".into(), json!(path));
    }
    if let Some(resolved) = &verdict.path
        && event.path.as_deref() != Some(resolved.as_str())
    {
        o.insert("resolved_path".into(), json!(resolved));
    }
    if let Some(addr) = &event.addr {
        o.insert("addr".into(), json!(addr));
    }
    if event.kind == EventKind::Open {
        o.insert("flags".into(), json!(event.flags));
    }
    if let Some(path2) = &event.path2 {
        let key = if event.kind == EventKind::Symlink {
            "target"
        } else {
            "to"
        };
        o.insert(key.into(), json!(path2));
    }
    match event.kind {
        EventKind::Fork => o.insert("child".into(), json!(event.arg)),
        EventKind::Exit => o.insert("code".into(), json!(event.arg)),
        EventKind::Mkdir | EventKind::Chmod => {
            o.insert("mode".into(), json!(format!("{:o}", event.arg & 0o7777)))
        }
        EventKind::Chown => o.insert("owner".into(), json!(event.arg as u32)),
        EventKind::Truncate => o.insert("length".into(), json!(event.arg)),
        EventKind::Unlink => o.insert("dir".into(), json!(event.arg & 0x200 != 0)),
        _ => None,
    };
    o.insert("uid".into(), json!(event.uid));
    if event.kind == EventKind::Exec {
        if !event.argv.is_empty() {
            o.insert("argv".into(), json!(event.argv));
        }
        if let Some(ppid) = ppid {
            o.insert("ppid".into(), json!(ppid));
        }
    }
    if event.kind.is_socket() {
        o.insert("family".into(), json!(event.family));
    }
    call_fields(event, &mut o);
    o.insert("action".into(), json!(verdict.action.as_str()));
    o.insert(
        "rule".into(),
        verdict
            .rule_label(event, policy)
            .map_or(Value::Null, Value::String),
    );
    if let Some(by) = verdict.by {
        o.insert("detected_by".into(), json!(by));
    }
    Value::Object(o).to_string()
}

#[cfg(test)]
mod tests {
    use mcpwarden_common::action;
    use serde_json::json;

    use super::*;
    use crate::proxy::{message, tracker::Tracker};

    fn event(kind: EventKind, path: &str) -> KernelEvent {
        KernelEvent {
            ts_ns: 150,
            cgroup_id: 1,
            kind,
            action: action::ALLOW,
            pid: u32::MAX, // no such process: relative paths stay unresolved
            tid: 1,
            comm: "python3".into(),
            path: Some(path.into()),
            addr: None,
            family: 0,
            fd: -100,
            flags: 0,
            rule: None,
            path2: None,
            fd2: -100,
            arg: 0,
            uid: 65534,
            argv: Vec::new(),
            ret: None,
            dns: None,
        }
    }

    fn policy(mode: &str) -> Policy {
        Policy::parse(
            &format!("mode = \"{mode}\"\n[files]\ndeny = [\"/srv/secret\"]\n"),
            "p.toml",
        )
        .expect("valid")
    }

    #[test]
    fn kernel_verdicts_are_kept() {
        let mut e = event(EventKind::Open, "/srv/secret/k");
        e.rule = Some(0);
        e.action = action::KILLED;
        let v = judge(&e, &policy("enforce"));
        assert_eq!(
            (v.action, v.rule, v.by),
            (Action::Killed, Some(0), Some("kernel"))
        );
    }

    #[test]
    fn user_space_catches_dot_dot_paths_the_kernel_cannot() {
        let e = event(EventKind::Open, "/tmp/../srv/secret/k");
        let v = judge(&e, &policy("enforce"));
        assert_eq!(
            (v.action, v.rule, v.by),
            (Action::Killed, Some(0), Some("agent"))
        );
        assert_eq!(v.path.as_deref(), Some("/srv/secret/k"));
        let v = judge(&e, &policy("monitor"));
        assert_eq!(v.action, Action::Alert);
        let v = judge(
            &event(EventKind::Open, "/srv/secretive"),
            &policy("enforce"),
        );
        assert_eq!(v.action, Action::Allow);
        let v = judge(&event(EventKind::Open, "relative"), &policy("enforce"));
        assert_eq!((v.action, v.path), (Action::Allow, None));
    }

    #[test]
    fn mutations_are_judged_like_opens_and_carry_their_details() {
        let mut e = event(EventKind::Rename, "/tmp/../srv/secret/a");
        e.path2 = Some("/srv/other".into());
        let p = policy("enforce");
        let v = judge(&e, &p);
        assert_eq!((v.action, v.by), (Action::Killed, Some("agent")));
        let line: Value =
            serde_json::from_str(&event_line(&e, &v, &[], &p, "s", 0, None)).expect("json");
        assert_eq!(
            (&line["kind"], &line["to"], &line["uid"]),
            (&json!("rename"), &json!("/srv/other"), &json!(65534))
        );
        let mut f = event(EventKind::Chmod, "/data/x");
        f.arg = 0o100_644;
        let line: Value =
            serde_json::from_str(&event_line(&f, &judge(&f, &p), &[], &p, "s", 0, None))
                .expect("json");
        assert_eq!(line["mode"], json!("644"));
        let mut exec = event(EventKind::Exec, "/bin/sh");
        exec.argv = vec!["/bin/sh".into(), "-c".into()];
        let line: Value = serde_json::from_str(&event_line(
            &exec,
            &judge(&exec, &p),
            &[],
            &p,
            "s",
            0,
            Some(42),
        ))
        .expect("json");
        assert_eq!(
            (&line["argv"], &line["ppid"]),
            (&json!(["/bin/sh", "-c"]), &json!(42))
        );
    }

    #[test]
    fn kill_listed_calls_are_judged_by_what_the_kernel_did() {
        let p = policy("enforce");
        let mut e = event(EventKind::Ptrace, "");
        e.path = None;
        e.flags = libc::SYS_ptrace as u32;
        e.ret = Some(-1);
        e.arg = 16;
        e.action = action::KILLED;
        let v = judge(&e, &p);
        assert_eq!((v.action, v.by), (Action::Killed, Some("kernel")));
        assert_eq!(
            v.rule_label(&e, &p).as_deref(),
            Some("kernel.kill \"ptrace\"")
        );
        assert!(v.describe(&e, &p).contains("called ptrace"));
        let line: Value =
            serde_json::from_str(&event_line(&e, &v, &[], &p, "s", 0, None)).expect("json");
        assert_eq!(line["call"], json!("ptrace"));
        assert_eq!(line["error"], json!("EPERM"));
        assert_eq!(line["args"], json!([16, -100, -100]));
        assert_eq!(line["rule"], json!("kernel.kill \"ptrace\""));
        // Not acted on (not in `[kernel] kill`): a plain event.
        e.action = action::ALLOW;
        let v = judge(&e, &p);
        assert_eq!((v.action, v.rule_label(&e, &p)), (Action::Allow, None));
        // An exec from a memfd that was not acted on still meets the deny
        // rules.
        let mut x = event(EventKind::Exec, "/srv/secret/tool");
        x.flags = mcpwarden_common::EXEC_FROM_MEMFD;
        assert_eq!(judge(&x, &p).action, Action::Killed);
        assert_eq!(judge(&x, &p).rule, Some(0));
    }

    #[test]
    fn event_lines_carry_the_request_in_flight() {
        let mut t = Tracker::new();
        let Ok(message::Message::Request { id, method, tool }) = message::parse(
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read_file"}}"#,
        ) else {
            panic!("request")
        };
        t.open(id, method, tool, 100).expect("open");
        let p = policy("enforce");
        let e = event(EventKind::Open, "/data/a.txt");
        let v = judge(&e, &p);
        let line = event_line(&e, &v, &t.at(e.ts_ns), &p, "s1", 1000, None);
        let got: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(got["request_id"], json!(3));
        assert_eq!(got["method"], json!("tools/call"));
        assert_eq!(got["tool"], json!("read_file"));
        assert_eq!(got["kind"], json!("open"));
        assert_eq!(got["path"], json!("/data/a.txt"));
        assert_eq!(got["action"], json!("allow"));
        assert_eq!(got["rule"], Value::Null);
        assert_eq!(got["unix_ns"], json!(1150));
        assert!(got.get("in_flight").is_none());
        let idle = event_line(&e, &v, &[], &p, "s1", 0, None);
        let got: Value = serde_json::from_str(&idle).expect("json");
        assert_eq!(got["request_id"], Value::Null);
    }
}
