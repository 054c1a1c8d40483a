//! Evasion: memory made executable, and programs run from a memfd.
//!
//! The privilege calls (`ptrace`, the `set*id` family, module and `bpf`
//! calls) and `memfd_create` are not seen here: the sandbox's seccomp
//! filter hands them to the agent (`agent/src/kernel/notify.rs`), which
//! records them, answers them, and puts each memfd it makes for a session
//! in `MEMFDS` before the process gets its descriptor.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use mcpwarden_common::{Event, PATH_LEN, SESSION_ARMED, SessionConfig, kill, kind};

use crate::{MEMFDS, begin_call, call::Call, kill_or_alert, submit};

/// `PROT_EXEC`, `MAP_ANONYMOUS` (asm-generic/mman-common.h).
const PROT_EXEC: u64 = 4;
const MAP_ANONYMOUS: u64 = 0x20;

/// A verdict for a watched call when the session's policy names it in
/// `[kernel] kill`: SIGKILL in enforce mode, an alert in monitor mode.
#[inline(always)]
fn act_on_call(session: &SessionConfig, event: &mut Event, bit: u32) {
    if session.kill & bit != 0 && session.flags & SESSION_ARMED != 0 {
        kill_or_alert(session, event);
    }
}

/// The `MEMFDS` key of descriptor `fd` (a call argument) in `session`.
#[inline(always)]
fn memfd_key(session: &SessionConfig, fd: u64) -> u64 {
    mcpwarden_common::memfd_key(session.session, fd as u32)
}

/// `mprotect(addr, len, prot)` adding `PROT_EXEC`. Everything else leaves
/// before the session lookup.
#[raw_tracepoint]
pub fn mcpw_mprotect(ctx: RawTracePointContext) -> i32 {
    let call = Call::of(&ctx);
    let prot = call.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let Some((session, event)) = begin_call(kind::EXEC_MEMORY) else {
        return 0;
    };
    event.flags = prot as u32;
    event.arg = call.arg(1) as i64;
    event.fd = -1;
    submit(&session, event);
    0
}

/// `mmap(addr, len, prot, flags, fd, off)` with `PROT_EXEC` of anonymous
/// memory or of a memfd. Mappings of ordinary files (every shared library
/// a program loads) are not reported.
#[raw_tracepoint]
pub fn mcpw_mmap(ctx: RawTracePointContext) -> i32 {
    let call = Call::of(&ctx);
    let prot = call.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let Some((session, event)) = begin_call(kind::EXEC_MEMORY) else {
        return 0;
    };
    let flags = call.arg(3);
    let fd = call.arg(4);
    let anonymous = flags & MAP_ANONYMOUS != 0;
    // SAFETY: only the presence of the key is used.
    if !anonymous && unsafe { MEMFDS.get(memfd_key(&session, fd)) }.is_none() {
        return 0;
    }
    event.flags = prot as u32;
    event.arg = call.arg(1) as i64;
    event.fd = if anonymous { -1 } else { fd as i32 };
    event.fd2 = flags as i32;
    submit(&session, event);
    0
}

/// Whether an exec's filename names a descriptor (`/dev/fd/N`, as the
/// kernel names an `execveat` of a descriptor, or `/proc/self/fd/N`) that
/// is one of the session's memfds.
#[inline(always)]
pub(crate) fn exec_from_memfd(session: &SessionConfig, path: &[u8; PATH_LEN]) -> bool {
    const DEV_FD: &[u8] = b"/dev/fd/";
    const PROC_FD: &[u8] = b"/proc/self/fd/";
    let start = if path[..DEV_FD.len()] == *DEV_FD {
        DEV_FD.len()
    } else if path[..PROC_FD.len()] == *PROC_FD {
        PROC_FD.len()
    } else {
        return false;
    };
    let mut fd: u64 = 0;
    let mut i = 0;
    while i < 10 {
        let c = path[(start + i) & (PATH_LEN - 1)];
        if c == 0 {
            break;
        }
        if !c.is_ascii_digit() {
            return false;
        }
        fd = fd * 10 + u64::from(c - b'0');
        i += 1;
    }
    // SAFETY: only the presence of the key is used.
    i > 0 && unsafe { MEMFDS.get(memfd_key(session, fd)) }.is_some()
}

/// Verdict on an exec from a memfd, when `[kernel] kill` names it.
#[inline(always)]
pub(crate) fn act_on_memfd_exec(session: &SessionConfig, event: &mut Event) {
    act_on_call(session, event, kill::MEMFD_EXEC);
}
