//! Decoding the kernel's [`Event`] records.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mcpwarden_common::{ARGV_SLOT, EXEC_FROM_MEMFD, Event, NO_RULE, action, kill, kind, send};

/// What a process did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Executed a program.
    Exec,
    /// Opened a file.
    Open,
    /// Connected a socket.
    Connect,
    /// Created a task.
    Fork,
    /// Exited (`exit_group`).
    Exit,
    /// Removed a file or directory.
    Unlink,
    /// Renamed `path` to `path2`.
    Rename,
    /// Made a directory.
    Mkdir,
    /// Changed a mode.
    Chmod,
    /// Changed an owner.
    Chown,
    /// Truncated a file.
    Truncate,
    /// Made a symlink `path` to `path2`.
    Symlink,
    /// Made a hard link `path2` to `path`.
    Link,
    /// Bound a socket to a local address.
    Bind,
    /// Called `ptrace` or `process_vm_readv`/`writev`.
    Ptrace,
    /// Called a `set*id`, `setgroups` or `capset`.
    Privilege,
    /// Called `init_module`, `finit_module` or `delete_module`.
    Module,
    /// Called `bpf`.
    Bpf,
    /// Created a memfd.
    Memfd,
    /// Made memory executable (`mprotect`, or an anonymous or memfd `mmap`).
    ExecMemory,
    /// Listened on a socket.
    Listen,
    /// Accepted a connection.
    Accept,
    /// A TCP connection to a listener of the session completed its
    /// handshake (seen in the kernel's network stack, not in a task: no
    /// pid).
    Accepted,
    /// Sent a datagram or message to an explicit destination.
    Send,
    /// A file, exec or connect call failed (its error in `ret`), reported
    /// apart when its entry event was not in the same batch.
    Failed,
}

impl EventKind {
    /// The name used in event logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Open => "open",
            Self::Connect => "connect",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::Unlink => "unlink",
            Self::Rename => "rename",
            Self::Mkdir => "mkdir",
            Self::Chmod => "chmod",
            Self::Chown => "chown",
            Self::Truncate => "truncate",
            Self::Symlink => "symlink",
            Self::Link => "link",
            Self::Bind => "bind",
            Self::Ptrace => "ptrace",
            Self::Privilege => "privilege",
            Self::Module => "module",
            Self::Bpf => "bpf",
            Self::Memfd => "memfd",
            Self::ExecMemory => "exec_memory",
            Self::Listen => "listen",
            Self::Accept => "accept",
            Self::Accepted => "accepted",
            Self::Send => "send",
            Self::Failed => "failed",
        }
    }

    /// Whether the event is a system call watched at its exit (its result
    /// is known).
    #[must_use]
    pub fn at_exit(self) -> bool {
        matches!(
            self,
            Self::Ptrace
                | Self::Privilege
                | Self::Module
                | Self::Bpf
                | Self::Memfd
                | Self::Accept
                | Self::Failed
        )
    }

    /// Whether the event is about a socket address (judged by the
    /// `[network]` rules in the kernel).
    #[must_use]
    pub fn is_socket(self) -> bool {
        matches!(
            self,
            Self::Connect | Self::Bind | Self::Accept | Self::Accepted | Self::Send
        )
    }

    /// Whether `path` names a file this call touches (checked against the
    /// denied prefixes like an open).
    #[must_use]
    pub fn touches_path(self) -> bool {
        matches!(
            self,
            Self::Exec
                | Self::Open
                | Self::Unlink
                | Self::Rename
                | Self::Mkdir
                | Self::Chmod
                | Self::Chown
                | Self::Truncate
                | Self::Symlink
                | Self::Link
        )
    }
}

/// A decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    /// `CLOCK_MONOTONIC` ns.
    pub ts_ns: u64,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// What happened.
    pub kind: EventKind,
    /// One of [`mcpwarden_common::action`].
    pub action: u32,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task name.
    pub comm: String,
    /// Path opened or executed, or unix socket path.
    pub path: Option<String>,
    /// `ip:port` of an inet connect.
    pub addr: Option<String>,
    /// Address family of a connect.
    pub family: u16,
    /// Directory fd of an open, or socket fd of a connect.
    pub fd: i32,
    /// Open flags.
    pub flags: u32,
    /// Matched deny rule.
    pub rule: Option<u32>,
    /// Second path (rename and link targets, symlink contents).
    pub path2: Option<String>,
    /// Directory fd of `path2`.
    pub fd2: i32,
    /// The kind's argument: child id, exit code, mode, length, uid<<32|gid.
    pub arg: i64,
    /// Real uid of the task.
    pub uid: u32,
    /// For exec: the head of argv (at most [`mcpwarden_common::ARGV_SLOTS`]
    /// arguments, each cut at [`mcpwarden_common::ARGV_SLOT`] - 1 bytes).
    pub argv: Vec<String>,
    /// The call's result, for calls watched at their exit (a negative
    /// errno when it failed).
    pub ret: Option<i64>,
    /// The name a datagram to port 53 asks about (its DNS question).
    pub dns: Option<String>,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl KernelEvent {
    /// Decodes one ring buffer record; `None` if it is too short or of an
    /// unknown kind.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        // A short record (a kind without `path2`) stops before it: the
        // rest is zeroes.
        let short = match bytes.len() {
            n if n == size_of::<Event>() => false,
            n if n == Event::SHORT => true,
            _ => return None,
        };
        let mut full = [0u8; size_of::<Event>()];
        full[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: a buffer of the size of `Event`, plain old data for which
        // every bit pattern is valid; the read tolerates any alignment.
        let raw: Event = unsafe { std::ptr::read_unaligned(full.as_ptr().cast::<Event>()) };
        if short && Event::has_path2(raw.kind) {
            return None;
        }
        Self::from_raw(&raw)
    }

    /// Converts a raw record.
    #[must_use]
    pub fn from_raw(raw: &Event) -> Option<Self> {
        let kind = match raw.kind {
            kind::EXEC => EventKind::Exec,
            kind::OPEN => EventKind::Open,
            kind::CONNECT => EventKind::Connect,
            kind::FORK => EventKind::Fork,
            kind::EXIT => EventKind::Exit,
            kind::UNLINK => EventKind::Unlink,
            kind::RENAME => EventKind::Rename,
            kind::MKDIR => EventKind::Mkdir,
            kind::CHMOD => EventKind::Chmod,
            kind::CHOWN => EventKind::Chown,
            kind::TRUNCATE => EventKind::Truncate,
            kind::SYMLINK => EventKind::Symlink,
            kind::LINK => EventKind::Link,
            kind::BIND => EventKind::Bind,
            kind::PTRACE => EventKind::Ptrace,
            kind::PRIVILEGE => EventKind::Privilege,
            kind::MODULE => EventKind::Module,
            kind::BPF => EventKind::Bpf,
            kind::MEMFD => EventKind::Memfd,
            kind::EXEC_MEMORY => EventKind::ExecMemory,
            kind::LISTEN => EventKind::Listen,
            kind::ACCEPT => EventKind::Accept,
            kind::ACCEPTED => EventKind::Accepted,
            kind::SEND => EventKind::Send,
            kind::FAILED => EventKind::Failed,
            _ => return None,
        };
        let path = c_string(&raw.path);
        let addr = kind
            .is_socket()
            .then(|| {
                let ip = match raw.family {
                    2 => IpAddr::V4(Ipv4Addr::new(
                        raw.addr[0],
                        raw.addr[1],
                        raw.addr[2],
                        raw.addr[3],
                    )),
                    10 => IpAddr::V6(Ipv6Addr::from(raw.addr)),
                    _ => return None,
                };
                Some(match ip {
                    IpAddr::V4(v4) => format!("{v4}:{}", raw.port),
                    IpAddr::V6(v6) => format!("[{v6}]:{}", raw.port),
                })
            })
            .flatten();
        Some(Self {
            ts_ns: raw.ts_ns,
            cgroup_id: raw.cgroup_id,
            kind,
            action: raw.action,
            pid: raw.pid,
            tid: raw.tid,
            comm: c_string(&raw.comm),
            path: (!path.is_empty()
                || matches!(kind, EventKind::Open | EventKind::Exec)
                || kind.touches_path())
            .then_some(path),
            addr,
            family: raw.family,
            fd: raw.fd,
            flags: raw.flags,
            rule: (raw.rule != NO_RULE).then_some(raw.rule),
            path2: matches!(
                kind,
                EventKind::Rename | EventKind::Symlink | EventKind::Link
            )
            .then(|| c_string(&raw.path2)),
            fd2: raw.fd2,
            arg: raw.arg,
            uid: raw.uid,
            argv: if kind == EventKind::Exec {
                raw.path2
                    .chunks_exact(ARGV_SLOT)
                    .map(c_string)
                    .take_while(|a| !a.is_empty())
                    .collect()
            } else {
                Vec::new()
            },
            ret: kind.at_exit().then_some(raw.ret),
            dns: (kind == EventKind::Send && raw.port == 53)
                .then(|| {
                    let len = usize::try_from(raw.arg).unwrap_or(0).min(raw.path2.len());
                    dns_question(&raw.path2[..len])
                })
                .flatten(),
        })
    }

    /// The `[kernel] kill` entry (a `mcpwarden_common::kill` bit) this
    /// event falls under, if any.
    #[must_use]
    pub fn kill_call(&self) -> Option<u32> {
        match self.kind {
            EventKind::Ptrace => Some(kill::PTRACE),
            EventKind::Privilege => Some(kill::PRIVILEGE),
            EventKind::Module => Some(kill::MODULE),
            EventKind::Bpf => Some(kill::BPF),
            EventKind::Exec if self.flags & EXEC_FROM_MEMFD != 0 => Some(kill::MEMFD_EXEC),
            _ => None,
        }
    }

    /// The name of the system call of an event watched at its exit (its
    /// number is in `flags`).
    #[must_use]
    pub fn call_name(&self) -> Option<&'static str> {
        if self.kind == EventKind::Send {
            return Some(match self.flags & send::CALL {
                send::SENDMSG => "sendmsg",
                send::SENDMMSG => "sendmmsg",
                _ => "sendto",
            });
        }
        if !self.kind.at_exit() {
            return None;
        }
        Some(super::calls::name(i64::from(self.flags as i32)))
    }

    /// The action's name in event logs.
    #[must_use]
    pub fn action_name(&self) -> &'static str {
        match self.action {
            action::KILLED => "killed",
            action::ALERT => "alert",
            _ => "allow",
        }
    }
}

/// The name in the question of a DNS query (RFC 1035 4.1: a 12-byte
/// header, then the name as length-prefixed labels). `None` for anything
/// that is not a well-formed query with one question.
fn dns_question(message: &[u8]) -> Option<String> {
    let header = message.get(..12)?;
    let is_query = header[2] & 0x80 == 0;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if !is_query || questions != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*message.get(at)?);
        if len == 0 {
            break;
        }
        // Compression pointers (0xc0) do not occur in a question's first
        // name; longer labels are invalid.
        if len > 63 {
            return None;
        }
        let label = message.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len;
    }
    (!labels.is_empty()).then(|| labels.join("."))
}

#[cfg(test)]
pub(crate) mod tests {
    use mcpwarden_common::{COMM_LEN, PATH_LEN};

    use super::*;

    pub(crate) fn raw(kind: u32) -> Event {
        Event {
            ts_ns: 5,
            cgroup_id: 9,
            kind,
            action: action::ALLOW,
            pid: 10,
            tid: 11,
            rule: NO_RULE,
            fd: -100,
            flags: 0,
            family: 0,
            port: 0,
            addr: [0; 16],
            comm: [0; COMM_LEN],
            path: [0; PATH_LEN],
            arg: 0,
            fd2: -100,
            uid: 0,
            path2: [0; PATH_LEN],
            ret: 0,
            lookup: [0; 2],
        }
    }

    pub(crate) fn bytes(e: &Event) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data struct with no padding.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(e).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_open_with_a_deny_hit() {
        let mut e = raw(kind::OPEN);
        e.comm[..6].copy_from_slice(b"python");
        e.path[..11].copy_from_slice(b"/etc/secret");
        e.rule = 2;
        e.action = action::KILLED;
        let d = KernelEvent::decode(&bytes(&e)).expect("decodes");
        assert_eq!(d.kind, EventKind::Open);
        assert_eq!(d.comm, "python");
        assert_eq!(d.path.as_deref(), Some("/etc/secret"));
        assert_eq!(d.rule, Some(2));
        assert_eq!(d.action_name(), "killed");
        assert_eq!(d.addr, None);
    }

    #[test]
    fn decodes_inet_connects() {
        let mut e = raw(kind::CONNECT);
        e.family = 2;
        e.port = 8080;
        e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let d = KernelEvent::decode(&bytes(&e)).expect("decodes");
        assert_eq!(d.addr.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(d.path, None);
        e.family = 10;
        e.addr = Ipv6Addr::LOCALHOST.octets();
        let d = KernelEvent::decode(&bytes(&e)).expect("decodes");
        assert_eq!(d.addr.as_deref(), Some("[::1]:8080"));
    }

    #[test]
    fn exec_events_carry_the_head_of_argv() {
        let mut e = raw(kind::EXEC);
        e.path[..7].copy_from_slice(b"/bin/sh");
        e.path2[..7].copy_from_slice(b"/bin/sh");
        e.path2[ARGV_SLOT..ARGV_SLOT + 2].copy_from_slice(b"-c");
        e.path2[2 * ARGV_SLOT..2 * ARGV_SLOT + 6].copy_from_slice(b"exit 7");
        let d = KernelEvent::decode(&bytes(&e)).expect("decodes");
        assert_eq!(d.argv, vec!["/bin/sh", "-c", "exit 7"]);
        assert_eq!(d.path2, None);
    }

    #[test]
    fn exit_calls_carry_their_name_result_and_kill_entry() {
        let mut e = raw(kind::PTRACE);
        e.flags = libc::SYS_ptrace as u32;
        e.ret = -1;
        e.arg = 16; // PTRACE_ATTACH
        e.action = action::KILLED;
        let d = KernelEvent::decode(&bytes(&e)).expect("decodes");
        assert_eq!(d.kind, EventKind::Ptrace);
        assert_eq!(d.call_name(), Some("ptrace"));
        assert_eq!(d.ret, Some(-1));
        assert_eq!(d.kill_call(), Some(kill::PTRACE));
        assert_eq!(d.path, None);
        assert!(!d.kind.touches_path());
        let mut m = raw(kind::MEMFD);
        m.flags = libc::SYS_memfd_create as u32;
        m.path[..5].copy_from_slice(b"stage");
        m.ret = 3;
        let d = KernelEvent::decode(&bytes(&m)).expect("decodes");
        assert_eq!(d.path.as_deref(), Some("stage"));
        assert_eq!((d.ret, d.kill_call()), (Some(3), None));
        let mut x = raw(kind::EXEC);
        x.flags = EXEC_FROM_MEMFD;
        let d = KernelEvent::decode(&bytes(&x)).expect("decodes");
        assert_eq!(
            (d.kill_call(), d.ret, d.call_name()),
            (Some(kill::MEMFD_EXEC), None, None)
        );
    }

    #[test]
    fn dns_questions_are_read_from_datagrams_to_port_53() {
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        let mut e = raw(kind::SEND);
        e.family = 2;
        e.port = 53;
        e.arg = query.len() as i64;
        e.path2[..query.len()].copy_from_slice(&query);
        let d = KernelEvent::decode(&bytes(&e)).expect("decodes");
        assert_eq!(d.dns.as_deref(), Some("example.com"));
        assert_eq!(d.addr.as_deref(), Some("0.0.0.0:53"));
        // Cut short, an answer, or another port: no name.
        assert_eq!(dns_question(&query[..15]), None);
        let mut answer = query.clone();
        answer[2] |= 0x80;
        assert_eq!(dns_question(&answer), None);
        e.port = 5353;
        assert_eq!(KernelEvent::decode(&bytes(&e)).expect("decodes").dns, None);
    }

    #[test]
    fn short_records_are_kinds_without_a_second_path() {
        let mut open = raw(kind::OPEN);
        open.path[..4].copy_from_slice(b"/nop");
        let short = &bytes(&open)[..Event::SHORT];
        let d = KernelEvent::decode(short).expect("a short open decodes");
        assert_eq!(d.path.as_deref(), Some("/nop"));
        // An exec's argv is in the part a short record leaves out.
        assert!(KernelEvent::decode(&bytes(&raw(kind::EXEC))[..Event::SHORT]).is_none());
        assert!(KernelEvent::decode(&bytes(&open)[..Event::SHORT - 8]).is_none());
    }

    #[test]
    fn sends_name_their_call() {
        let mut e = raw(kind::SEND);
        let call = |e: &Event| KernelEvent::decode(&bytes(e)).expect("decodes").call_name();
        assert_eq!(call(&e), Some("sendto"));
        e.flags = send::SENDMSG;
        assert_eq!(call(&e), Some("sendmsg"));
        e.flags = send::SENDMMSG | send::CONNECTED;
        assert_eq!(call(&e), Some("sendmmsg"));
        assert_eq!(call(&raw(kind::OPEN)), None, "entry events have no call");
    }

    #[test]
    fn rejects_short_records_and_unknown_kinds() {
        let e = raw(kind::EXEC);
        assert!(KernelEvent::decode(&bytes(&e)[..10]).is_none());
        assert!(KernelEvent::decode(&bytes(&raw(99))).is_none());
    }
}
