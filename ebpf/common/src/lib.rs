//! Types shared by the kernel programs (`mcpwarden-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps
//! and the ring buffer, user space reads it back byte for byte.
#![no_std]

/// Bytes of a path carried in an [`Event`] (including the terminating NUL).
pub const PATH_LEN: usize = 256;
/// Arguments of an exec carried in [`Event::path2`]: this many slots...
pub const ARGV_SLOTS: usize = 4;
/// ...of this many bytes each (NUL-terminated, cut if longer).
pub const ARGV_SLOT: usize = PATH_LEN / ARGV_SLOTS;

/// Bytes of a task's `comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of path data in a [`DenyKey`] after the 4-byte session id.
pub const DENY_PATH_LEN: usize = 248;

/// Names of the maps, as the kernel object declares them.
pub mod maps {
    /// `HashMap<u64 cgroup id, SessionConfig>`: the cgroups mcpwarden manages.
    pub const SESSIONS: &str = "SESSIONS";
    /// `LpmTrie<DenyKey, DenyRule>`: denied path prefixes per session.
    pub const DENY: &str = "DENY";
    /// `RingBuf` of [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<u64>`: events lost, at [`crate::DROPPED_FULL`] (ring
    /// buffer full). What a rate limit leaves out is counted per session,
    /// in [`crate::RateState`].
    pub const DROPPED: &str = "DROPPED";
    /// `PerCpuHashMap<u32 session, RateState>`: rate limit buckets.
    pub const RATE: &str = "RATE";
    /// Cgroup storage of `u64`: the cgroup id each attachment of
    /// [`crate::ACCEPTED_PROGRAM`] serves.
    pub const ACCEPT_CGROUP: &str = "ACCEPT_CGROUP";
    /// `LpmTrie<NetKey4, NetRule>`: allowed IPv4 destinations per session.
    pub const NET4: &str = "NET4";
    /// `LpmTrie<NetKey6, NetRule>`: allowed IPv6 destinations per session.
    pub const NET6: &str = "NET6";
    /// `LpmTrie<NetKey4, NetRule>`: local IPv4 addresses a session may bind.
    pub const BIND4: &str = "BIND4";
    /// `LpmTrie<NetKey6, NetRule>`: local IPv6 addresses a session may bind.
    pub const BIND6: &str = "BIND6";
    /// `LruHashMap<u64, u32>` keyed by [`crate::memfd_key`]: memfds made for
    /// a session's processes, so an exec or executable mapping of one is
    /// recognised.
    pub const MEMFDS: &str = "MEMFDS";
    /// `LruHashMap<u64 tgid << 32 | fd, DnsPeer>`: sockets a session's
    /// processes connected to port 53, so a send without an address on one
    /// (how glibc's resolver sends its queries) shows its question.
    pub const DNS_PEERS: &str = "DNS_PEERS";
    /// `ProgramArray`: the handler of each call traced at entry, by number.
    pub const ENTER_CALLS: &str = "ENTER_CALLS";
    /// `ProgramArray`: the handler of each call traced at exit, by number.
    pub const EXIT_CALLS: &str = "EXIT_CALLS";
}

/// The host-wide exec watcher (`mcpwarden-watch`): its program, attached to
/// `sched/sched_process_exec`, and its ring buffer of [`HostExec`].
pub mod watch {
    /// The program.
    pub const PROGRAM: &str = "mcpw_hostexec";
    /// `RingBuf` of [`crate::HostExec`].
    pub const EXECS: &str = "HOST_EXECS";
    /// `PerCpuArray<u64>`: execs not reported because the ring was full.
    pub const DROPPED: &str = "HOST_DROPPED";
}

/// One exec anywhere on the host, for the unmanaged-server watcher.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostExec {
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// Process id.
    pub pid: u32,
    /// Real uid.
    pub uid: u32,
}

/// cgroup `sock_addr` programs, attached to a session's cgroup when its
/// policy has a `[network]` table: (program, hook). They return EPERM to
/// `connect`/`sendto` towards a destination no `allow` rule names, and to
/// `bind` of a local address no `bind` rule names.
pub const SOCK_PROGRAMS: &[(&str, &str)] = &[
    ("mcpw_conn4", "connect4"),
    ("mcpw_conn6", "connect6"),
    ("mcpw_send4", "sendmsg4"),
    ("mcpw_send6", "sendmsg6"),
    ("mcpw_bind4", "bind4"),
    ("mcpw_bind6", "bind6"),
];

/// The cgroup `sock_ops` program attached to every session's cgroup: it
/// reports the peers of the connections the session's listeners accept.
pub const ACCEPTED_PROGRAM: &str = "mcpw_accepted";

/// Ports one [`NetRule`] can list.
pub const NET_PORTS: usize = 8;

/// Key of the `NET4` trie: session id, then the IPv4 address (network
/// order), so a lookup finds the longest allowed prefix of that session.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey4 {
    /// Session id, big endian.
    pub session: [u8; 4],
    /// Address bytes.
    pub addr: [u8; 4],
}

/// Key of the `NET6` trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey6 {
    /// Session id, big endian.
    pub session: [u8; 4],
    /// Address bytes.
    pub addr: [u8; 16],
}

/// Value of the `NET4`/`NET6` tries: which ports of the prefix are allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// Index of the rule in the policy's `[network] allow` list.
    pub rule: u32,
    /// Non-zero: every port.
    pub any_port: u32,
    /// Allowed ports (host order); unused slots are 0.
    pub ports: [u16; NET_PORTS],
}

/// Programs attached to tracepoints that are not syscall hooks (their cost
/// falls on the event itself, not on every syscall): (program, category,
/// tracepoint).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("mcpw_exec", "sched", "sched_process_exec"),
    ("mcpw_fork", "sched", "sched_process_fork"),
];

/// The two syscall hooks, on raw `sys_enter` and `sys_exit`: (program, raw
/// tracepoint). Each tail-calls the handler of the call's number in
/// [`maps::ENTER_CALLS`] or [`maps::EXIT_CALLS`]; the agent names the
/// handlers and their calls.
pub const SYSCALL_HOOKS: &[(&str, &str)] = &[
    ("mcpw_sys_enter", "sys_enter"),
    ("mcpw_sys_exit", "sys_exit"),
];

/// Slots of the handler tables: past every syscall number (x86-64's reach
/// about 470).
pub const CALL_SLOTS: u32 = 512;
/// Words of the bitmaps of traced calls (`ENTER_TRACED`, `EXIT_TRACED`):
/// one bit per slot.
pub const CALL_WORDS: usize = CALL_SLOTS as usize / 64;

/// The `MEMFDS` key of descriptor `fd` in session `session`. Keyed by
/// session, not process: a child that inherited the descriptor is
/// recognised too.
#[must_use]
pub const fn memfd_key(session: u32, fd: u32) -> u64 {
    ((session as u64) << 32) | fd as u64
}

/// The bitmap globals the agent sets at load: which calls have a handler at
/// entry, and at exit.
pub const ENTER_TRACED: &str = "ENTER_TRACED";
/// See [`ENTER_TRACED`].
pub const EXIT_TRACED: &str = "EXIT_TRACED";

/// What happened, as [`Event::kind`].
pub mod kind {
    /// A process of the session called `execve` (successfully).
    pub const EXEC: u32 = 1;
    /// A process of the session asked to open a file.
    pub const OPEN: u32 = 2;
    /// A process of the session asked to connect a socket.
    pub const CONNECT: u32 = 3;
    /// A task of the session created a task (`arg`: the child's id).
    pub const FORK: u32 = 4;
    /// A process of the session called `exit_group` (`arg`: the code).
    pub const EXIT: u32 = 5;
    /// Unlink of `path` (`arg`: 1 when it removes a directory).
    pub const UNLINK: u32 = 6;
    /// Rename of `path` to `path2`.
    pub const RENAME: u32 = 7;
    /// Mkdir of `path` (`arg`: mode).
    pub const MKDIR: u32 = 8;
    /// Chmod of `path` (`arg`: mode).
    pub const CHMOD: u32 = 9;
    /// Chown of `path` (`arg`: uid << 32 | gid).
    pub const CHOWN: u32 = 10;
    /// Truncate of `path` (`arg`: length).
    pub const TRUNCATE: u32 = 11;
    /// Symlink `path` pointing at `path2`.
    pub const SYMLINK: u32 = 12;
    /// Hard link `path2` to `path`.
    pub const LINK: u32 = 13;
    /// A process of the session asked to bind a socket to a local address.
    pub const BIND: u32 = 14;
    /// `ptrace`, `process_vm_readv` or `process_vm_writev` (`flags`: the
    /// call's number; `arg`, `fd`, `fd2`: its first three arguments; `ret`).
    pub const PTRACE: u32 = 15;
    /// A change of ids or capabilities: the `set*id` family, `setgroups`,
    /// `capset` (same fields as [`PTRACE`]).
    pub const PRIVILEGE: u32 = 16;
    /// `init_module`, `finit_module` or `delete_module` (same fields).
    pub const MODULE: u32 = 17;
    /// The `bpf` call (`arg`: its command; same fields).
    pub const BPF: u32 = 18;
    /// `memfd_create` (`path`: the name; `arg`: its flags; `ret`: the fd).
    pub const MEMFD: u32 = 19;
    /// Memory made executable: `mprotect` adding `PROT_EXEC`, or an
    /// anonymous or memfd `mmap` with it (`arg`: length; `flags`: prot;
    /// `fd`: the mapped fd or -1; `fd2`: the mmap flags).
    pub const EXEC_MEMORY: u32 = 20;
    /// `listen` (`fd`; `arg`: backlog).
    pub const LISTEN: u32 = 21;
    /// A connection accepted (`fd`: the listening socket; `ret`: the new
    /// one; the peer's address like a connect's).
    pub const ACCEPT: u32 = 22;
    /// A datagram or message sent to an explicit destination (`sendto`,
    /// `sendmsg`, `sendmmsg`: the first two messages; the address like a
    /// connect's; `arg`: its length, of the first buffer for the msg
    /// calls; `flags`: [`crate::send`] bits), or without one on a socket
    /// connected to port 53. To port 53, `path2` holds the head of the
    /// payload (the DNS question).
    pub const SEND: u32 = 23;
    /// A watched call failed (`flags`: its number; `ret`: the error;
    /// `path`: the path it was given, or the unix socket of a connect).
    pub const FAILED: u32 = 24;
    /// A TCP connection to a session's listening socket completed its
    /// handshake, seen by the session cgroup's `sock_ops` program, not in
    /// a task's context: `pid`, `tid`, `comm` and `uid` are 0. The peer's
    /// address like a connect's; `arg`: the local port.
    pub const ACCEPTED: u32 = 25;
}

/// `Event::flags` bit of an exec: the program came from a memfd (a file
/// that exists only in memory), through `/dev/fd/N` or `/proc/self/fd/N`.
pub const EXEC_FROM_MEMFD: u32 = 1;

/// `Event::flags` of a send: the call, and whether the destination is the
/// socket's connected peer.
pub mod send {
    /// `sendto` (and `send`, which is `sendto` without an address).
    pub const SENDTO: u32 = 0;
    /// `sendmsg`.
    pub const SENDMSG: u32 = 1;
    /// `sendmmsg`.
    pub const SENDMMSG: u32 = 2;
    /// The bits that name the call.
    pub const CALL: u32 = 0xff;
    /// No address was given: the destination is the peer the socket was
    /// connected to (port 53 only).
    pub const CONNECTED: u32 = 0x100;
}

/// A socket a session's process connected to port 53: the value of
/// `DNS_PEERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsPeer {
    /// The session (a recycled pid of another session does not match).
    pub session: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// IPv4 (first 4 bytes) or IPv6 address.
    pub addr: [u8; 16],
}

/// `SessionConfig::kill` bits: which evasion and privilege calls are a
/// verdict (SIGKILL in enforce mode, an alert in monitor mode) rather than
/// a plain event.
pub mod kill {
    /// `ptrace` and `process_vm_readv`/`writev`.
    pub const PTRACE: u32 = 1;
    /// The `set*id` family, `setgroups`, `capset`, when the kernel refused
    /// the change (one that worked was made with the privilege to make it).
    pub const PRIVILEGE: u32 = 2;
    /// Loading or removing a kernel module.
    pub const MODULE: u32 = 4;
    /// The `bpf` call.
    pub const BPF: u32 = 8;
    /// Executing a program from a memfd.
    pub const MEMFD_EXEC: u32 = 16;
}

/// What the kernel did about it, as [`Event::action`].
pub mod action {
    /// Nothing: the event is only reported.
    pub const ALLOW: u32 = 0;
    /// A deny rule matched in monitor mode: reported, not stopped.
    pub const ALERT: u32 = 1;
    /// A deny rule matched in enforce mode: SIGKILL sent from the kernel.
    pub const KILLED: u32 = 2;
    /// A network destination no rule allows, refused with EPERM.
    pub const DENIED: u32 = 3;
}

/// `SessionConfig::flags` bit: deny rules kill instead of alerting.
pub const SESSION_ENFORCE: u32 = 1;
/// `SessionConfig::flags` bit: the session has a network policy; its inet
/// connects are reported (and judged) by the `sock_addr` programs.
pub const SESSION_NET_POLICY: u32 = 2;
/// `SessionConfig::flags` bit, set by the kernel programs at the session's
/// first exec (the server's): from then on `kill`-listed calls are
/// verdicts. Before it, the sandbox sets itself up in the cgroup (it drops
/// root, then proves it cannot take it back), which is reported only.
pub const SESSION_ARMED: u32 = 4;

/// Per managed cgroup settings, the value of the `SESSIONS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionConfig {
    /// Session number, also the first 4 bytes (big endian) of [`DenyKey`].
    pub session: u32,
    /// `SESSION_*` bits.
    pub flags: u32,
    /// Plain events (no verdict) per second each CPU may report for this
    /// session; 0: no limit. Verdicts (kills, refusals, alerts) are never
    /// limited.
    pub rate: u32,
    /// [`kill`] bits.
    pub kill: u32,
}

/// A session's token bucket on one CPU, the value of the `RATE` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Events that may still be reported.
    pub tokens: u64,
    /// When the bucket was last refilled (`bpf_ktime_get_ns`).
    pub last_ns: u64,
    /// Plain events this session left out on this CPU (over the limit).
    pub dropped: u64,
}

/// Index of `DROPPED`: events lost because the ring buffer was full.
pub const DROPPED_FULL: u32 = 0;

/// Key of the `DENY` trie: a session id followed by a path prefix, so one
/// trie serves every session and a lookup finds the longest denied prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyKey {
    /// Session id, big endian so it is the first bits matched.
    pub session: [u8; 4],
    /// Path bytes; a lookup key is NUL-terminated.
    pub path: [u8; DENY_PATH_LEN],
}

/// Value of the `DENY` trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyRule {
    /// Index of the rule in the policy's `[files] deny` list.
    pub rule: u32,
    /// Index of the path byte that must be NUL or `/` for the rule to apply:
    /// the prefix length without a trailing slash (0 for `/`). So
    /// `/etc/secret` denies `/etc/secret` and `/etc/secret/x` but not
    /// `/etc/secretive`.
    pub len: u32,
}

/// `Event::rule` when no rule matched.
pub const NO_RULE: u32 = u32::MAX;

/// One kernel event, written to the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: `CLOCK_MONOTONIC` in nanoseconds.
    pub ts_ns: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// One of [`action`].
    pub action: u32,
    /// Thread group id (the process id user space sees).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Matched deny rule index, or [`NO_RULE`].
    pub rule: u32,
    /// `openat` directory fd (`AT_FDCWD` = -100), or the socket fd of a connect.
    pub fd: i32,
    /// Open flags for open events.
    pub flags: u32,
    /// Address family for connect events.
    pub family: u16,
    /// Port (host byte order) for inet connects.
    pub port: u16,
    /// IPv4 (first 4 bytes) or IPv6 address for inet connects.
    pub addr: [u8; 16],
    /// `comm` of the task, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The kind's argument (see [`kind`]).
    pub arg: i64,
    /// Directory fd for `path2` (`AT_FDCWD` = -100).
    pub fd2: i32,
    /// Real uid of the task.
    pub uid: u32,
    /// The call's return value, for events taken at syscall exit (a
    /// negative errno when it failed); 0 for the others.
    pub ret: i64,
    /// Scratch for the kernel programs, meaningless to a reader: the head
    /// of a `DENY` lookup key (prefix length, session), so that with the
    /// path right after it the key is built in place, without a copy.
    pub lookup: [u32; 2],
    /// Path opened or executed, or the unix socket path; NUL-terminated.
    pub path: [u8; PATH_LEN],
    /// Second path: rename and link targets, symlink contents; for exec,
    /// the first [`ARGV_SLOTS`] arguments in slots of [`ARGV_SLOT`] bytes;
    /// for a send to port 53, the head of the datagram. Last, so a record
    /// of a kind without it ends before it ([`Event::SHORT`]).
    pub path2: [u8; PATH_LEN],
}

impl Event {
    /// Bytes of a record whose kind has no `path2`: the ring keeps 256
    /// fewer bytes per event (an open, a connect, a fork...). A reader
    /// takes the missing tail as zeroes.
    pub const SHORT: usize = core::mem::offset_of!(Event, path2);

    /// Whether events of `kind` use `path2`.
    #[must_use]
    pub const fn has_path2(kind: u32) -> bool {
        matches!(
            kind,
            kind::EXEC | kind::RENAME | kind::SYMLINK | kind::LINK | kind::SEND
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays; every bit pattern
    // is valid and there is no padding the kernel could leave uninitialised
    // in a way that matters to a reader of integers.
    unsafe impl aya::Pod for super::SessionConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HostExec {}
    // SAFETY: as above, three u64.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: as above, 24 bytes without padding.
    unsafe impl aya::Pod for super::DnsPeer {}
}

#[cfg(test)]
mod tests {
    use super::{DenyKey, Event, PATH_LEN};

    #[test]
    fn layouts_match_what_the_kernel_side_assumes() {
        // The LPM trie data size is capped at 256 bytes by the kernel.
        assert_eq!(core::mem::size_of::<DenyKey>(), 252);
        // Event size is what the ring buffer reserves; keep it 8-aligned.
        assert_eq!(core::mem::size_of::<Event>() % 8, 0);
        assert_eq!(
            core::mem::size_of::<Event>(),
            8 + 8 + 4 * 7 + 2 + 2 + 16 + 16 + 8 + 4 + 4 + 8 + 8 + PATH_LEN + PATH_LEN
        );
        // The deny check builds its trie key in place: `lookup`, then the
        // path's first bytes.
        assert_eq!(
            core::mem::offset_of!(Event, path),
            core::mem::offset_of!(Event, lookup) + 8
        );
    }
}
