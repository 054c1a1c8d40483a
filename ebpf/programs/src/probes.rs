//! One tiny program per kernel feature. `mcpwarden doctor` loads each one
//! (and attaches some) to learn what this kernel really allows, rather than
//! trusting version numbers or config files.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_send_signal, bpf_task_pt_regs},
    },
    macros::{cgroup_sock_addr, fentry, lsm, map, tracepoint},
    maps::RingBuf,
    programs::{FEntryContext, LsmContext, SockAddrContext, TracePointContext},
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
