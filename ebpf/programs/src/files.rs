//! Path operations: unlink, rename, mkdir, chmod, chown, truncate, symlink
//! and link. Each reports its path (and second path, where the call has
//! one), both checked against the session's denied prefixes like an open.
use aya_ebpf::{
    helpers::bpf_probe_read_user_str_bytes, macros::raw_tracepoint, programs::RawTracePointContext,
};
use mcpwarden_common::kind;

use crate::{AT_FDCWD, act_on_deny, begin_call, call::Call, deny_rule, deny_rule_of, submit};

/// `rmdir` is `unlinkat` with this flag.
const AT_REMOVEDIR: i64 = 0x200;

/// Which of a path operation's arguments (from 0) are what.
#[derive(Clone, Copy)]
struct PathOp {
    kind: u32,
    dfd: Option<usize>,
    path: usize,
    dfd2: Option<usize>,
    path2: Option<usize>,
    arg: Option<usize>,
    /// `arg` when the record has none to read.
    fixed_arg: i64,
}

/// Unlink, rename, mkdir, chmod, chown, truncate, symlink, link: the path
/// and, where the call has one, the second path (both checked against the
/// session's denied prefixes, like an open), and the call's argument.
#[inline(always)]
fn on_path_op(ctx: &RawTracePointContext, op: PathOp) {
    let Some((session, event)) = begin_call(op.kind) else {
        return;
    };
    let call = Call::of(ctx);
    event.fd = op.dfd.map_or(AT_FDCWD, |i| call.int(i));
    event.fd2 = op.dfd2.map_or(AT_FDCWD, |i| call.int(i));
    // SAFETY: user pointer read through the fault-tolerant helper.
    if unsafe { bpf_probe_read_user_str_bytes(call.ptr(op.path), &mut event.path) }.is_err() {
        event.path[0] = 0;
    }
    if let Some(i) = op.path2
        // SAFETY: as above.
        && unsafe { bpf_probe_read_user_str_bytes(call.ptr(i), &mut event.path2) }.is_err()
    {
        event.path2[0] = 0;
    }
    event.arg = op.arg.map_or(op.fixed_arg, |i| call.arg(i) as i64);
    // A rename or link into a denied directory is as denied as one out of
    // it: the second path (the destination) is checked too.
    let rule = match deny_rule(&session, event) {
        Some(rule) => Some(rule),
        None if op.path2.is_some() => deny_rule_of(&session, &event.path2),
        None => None,
    };
    if let Some(rule) = rule {
        act_on_deny(&session, event, rule);
    }
    submit(&session, event);
}

const fn op(kind: u32, path: usize) -> PathOp {
    PathOp {
        kind,
        dfd: None,
        path,
        dfd2: None,
        path2: None,
        arg: None,
        fixed_arg: 0,
    }
}

macro_rules! path_op {
    ($name:ident, $op:expr) => {
        #[raw_tracepoint]
        pub fn $name(ctx: RawTracePointContext) -> i32 {
            on_path_op(&ctx, $op);
            0
        }
    };
}

path_op!(
    mcpw_unlinkat,
    PathOp {
        dfd: Some(0),
        arg: Some(2),
        ..op(kind::UNLINK, 1)
    }
);
path_op!(mcpw_unlink, op(kind::UNLINK, 0));
path_op!(
    mcpw_rmdir,
    PathOp {
        fixed_arg: AT_REMOVEDIR,
        ..op(kind::UNLINK, 0)
    }
);
path_op!(
    mcpw_rename,
    PathOp {
        path2: Some(1),
        ..op(kind::RENAME, 0)
    }
);
path_op!(
    mcpw_renameat,
    PathOp {
        dfd: Some(0),
        dfd2: Some(2),
        path2: Some(3),
        ..op(kind::RENAME, 1)
    }
);
path_op!(
    mcpw_renameat2,
    PathOp {
        dfd: Some(0),
        dfd2: Some(2),
        path2: Some(3),
        ..op(kind::RENAME, 1)
    }
);
path_op!(
    mcpw_mkdir,
    PathOp {
        arg: Some(1),
        ..op(kind::MKDIR, 0)
    }
);
path_op!(
    mcpw_mkdirat,
    PathOp {
        dfd: Some(0),
        arg: Some(2),
        ..op(kind::MKDIR, 1)
    }
);
path_op!(
    mcpw_chmod,
    PathOp {
        arg: Some(1),
        ..op(kind::CHMOD, 0)
    }
);
path_op!(
    mcpw_fchmodat,
    PathOp {
        dfd: Some(0),
        arg: Some(2),
        ..op(kind::CHMOD, 1)
    }
);
path_op!(
    mcpw_fchmodat2,
    PathOp {
        dfd: Some(0),
        arg: Some(2),
        ..op(kind::CHMOD, 1)
    }
);
path_op!(
    mcpw_chown,
    PathOp {
        arg: Some(1),
        ..op(kind::CHOWN, 0)
    }
);
path_op!(
    mcpw_fchownat,
    PathOp {
        dfd: Some(0),
        arg: Some(2),
        ..op(kind::CHOWN, 1)
    }
);
path_op!(
    mcpw_truncate,
    PathOp {
        arg: Some(1),
        ..op(kind::TRUNCATE, 0)
    }
);
// A symlink's new name is what it creates; its contents go in path2.
path_op!(
    mcpw_symlink,
    PathOp {
        path2: Some(0),
        ..op(kind::SYMLINK, 1)
    }
);
path_op!(
    mcpw_symlinkat,
    PathOp {
        dfd: Some(1),
        path2: Some(0),
        ..op(kind::SYMLINK, 2)
    }
);
path_op!(
    mcpw_link,
    PathOp {
        path2: Some(1),
        ..op(kind::LINK, 0)
    }
);
path_op!(
    mcpw_linkat,
    PathOp {
        dfd: Some(0),
        dfd2: Some(2),
        path2: Some(3),
        ..op(kind::LINK, 1)
    }
);
