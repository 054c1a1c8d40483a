//! Failed calls: the file, exec and connect calls a session's process made
//! that the kernel refused, with their error, seen at `sys_exit` (where
//! the error is known). Each program serves a family of calls whose path
//! is in the same argument; a call that worked leaves after one read.
use aya_ebpf::{
    helpers::bpf_probe_read_user_str_bytes, macros::tracepoint, programs::TracePointContext,
};
use mcpwarden_common::kind;

use crate::{
    begin,
    privilege::{call_args, exit_call, exit_ret},
    submit,
};

/// A failed call at its exit: its number, its error, and the path it was
/// given (argument `path_arg`, if any). Calls that worked leave after one
/// read.
#[inline(always)]
fn on_failed(ctx: &TracePointContext, path_arg: Option<usize>) {
    let ret = exit_ret(ctx).unwrap_or(0);
    if ret >= 0 {
        return;
    }
    let Some((session, event)) = begin(kind::FAILED) else {
        return;
    };
    event.flags = exit_call(ctx);
    event.ret = ret;
    event.path[0] = 0;
    if let Some(i) = path_arg {
        let path = call_args()[i % 3];
        if path != 0
            // SAFETY: user pointer read through the fault-tolerant helper.
            && unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut event.path) }.is_err()
        {
            event.path[0] = 0;
        }
    }
    submit(&session, event);
}

#[tracepoint]
pub fn mcpw_fail_a0(ctx: TracePointContext) -> u32 {
    on_failed(&ctx, Some(0));
    0
}

#[tracepoint]
pub fn mcpw_fail_a1(ctx: TracePointContext) -> u32 {
    on_failed(&ctx, Some(1));
    0
}

#[tracepoint]
pub fn mcpw_fail_a2(ctx: TracePointContext) -> u32 {
    on_failed(&ctx, Some(2));
    0
}

/// A failed connect: its address was reported at entry.
#[tracepoint]
pub fn mcpw_fail_np(ctx: TracePointContext) -> u32 {
    on_failed(&ctx, None);
    0
}
