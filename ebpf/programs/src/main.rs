//! The session tracer.
//!
//! Two raw syscall hooks hand each traced call to its handler ([`call`]);
//! two sched tracepoints see execs and forks. The current task's cgroup id
//! is looked up in `SESSIONS` once (by the hook, before it dispatches):
//! tasks outside a managed cgroup leave after one hash lookup. For managed
//! tasks the handler fills an [`Event`] in per-CPU scratch memory, checks
//! opened and executed paths against the session's denied prefixes (`DENY`,
//! an LPM trie keyed by session id + path), sends SIGKILL to the task in
//! enforce mode, and copies the event to the `EVENTS` ring buffer.
//!
//! Here: processes, opens and execs. [`files`]: unlink, rename, mkdir,
//! chmod, chown, truncate, symlink and link. [`socket`]: connect, listen, accept, datagram
//! destinations. [`privilege`]: ptrace, ids, modules, bpf, memfds,
//! executable memory (at syscall exit, past seccomp). [`failed`]: refused
//! file, exec and connect calls with their error. [`netpolicy`]: the
//! cgroup `sock_addr` programs that refuse what `[network]` does not allow.
//! [`accepted`]: the cgroup `sock_ops` program that reports the peers of
//! the connections a session's listeners accept.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "BPF-to-BPF calls take at most 5 register arguments and cost verifier states"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "the program macros hand the context over by value"
)]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel_buf,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::bpf_send_signal,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::{RawTracePointContext, TracePointContext},
};
use mcpwarden_common::{
    ARGV_SLOT, ARGV_SLOTS, DENY_PATH_LEN, DROPPED_FULL, DenyKey, DenyRule, EXEC_FROM_MEMFD, Event,
    NO_RULE, NetKey4, NetKey6, NetRule, PATH_LEN, RateState, SESSION_ARMED, SESSION_ENFORCE,
    SessionConfig, action, kind,
};

#[map]
static SESSIONS: HashMap<u64, SessionConfig> = HashMap::with_max_entries(1024, 0);

/// Every live session's denied prefixes (the tracer is shared by the
/// sessions of a process; a trie takes memory per entry, not per slot).
#[map]
static DENY: LpmTrie<DenyKey, DenyRule> = LpmTrie::with_max_entries(16384, 0);

/// 16 MiB, shared by every session of the process: about 46,000 short
/// records (an open) or 27,000 full ones (an exec) of backlog before the
/// kernel drops any.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Events lost because the ring buffer was full.
#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-session, per-CPU token buckets of the rate limit.
#[map]
static RATE: PerCpuHashMap<u32, RateState> = PerCpuHashMap::with_max_entries(1024, 0);

#[map]
static SCRATCH_EVENT: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SCRATCH_KEY: PerCpuArray<Key<DenyKey>> = PerCpuArray::with_max_entries(1, 0);

/// An exec's arguments, from `sys_enter_execve` (keyed by thread id) to
/// `sched_process_exec`. LRU: entries of execs that failed age out.
#[map]
static ARGV: LruHashMap<u32, [[u8; ARGV_SLOT]; ARGV_SLOTS]> = LruHashMap::with_max_entries(1024, 0);

#[map]
static SCRATCH_ARGV: PerCpuArray<[[u8; ARGV_SLOT]; ARGV_SLOTS]> =
    PerCpuArray::with_max_entries(1, 0);

/// Descriptors of the memfds each session created (`privilege::memfd_key`).
/// LRU: a session that makes more forgets its oldest ones.
#[map]
static MEMFDS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

#[map]
static NET4: LpmTrie<NetKey4, NetRule> = LpmTrie::with_max_entries(4096, 0);

#[map]
static NET6: LpmTrie<NetKey6, NetRule> = LpmTrie::with_max_entries(4096, 0);
/// Local addresses a session may bind, IPv4 (same layout as `NET4`).
#[map]
static BIND4: LpmTrie<NetKey4, NetRule> = LpmTrie::with_max_entries(1024, 0);
/// Local addresses a session may bind, IPv6.
#[map]
static BIND6: LpmTrie<NetKey6, NetRule> = LpmTrie::with_max_entries(1024, 0);

pub(crate) const SIGKILL: u32 = 9;
/// `bpf_ringbuf_output` flags (linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes in `EVENTS` past which every event wakes the reader.
const WAKE_AT: u64 = 1 << 22;
const AT_FDCWD: i32 = -100;
pub(crate) const AF_UNIX: u16 = 1;
pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;

mod accepted;
mod call;
use call::Call;
mod failed;
mod files;
mod netpolicy;
mod privilege;
mod socket;

/// Shared start of the programs the syscall hooks do not dispatch (sched
/// tracepoints, cgroup programs): the session of the current task, if any,
/// and the scratch event with its header filled in.
#[inline(always)]
pub(crate) fn begin(event_kind: u32) -> Option<(SessionConfig, &'static mut Event)> {
    // SAFETY: helper without arguments, valid in tracepoint programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is plain data copied out at once.
    let session = *unsafe { SESSIONS.get(cgroup_id) }?;
    fill(cgroup_id, session, event_kind)
}

/// [`begin`] for a handler the syscall hooks tail-called: the hook has
/// just looked the task's session up ([`call::dispatched`]).
#[inline(always)]
pub(crate) fn begin_call(event_kind: u32) -> Option<(SessionConfig, &'static mut Event)> {
    let (cgroup_id, session) = call::dispatched()?;
    fill(cgroup_id, session, event_kind)
}

/// The scratch event with its header filled in for a task of `session`.
#[inline(always)]
fn fill(
    cgroup_id: u64,
    session: SessionConfig,
    event_kind: u32,
) -> Option<(SessionConfig, &'static mut Event)> {
    let event = SCRATCH_EVENT.get_ptr_mut(0)?;
    // SAFETY: per-CPU map memory, valid for the whole program run and not
    // shared with any other program run on this CPU meanwhile.
    let event = unsafe { &mut *event };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helper without arguments.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.cgroup_id = cgroup_id;
    event.kind = event_kind;
    event.action = action::ALLOW;
    event.pid = (pid_tgid >> 32) as u32;
    event.tid = pid_tgid as u32;
    event.rule = NO_RULE;
    event.fd = 0;
    event.flags = 0;
    event.family = 0;
    event.port = 0;
    event.addr = [0; 16];
    event.comm = bpf_get_current_comm().unwrap_or_default();
    event.path[0] = 0;
    event.path2[0] = 0;
    event.arg = 0;
    event.fd2 = AT_FDCWD;
    event.uid = bpf_get_current_uid_gid() as u32;
    event.ret = 0;
    Some((session, event))
}

/// `DENY`'s key is the event's `lookup` and `path` fields, adjacent.
const _: () = assert!(
    core::mem::offset_of!(Event, path) == core::mem::offset_of!(Event, lookup) + 8
        && size_of::<Key<DenyKey>>() == 8 + DENY_PATH_LEN
);

/// The session's denied rule whose prefix the event's path starts with, at
/// a component boundary.
#[inline(always)]
fn deny_rule(session: &SessionConfig, event: &mut Event) -> Option<u32> {
    // The key is built in place: its head in `lookup`, its path the first
    // DENY_PATH_LEN bytes of `path`. The path is NUL-terminated: bytes
    // after the NUL can never match a stored prefix, since stored prefixes
    // contain no NUL.
    event.lookup = [
        ((4 + DENY_PATH_LEN) * 8) as u32,
        u32::from_ne_bytes(session.session.to_be_bytes()),
    ];
    // SAFETY: `Event` is `#[repr(C)]` and `lookup` is followed by `path`
    // (asserted above), so these bytes are a valid `Key<DenyKey>`: plain
    // integers and bytes, alignment 4. The pointer comes from the whole
    // event, which it stays inside.
    let key = unsafe {
        &*core::ptr::from_mut(event)
            .cast::<u8>()
            .add(core::mem::offset_of!(Event, lookup))
            .cast::<Key<DenyKey>>()
    };
    at_boundary(DENY.get(key)?, &event.path)
}

/// The session's denied rule whose prefix `path` starts with: like
/// [`deny_rule`] for a path that is not the event's first (a copy).
#[inline(always)]
fn deny_rule_of(session: &SessionConfig, path: &[u8; PATH_LEN]) -> Option<u32> {
    let key = SCRATCH_KEY.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch memory, exclusive for this program run.
    let key = unsafe { &mut *key };
    key.prefix_len = ((4 + DENY_PATH_LEN) * 8) as u32;
    key.data.session = session.session.to_be_bytes();
    // SAFETY: both buffers are valid kernel memory of at least
    // DENY_PATH_LEN bytes.
    unsafe { bpf_probe_read_kernel_buf(path.as_ptr(), &mut key.data.path) }.ok()?;
    at_boundary(DENY.get(&*key)?, path)
}

/// A matched rule applies only at a component boundary right after its
/// prefix.
#[inline(always)]
fn at_boundary(rule: &DenyRule, path: &[u8; PATH_LEN]) -> Option<u32> {
    let next = path[rule.len as usize & (PATH_LEN - 1)];
    if next != 0 && next != b'/' {
        return None;
    }
    Some(rule.rule)
}

/// Records a denied rule and kills the task in enforce mode.
#[inline(always)]
fn act_on_deny(session: &SessionConfig, event: &mut Event, rule: u32) {
    event.rule = rule;
    kill_or_alert(session, event);
}

/// A verdict: SIGKILL to the current task in enforce mode, an alert in
/// monitor mode.
#[inline(always)]
pub(crate) fn kill_or_alert(session: &SessionConfig, event: &mut Event) {
    if session.flags & SESSION_ENFORCE != 0 {
        event.action = action::KILLED;
        // SAFETY: the helper signals the current task; SIGKILL is valid.
        unsafe { bpf_send_signal(SIGKILL) };
    } else {
        event.action = action::ALERT;
    }
}

/// Looks `event.path` up in the session's denied prefixes and acts on a
/// match.
#[inline(always)]
fn check_deny(session: &SessionConfig, event: &mut Event) {
    if let Some(rule) = deny_rule(session, event) {
        act_on_deny(session, event, rule);
    }
}

/// Whether the session may report one more plain event on this CPU: a
/// token bucket refilled at `session.rate` per second, holding at most one
/// second's worth.
#[inline(always)]
fn within_rate(session: &SessionConfig, now: u64) -> bool {
    if session.rate == 0 {
        return true;
    }
    let rate = u64::from(session.rate);
    let Some(state) = RATE.get_ptr_mut(session.session) else {
        let fresh = RateState {
            tokens: rate - 1,
            last_ns: now,
            dropped: 0,
        };
        let _ = RATE.insert(session.session, fresh, 0);
        return true;
    };
    // SAFETY: per-CPU map value, no other program run on this CPU meanwhile.
    let state = unsafe { &mut *state };
    let elapsed = now.saturating_sub(state.last_ns).min(1_000_000_000);
    let refill = elapsed * rate / 1_000_000_000;
    if refill > 0 {
        state.tokens = (state.tokens + refill).min(rate);
        state.last_ns = now;
    }
    if state.tokens == 0 {
        state.dropped += 1;
        return false;
    }
    state.tokens -= 1;
    true
}

#[inline(always)]
fn count_lost() {
    if let Some(dropped) = DROPPED.get_ptr_mut(DROPPED_FULL) {
        // SAFETY: per-CPU counter, no concurrent writer on this CPU.
        unsafe { *dropped += 1 };
    }
}

#[inline(always)]
pub(crate) fn submit(session: &SessionConfig, event: &Event) {
    let verdict = event.action != action::ALLOW;
    // Left out by the rate limit: counted in the session's bucket.
    if !verdict && !within_rate(session, event.ts_ns) {
        return;
    }
    // Waking the reader for every event costs the traced process a wake-up
    // per syscall. Only verdicts (kill, refusal, alert) wake it at once;
    // plain events wait for the reader's next drain, which comes before any
    // server message is forwarded and at least every few milliseconds.
    // A quarter full also wakes it, so a burst between two drains is
    // collected before the ring overflows.
    let flags = if !verdict && EVENTS.query(BPF_RB_AVAIL_DATA) < WAKE_AT {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    };
    let len = if Event::has_path2(event.kind) {
        size_of::<Event>()
    } else {
        Event::SHORT
    };
    // SAFETY: `len` is at most the size of `*event`, which is valid,
    // initialised memory for the whole program run.
    let record =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(event).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(record, flags).is_err() {
        count_lost();
    }
}

/// An open: the directory descriptor (argument `dfd`, if the call has
/// one), the path (argument `name`) and the flags (argument `flags`).
#[inline(always)]
fn on_open(ctx: &RawTracePointContext, dfd: Option<usize>, name: usize, flags: Option<usize>) {
    let Some((session, event)) = begin_call(kind::OPEN) else {
        return;
    };
    let call = Call::of(ctx);
    event.fd = dfd.map_or(AT_FDCWD, |i| call.int(i));
    if let Some(i) = flags {
        event.flags = call.arg(i) as u32;
    }
    // SAFETY: user pointer read through the fault-tolerant helper.
    if unsafe { bpf_probe_read_user_str_bytes(call.ptr(name), &mut event.path) }.is_err() {
        event.path[0] = 0;
    }
    check_deny(&session, event);
    submit(&session, event);
}

#[raw_tracepoint]
pub fn mcpw_openat(ctx: RawTracePointContext) -> i32 {
    on_open(&ctx, Some(0), 1, Some(2));
    0
}

/// `openat2`: its flags are inside `struct open_how`, not reported.
#[raw_tracepoint]
pub fn mcpw_openat2(ctx: RawTracePointContext) -> i32 {
    on_open(&ctx, Some(0), 1, None);
    0
}

#[raw_tracepoint]
pub fn mcpw_open(ctx: RawTracePointContext) -> i32 {
    on_open(&ctx, None, 0, Some(1));
    0
}

/// Keeps the head of an exec's argv (argument `argv`) for [`mcpw_exec`],
/// managed tasks only.
#[inline(always)]
fn on_execve(ctx: &RawTracePointContext, argv: usize) {
    // The hook dispatches only tasks of a session.
    let Some(buf) = SCRATCH_ARGV.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch memory, exclusive for this program run.
    let buf = unsafe { &mut *buf };
    for slot in buf.iter_mut() {
        slot[0] = 0;
    }
    let argv: *const *const u8 = Call::of(ctx).ptr(argv);
    for (i, slot) in buf.iter_mut().enumerate() {
        // SAFETY: user pointers read through fault-tolerant helpers.
        let Ok(arg) = (unsafe { bpf_probe_read_user(argv.add(i)) }) else {
            break;
        };
        if arg.is_null() {
            break;
        }
        // SAFETY: as above.
        if unsafe { bpf_probe_read_user_str_bytes(arg, slot) }.is_err() {
            slot[0] = 0;
        }
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = ARGV.insert(tid, *buf, 0);
}

#[raw_tracepoint]
pub fn mcpw_execve(ctx: RawTracePointContext) -> i32 {
    on_execve(&ctx, 1);
    0
}

#[raw_tracepoint]
pub fn mcpw_execveat(ctx: RawTracePointContext) -> i32 {
    on_execve(&ctx, 2);
    0
}

#[tracepoint]
pub fn mcpw_exec(ctx: TracePointContext) -> u32 {
    let Some((mut session, event)) = begin(kind::EXEC) else {
        return 0;
    };
    if session.flags & SESSION_ARMED == 0 {
        session.flags |= SESSION_ARMED;
        if let Some(config) = SESSIONS.get_ptr_mut(event.cgroup_id) {
            // SAFETY: map value memory; every writer only sets this bit.
            unsafe { (*config).flags |= SESSION_ARMED };
        }
    }
    // `pid_t old_pid` at offset 16: the thread that called exec.
    // SAFETY: offset from the tracepoint's format file.
    let old_pid = unsafe { ctx.read_at::<i32>(16) }.unwrap_or(0) as u32;
    // SAFETY: the value is copied out at once.
    if let Some(argv) = unsafe { ARGV.get(old_pid) } {
        // SAFETY: map value memory of exactly PATH_LEN bytes.
        if unsafe { bpf_probe_read_kernel_buf(argv.as_ptr().cast::<u8>(), &mut event.path2) }
            .is_err()
        {
            event.path2[0] = 0;
        }
        let _ = ARGV.remove(old_pid);
    }
    // `__data_loc char[] filename` at offset 8: low 16 bits are the offset of
    // the string from the start of the record.
    // SAFETY: offset from the tracepoint's format file.
    if let Ok(loc) = unsafe { ctx.read_at::<u32>(8) } {
        let offset = (loc & 0xffff) as usize;
        // SAFETY: the string lives inside the tracepoint record.
        let src = unsafe { ctx.as_ptr().cast::<u8>().add(offset) };
        // SAFETY: kernel pointer read through the fault-tolerant helper.
        if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut event.path) }.is_err() {
            event.path[0] = 0;
        }
    }
    check_deny(&session, event);
    if event.action == action::ALLOW && privilege::exec_from_memfd(&session, &event.path) {
        event.flags |= EXEC_FROM_MEMFD;
        privilege::act_on_memfd_exec(&session, event);
    }
    submit(&session, event);
    0
}

#[tracepoint]
pub fn mcpw_fork(ctx: TracePointContext) -> u32 {
    let Some((session, event)) = begin(kind::FORK) else {
        return 0;
    };
    // SAFETY: `pid_t child_pid` at offset 20 of sched_process_fork.
    event.arg = i64::from(unsafe { ctx.read_at::<i32>(20) }.unwrap_or(0));
    submit(&session, event);
    0
}

#[raw_tracepoint]
pub fn mcpw_exit(ctx: RawTracePointContext) -> i32 {
    let Some((session, event)) = begin_call(kind::EXIT) else {
        return 0;
    };
    event.arg = (Call::of(&ctx).arg(0) & 0xff) as i64;
    submit(&session, event);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_probe_read_*` and `bpf_send_signal` are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
