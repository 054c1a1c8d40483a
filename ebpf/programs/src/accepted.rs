//! Accepted connections' peers, with nothing at syscall exit: a cgroup
//! `sock_ops` program on each session's cgroup sees every TCP connection
//! one of the session's listening sockets completes
//! (`BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`) and reports its peer. It runs
//! for the session's sockets only; the rest of the host never enters it.
//!
//! The handshake completes in softirq context, in whatever task the packet
//! interrupted, so nothing about the current task is used: the session's
//! cgroup id comes from the cgroup storage the agent fills when it attaches
//! the program, and the event carries no pid, comm or uid. The scratch
//! event is this program's own: a softirq can interrupt a syscall handler
//! filling `SCRATCH_EVENT` on the same CPU, and softirqs do not nest.
#![expect(
    deprecated,
    reason = "BPF_MAP_TYPE_CGRP_STORAGE needs a cgroup pointer, which sock_ops programs do not get"
)]

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    helpers::bpf_ktime_get_ns,
    macros::{map, sock_ops},
    maps::{CgroupStorage, PerCpuArray},
    programs::SockOpsContext,
};
use mcpwarden_common::{COMM_LEN, Event, NO_RULE, action, kind};

use crate::{AF_INET, AF_INET6, SESSIONS, submit};

/// The cgroup id of the cgroup each attachment serves, written by the
/// agent right after it attaches the program (0 until then: nothing is
/// reported).
#[map]
static ACCEPT_CGROUP: CgroupStorage<u64> = CgroupStorage::new();

#[map]
static SCRATCH_ACCEPTED: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// `sock_ops` return value: 1 lets the socket operation go on (the
/// program only watches).
const CONTINUE: u32 = 1;

#[sock_ops]
pub fn mcpw_accepted(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        report(&ctx);
    }
    CONTINUE
}

#[inline(always)]
fn report(ctx: &SockOpsContext) {
    // SAFETY: the storage of the cgroup this attachment serves, valid for
    // the program run; a plain integer read.
    let cgroup_id = unsafe { *ACCEPT_CGROUP.get_ptr_mut() };
    if cgroup_id == 0 {
        return;
    }
    // SAFETY: the value is plain data copied out at once.
    let Some(session) = (unsafe { SESSIONS.get(cgroup_id) }).copied() else {
        return;
    };
    let Some(event) = SCRATCH_ACCEPTED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map memory used by this program alone, which runs in
    // softirq context where it cannot be interrupted by itself.
    let event = unsafe { &mut *event };
    let family = ctx.family() as u16;
    event.addr = [0; 16];
    match family {
        AF_INET => event.addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes()),
        AF_INET6 => {
            for (i, word) in ctx.remote_ip6().iter().enumerate() {
                event.addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
        }
        _ => return,
    }
    // SAFETY: helper without arguments.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.cgroup_id = cgroup_id;
    event.kind = kind::ACCEPTED;
    event.action = action::ALLOW;
    event.pid = 0;
    event.tid = 0;
    event.rule = NO_RULE;
    event.fd = -1;
    event.flags = 0;
    event.family = family;
    // The remote port is kept in network byte order in the field's high
    // half; the local port in host order.
    event.port = u16::from_be((ctx.remote_port() >> 16) as u16);
    event.comm = [0; COMM_LEN];
    event.arg = i64::from(ctx.local_port());
    event.fd2 = -1;
    event.uid = 0;
    event.ret = 0;
    event.lookup = [0; 2];
    event.path[0] = 0;
    event.path2[0] = 0;
    submit(&session, event);
}
