//! Privilege and evasion calls: `ptrace`, the `set*id` family, module and
//! `bpf` calls, memfds, memory made executable.
//!
//! The sandbox's seccomp filter refuses most of these calls, and seccomp
//! runs before the `sys_enter` tracepoints (kernel/entry/common.c,
//! `syscall_trace_enter`), so a refused call is invisible there. The
//! `sys_exit` tracepoints still fire for it, with the error in `ret`: that is
//! where these programs attach. Their arguments are no longer in the
//! tracepoint record at exit, so they are read from the task's saved user
//! registers.
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use mcpwarden_common::{Event, PATH_LEN, SESSION_ARMED, SessionConfig, kill, kind};

use crate::{MEMFDS, begin, kill_or_alert, submit};

/// `PROT_EXEC`, `MAP_ANONYMOUS` (asm-generic/mman-common.h).
const PROT_EXEC: u64 = 4;
const MAP_ANONYMOUS: u64 = 0x20;

/// Offset of `dx` in x86-64's `struct pt_regs`; `si` and `di` follow it, so
/// one 24-byte read gives the third, second and first arguments of a call.
/// The layout is the user ABI of `PTRACE_GETREGS` and does not change.
const PT_REGS_DX: usize = 96;

/// The first three arguments of the current task's system call, from its
/// saved user registers.
#[inline(always)]
pub(crate) fn call_args() -> [u64; 3] {
    // SAFETY: helper without arguments; returns the current task.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: `task` is the BTF pointer the helper above returned.
    let regs = unsafe { bpf_task_pt_regs(task) } as usize;
    if regs == 0 {
        return [0; 3];
    }
    // SAFETY: kernel memory read through the fault-tolerant helper.
    match unsafe { bpf_probe_read_kernel((regs + PT_REGS_DX) as *const [u64; 3]) } {
        Ok([dx, si, di]) => [di, si, dx],
        Err(_) => [0; 3],
    }
}

/// The number of the call a `sys_exit` record is about (`int
/// __syscall_nr` at offset 8 of every sys_exit record); `u32::MAX` if
/// unreadable.
#[inline(always)]
pub(crate) fn exit_call(ctx: &TracePointContext) -> u32 {
    // SAFETY: the offset is the same in every sys_exit format file.
    unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1) as u32
}

/// The result in a `sys_exit` record (`long ret` at offset 16).
#[inline(always)]
pub(crate) fn exit_ret(ctx: &TracePointContext) -> Option<i64> {
    // SAFETY: the offset is the same in every sys_exit format file.
    unsafe { ctx.read_at::<i64>(16) }.ok()
}

/// A verdict for a watched call when the session's policy names it in
/// `[kernel] kill`: SIGKILL in enforce mode, an alert in monitor mode.
#[inline(always)]
fn act_on_call(session: &SessionConfig, event: &mut Event, bit: u32) {
    if session.kill & bit != 0 && session.flags & SESSION_ARMED != 0 {
        kill_or_alert(session, event);
    }
}

/// A watched call at its exit: its number, first arguments and result.
#[inline(always)]
fn on_exit(ctx: &TracePointContext, event_kind: u32, bit: u32) {
    let Some((session, event)) = begin(event_kind) else {
        return;
    };
    event.flags = exit_call(ctx);
    event.ret = exit_ret(ctx).unwrap_or(0);
    let [a0, a1, a2] = call_args();
    event.arg = a0 as i64;
    event.fd = a1 as i32;
    event.fd2 = a2 as i32;
    // A change of ids that worked was made with the privilege to make it
    // (the sandbox's own drop to the server's user, for one): only a
    // refused one is an attempt to gain what the task does not have.
    if bit != kill::PRIVILEGE || event.ret < 0 {
        act_on_call(&session, event, bit);
    }
    submit(&session, event);
}

#[tracepoint]
pub fn mcpw_ptrace(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, kind::PTRACE, kill::PTRACE);
    0
}

#[tracepoint]
pub fn mcpw_privilege(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, kind::PRIVILEGE, kill::PRIVILEGE);
    0
}

#[tracepoint]
pub fn mcpw_module(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, kind::MODULE, kill::MODULE);
    0
}

#[tracepoint]
pub fn mcpw_bpf(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, kind::BPF, kill::BPF);
    0
}

/// The `MEMFDS` key of descriptor `fd` in `session`. Keyed by session, not
/// process: a child that inherited the descriptor is recognised too.
#[inline(always)]
pub(crate) fn memfd_key(session: &SessionConfig, fd: u64) -> u64 {
    (u64::from(session.session) << 32) | (fd & 0xffff_ffff)
}

/// `memfd_create` at exit: reported with its name, and its descriptor
/// remembered so an exec or executable mapping of it is recognised.
#[tracepoint]
pub fn mcpw_memfd(ctx: TracePointContext) -> u32 {
    let Some((session, event)) = begin(kind::MEMFD) else {
        return 0;
    };
    event.flags = exit_call(&ctx);
    event.ret = exit_ret(&ctx).unwrap_or(-1);
    let [name, flags, _] = call_args();
    event.arg = flags as i64;
    // SAFETY: user pointer read through the fault-tolerant helper.
    if unsafe { bpf_probe_read_user_str_bytes(name as *const u8, &mut event.path) }.is_err() {
        event.path[0] = 0;
    }
    if event.ret >= 0 {
        let _ = MEMFDS.insert(memfd_key(&session, event.ret as u64), 1, 0);
    }
    submit(&session, event);
    0
}

/// `mprotect` adding `PROT_EXEC`. Everything else leaves before the
/// session lookup.
#[tracepoint]
pub fn mcpw_mprotect(ctx: TracePointContext) -> u32 {
    // SAFETY: `unsigned long prot` at offset 32 of sys_enter_mprotect.
    let prot = unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let Some((session, event)) = begin(kind::EXEC_MEMORY) else {
        return 0;
    };
    event.flags = prot as u32;
    // SAFETY: `size_t len` at offset 24.
    event.arg = unsafe { ctx.read_at::<i64>(24) }.unwrap_or(0);
    event.fd = -1;
    submit(&session, event);
    0
}

/// `mmap` with `PROT_EXEC` of anonymous memory or of a memfd. Mappings of
/// ordinary files (every shared library a program loads) are not reported.
#[tracepoint]
pub fn mcpw_mmap(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from sys_enter_mmap's format: len 24, prot 32,
    // flags 40, fd 48.
    let prot = unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let Some((session, event)) = begin(kind::EXEC_MEMORY) else {
        return 0;
    };
    // SAFETY: as above.
    let flags = unsafe { ctx.read_at::<u64>(40) }.unwrap_or(0);
    // SAFETY: as above.
    let fd = unsafe { ctx.read_at::<u64>(48) }.unwrap_or(u64::MAX);
    let anonymous = flags & MAP_ANONYMOUS != 0;
    // SAFETY: only the presence of the key is used.
    if !anonymous && unsafe { MEMFDS.get(memfd_key(&session, fd)) }.is_none() {
        return 0;
    }
    event.flags = prot as u32;
    // SAFETY: as above.
    event.arg = unsafe { ctx.read_at::<i64>(24) }.unwrap_or(0);
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
