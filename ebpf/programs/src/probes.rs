//! One tiny program per kernel feature. `mcpwarden doctor` loads each one
//! (and attaches some) to learn what this kernel really allows, rather than
//! trusting version numbers or config files.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_send_signal, bpf_task_pt_regs},
    },
    macros::{cgroup_sock_addr, fentry, lsm, map, raw_tracepoint, tracepoint},
    maps::{HashMap, RingBuf},
    programs::{
        FEntryContext, LsmContext, RawTracePointContext, SockAddrContext, TracePointContext,
    },
};

#[map]
static PROBE_RING: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Attached to `syscalls/sys_enter_getppid`: writes the caller's tgid to the
/// ring buffer, proving tracepoints and ring buffers end to end.
#[tracepoint]
pub fn probe_ringbuf(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = PROBE_RING.output::<u32>(&tgid, 0);
    0
}

/// Loaded only: the verifier accepts `bpf_send_signal` in tracepoints.
#[tracepoint]
pub fn probe_signal(_ctx: TracePointContext) -> u32 {
    // SAFETY: never attached; signal 0 would only check permissions anyway.
    unsafe { bpf_send_signal(0) };
    0
}

/// Loaded only: the verifier accepts reading the current task's saved user
/// registers (needs kernel BTF), as the privilege programs do at syscall
/// exit.
#[tracepoint]
pub fn probe_task_regs(_ctx: TracePointContext) -> u32 {
    // SAFETY: never attached; the pointer is only checked for null.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
    u32::from(regs != 0)
}

/// Attached to a throw-away cgroup: cgroup `sock_addr` hooks work.
#[cgroup_sock_addr(connect4)]
pub fn probe_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

/// BPF-LSM: expected to fail to load on kernels without `bpf` in `lsm=`.
#[lsm(hook = "file_open")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

/// fentry (`tracing` programs): needs BTF and permission to attach.
#[fentry(function = "do_unlinkat")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

// ----------------------------------------------------------- hook cost
// Not feature probes: the kernel_cost bench (part 6) attaches these to
// measure what each kind of syscall hook costs a process outside any
// session, doing what the tracer does first (the cgroup check) and nothing
// else. This map stays empty, so every call takes the outsider's path.

#[map]
static HOOK_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1, 0);

/// openat's number on x86-64.
const NR_OPENAT: u64 = 257;

#[expect(
    clippy::inline_always,
    reason = "each hook program is measured with its check inline, as in the tracer"
)]
#[inline(always)]
fn hook_check() -> u32 {
    // SAFETY: a helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is only tested for presence.
    u32::from(unsafe { HOOK_CGROUPS.get(cgroup) }.is_some())
}

/// `syscalls/sys_enter_openat` or `sys_exit_openat`: the tracer's kind of
/// hook (a perf trace event per syscall).
#[tracepoint]
pub fn hook_tp(_ctx: TracePointContext) -> u32 {
    hook_check()
}

/// Raw `sys_enter` (every syscall of every task): `(regs, id)`.
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macros hand the context over by value"
)]
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn hook_raw_enter(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    if id != NR_OPENAT {
        return 0;
    }
    hook_check() as i32
}

/// Raw `sys_exit`: `(regs, ret)`; the call's number is `regs->orig_ax`,
/// the 16th word of x86-64 `pt_regs`.
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macros hand the context over by value"
)]
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn hook_raw_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: a kernel read through the helper, which fails cleanly.
    let id = unsafe { bpf_probe_read_kernel(regs.wrapping_add(15)) }.unwrap_or(0);
    if id != NR_OPENAT {
        return 0;
    }
    hook_check() as i32
}

/// Raw `sys_enter` doing nothing: what the slow syscall path costs alone.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn hook_raw_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
