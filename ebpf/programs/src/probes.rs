//! One tiny program per kernel feature. `mcpwarden doctor` loads each one
//! (and attaches some) to learn what this kernel really allows, rather than
//! trusting version numbers or config files.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_pass_by_value,
    reason = "the program macros hand the context over by value"
)]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::bpf_send_signal,
    },
    macros::{
        btf_tracepoint, cgroup_sock_addr, fentry, lsm, map, raw_tracepoint, sock_ops, tracepoint,
    },
    maps::{HashMap, ProgramArray, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, LsmContext, RawTracePointContext, SockAddrContext,
        SockOpsContext, TracePointContext,
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

/// Handlers of [`probe_raw_hook`], by syscall number: `mcpwarden doctor`
/// puts [`probe_raw_call`] at getppid's slot.
#[map]
static PROBE_CALLS: ProgramArray = ProgramArray::with_max_entries(512, 0);

/// Raw `sys_enter` tail-calling by the call's number, as the tracer's
/// hooks do.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn probe_raw_hook(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    // SAFETY: the table holds only `probe_raw_call`, which takes this
    // context; control returns only if the slot is empty.
    unsafe { PROBE_CALLS.tail_call(&ctx, id as u32) };
    0
}

/// Reached by tail call: writes `RAW_MARK << 32 | tgid` (8 bytes, where
/// [`probe_ringbuf`] writes 4) to the ring buffer.
#[raw_tracepoint]
pub fn probe_raw_call(_ctx: RawTracePointContext) -> i32 {
    /// Tells the raw path's records from the tracepoint's.
    const RAW_MARK: u64 = 0x7261_7721;
    let tgid = bpf_get_current_pid_tgid() >> 32;
    let _ = PROBE_RING.output::<u64>(&((RAW_MARK << 32) | tgid), 0);
    0
}

/// Attached to a throw-away cgroup: cgroup `sock_addr` hooks work.
#[cgroup_sock_addr(connect4)]
pub fn probe_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

/// The cgroup storage the tracer's `sock_ops` program reads its session
/// from: the probe uses one too, so attaching it proves both.
#[expect(
    deprecated,
    reason = "the tracer's sock_ops program uses the attach-keyed cgroup storage"
)]
#[map]
static PROBE_CGROUP: aya_ebpf::maps::CgroupStorage<u64> = aya_ebpf::maps::CgroupStorage::new();

/// Attached to a throw-away cgroup: cgroup `sock_ops` hooks with cgroup
/// storage work (the tracer's accepted-connection program).
#[sock_ops]
pub fn probe_sock_ops(_ctx: SockOpsContext) -> u32 {
    let storage = PROBE_CGROUP.get_ptr_mut();
    // SAFETY: the storage of the cgroup the program is attached to, valid
    // for the program run.
    unsafe { *storage += 1 };
    1
}

/// BTF-typed raw tracepoint (`tp_btf`) on `sys_exit`: its arguments are
/// typed kernel pointers, read by plain loads rather than helper calls.
#[btf_tracepoint(function = "sys_exit")]
pub fn probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
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

/// Handlers by syscall number for the tail-call hooks below (the bench puts
/// [`hook_tail_check`] at openat's slot), as the tracer's `ENTER_CALLS`.
#[map]
static HOOK_CALLS: ProgramArray = ProgramArray::with_max_entries(512, 0);

/// Raw `sys_enter` dispatching as the tracer does: the call's number,
/// then the cgroup check, then a tail call to the handler (which an
/// outsider never reaches).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn hook_tail_enter(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    if id != NR_OPENAT || hook_check() == 0 {
        return 0;
    }
    // SAFETY: the table holds only `hook_tail_check`, which takes this
    // context; control returns only when the slot is empty.
    unsafe { HOOK_CALLS.tail_call(&ctx, id as u32) };
    0
}

/// Raw `sys_exit`, the same way, with the number from `regs->orig_ax`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn hook_tail_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: a kernel read through the helper, which fails cleanly.
    let id = unsafe { bpf_probe_read_kernel(regs.wrapping_add(15)) }.unwrap_or(u64::MAX);
    if id != NR_OPENAT || hook_check() == 0 {
        return 0;
    }
    // SAFETY: as in `hook_tail_enter`.
    unsafe { HOOK_CALLS.tail_call(&ctx, id as u32) };
    0
}

/// The handler the tail-call hooks would reach for a task in a session.
#[raw_tracepoint]
pub fn hook_tail_check(_ctx: RawTracePointContext) -> i32 {
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
