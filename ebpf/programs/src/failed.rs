//! Failed calls: the file, exec and connect calls a session's process made
//! that the kernel refused, with their error, seen at `sys_exit` (where
//! the error is known). Each program serves a family of calls whose path
//! is in the same argument; a call that worked leaves after one read.
use aya_ebpf::{
    helpers::bpf_probe_read_user_str_bytes, macros::raw_tracepoint, programs::RawTracePointContext,
};
use mcpwarden_common::kind;

use crate::{begin_call, call::Call, submit};

/// A failed call at its exit: its number, its error, and the path it was
/// given (argument `path_arg`, if any). Calls that worked leave after one
/// read.
#[inline(always)]
fn on_failed(ctx: &RawTracePointContext, path_arg: Option<usize>) {
    let ret: i64 = ctx.arg(1);
    if ret >= 0 {
        return;
    }
    let Some((session, event)) = begin_call(kind::FAILED) else {
        return;
    };
    let call = Call::of(ctx);
    event.flags = call.nr;
    event.ret = ret;
    event.path[0] = 0;
    if let Some(i) = path_arg {
        let path = call.ptr::<u8>(i);
        if !path.is_null()
            // SAFETY: user pointer read through the fault-tolerant helper.
            && unsafe { bpf_probe_read_user_str_bytes(path, &mut event.path) }.is_err()
        {
            event.path[0] = 0;
        }
    }
    submit(&session, event);
}

#[raw_tracepoint]
pub fn mcpw_fail_a0(ctx: RawTracePointContext) -> i32 {
    on_failed(&ctx, Some(0));
    0
}

#[raw_tracepoint]
pub fn mcpw_fail_a1(ctx: RawTracePointContext) -> i32 {
    on_failed(&ctx, Some(1));
    0
}

#[raw_tracepoint]
pub fn mcpw_fail_a2(ctx: RawTracePointContext) -> i32 {
    on_failed(&ctx, Some(2));
    0
}

/// A failed connect: its address was reported at entry.
#[raw_tracepoint]
pub fn mcpw_fail_np(ctx: RawTracePointContext) -> i32 {
    on_failed(&ctx, None);
    0
}
