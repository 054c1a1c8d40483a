//! The unmanaged-server watcher: every exec on the host, as (cgroup id,
//! pid, uid), for the daemon to read the command line and match it against
//! the patterns of MCP servers. `sched_process_exec` costs nothing
//! measurable on this kernel (unlike syscall tracepoints, it does not put
//! every task on the slow syscall path), so it may stay attached for the
//! daemon's whole life.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use mcpwarden_common::HostExec;

/// 256 KiB: about 16,000 execs of backlog.
#[map]
static HOST_EXECS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

/// Execs not reported because the ring was full.
#[map]
static HOST_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn mcpw_hostexec(_ctx: TracePointContext) -> u32 {
    let record = HostExec {
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
    };
    if HOST_EXECS.output::<HostExec>(&record, 0).is_err()
        && let Some(dropped) = HOST_DROPPED.get_ptr_mut(0)
    {
        // SAFETY: per-CPU counter, no concurrent writer on this CPU.
        unsafe { *dropped += 1 };
    }
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
