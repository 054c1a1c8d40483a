//! The two syscall hooks: one program on raw `sys_enter`, one on raw
//! `sys_exit`, for every traced call.
//!
//! Any syscall hook puts every task of the host on the slow syscall path,
//! and each program attached to it is one more indirect call per syscall of
//! every task. Per-call trace events (`syscalls/sys_enter_openat`...)
//! attach one program per call, ~75 here, and each detach waits for grace
//! periods. So the tracer attaches two raw programs and nothing per call.
//! Each one tests the call's number against a bitmap of traced calls (set
//! at load, so a call without a handler, the most of them, leaves after
//! one load), then the task's cgroup against `SESSIONS` (a task outside
//! every session leaves there), and only then tail-calls the handler of the
//! call's number in [`ENTER_CALLS`] or [`EXIT_CALLS`] (filled by the
//! agent), leaving it the session found ([`dispatched`]). A tail call
//! costs more than a comparison (kernel_cost part 6), so outsiders never
//! make one.
//!
//! The arguments are read from the task's saved user registers (x86-64
//! `struct pt_regs`), which raw syscall tracepoints pass as their first
//! argument; at exit they still hold the arguments (only `ax` takes the
//! result).
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
};
use mcpwarden_common::{CALL_SLOTS, CALL_WORDS, SessionConfig};

use crate::SESSIONS;

/// The calls with an entry handler: bit `n % 64` of word `n / 64` for call
/// `n`. Read-only, set by the agent at load from the list that fills
/// [`ENTER_CALLS`].
#[unsafe(no_mangle)]
static ENTER_TRACED: Global<[u64; CALL_WORDS]> = Global::new([0; CALL_WORDS]);

/// The calls with an exit handler, likewise.
#[unsafe(no_mangle)]
static EXIT_TRACED: Global<[u64; CALL_WORDS]> = Global::new([0; CALL_WORDS]);

/// Entry handlers, by syscall number.
#[map]
static ENTER_CALLS: ProgramArray = ProgramArray::with_max_entries(CALL_SLOTS, 0);

/// Exit handlers, by syscall number.
#[map]
static EXIT_CALLS: ProgramArray = ProgramArray::with_max_entries(CALL_SLOTS, 0);

/// Offset of `r10` in x86-64's `struct pt_regs`. From there on: `r10`,
/// `r9`, `r8`, `ax`, `cx`, `dx`, `si`, `di`, `orig_ax`: one read gives all
/// six arguments and the call's number. The layout is the user ABI of
/// `PTRACE_GETREGS` and does not change.
const PT_REGS_R10: u64 = 56;

/// Whether call `id` has a handler in the table `traced` describes and the
/// current task is in a session.
#[inline(always)]
fn wanted(traced: &Global<[u64; CALL_WORDS]>, id: u64) -> bool {
    if id >= u64::from(CALL_SLOTS) {
        return false;
    }
    let word = traced.load()[(id >> 6) as usize & (CALL_WORDS - 1)];
    if word & (1 << (id & 63)) == 0 {
        return false;
    }
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is plain data copied out at once.
    let Some(session) = (unsafe { SESSIONS.get(cgroup_id) }) else {
        return false;
    };
    let Some(slot) = DISPATCHED.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU map memory; the handler this run tail-calls reads it
    // before anything else can run a hook on this CPU.
    unsafe { *slot = (cgroup_id, *session) };
    true
}

/// The cgroup id and session of the task whose call a hook is handing to
/// its handler: [`wanted`] writes it, the handler reads it (`begin_call`),
/// so the handler does not repeat the hook's helper call and hash lookup.
#[map]
static DISPATCHED: PerCpuArray<(u64, SessionConfig)> = PerCpuArray::with_max_entries(1, 0);

/// What the hook that tail-called the running handler found.
#[inline(always)]
pub(crate) fn dispatched() -> Option<(u64, SessionConfig)> {
    DISPATCHED.get(0).copied()
}

/// Raw `sys_enter`: `(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn mcpw_sys_enter(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    if wanted(&ENTER_TRACED, id) {
        // SAFETY: the table holds only raw tracepoint programs of this
        // object, which take this context; control returns only if the
        // slot is empty.
        unsafe { ENTER_CALLS.tail_call(&ctx, id as u32) };
    }
    0
}

/// Raw `sys_exit`: `(struct pt_regs *regs, long ret)`; the call's number
/// is `regs->orig_ax`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn mcpw_sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    // SAFETY: kernel memory read through the fault-tolerant helper.
    let Ok(id) = (unsafe { bpf_probe_read_kernel((regs + PT_REGS_R10 + 64) as *const u64) }) else {
        return 0;
    };
    if wanted(&EXIT_TRACED, id) {
        // SAFETY: as in `mcpw_sys_enter`.
        unsafe { EXIT_CALLS.tail_call(&ctx, id as u32) };
    }
    0
}

/// A system call as a handler sees it: its number and arguments (a
/// handler at exit reads the result from the context's second argument).
pub(crate) struct Call {
    /// The arguments, then two zero words (an index is masked with 7).
    args: [u64; 8],
    /// The call's number (`orig_ax`).
    pub(crate) nr: u32,
}

impl Call {
    /// The call a raw `sys_enter` or `sys_exit` context is about.
    #[inline(always)]
    pub(crate) fn of(ctx: &RawTracePointContext) -> Self {
        let regs: u64 = ctx.arg(0);
        // SAFETY: kernel memory read through the fault-tolerant helper.
        match unsafe { bpf_probe_read_kernel((regs + PT_REGS_R10) as *const [u64; 9]) } {
            Ok([r10, r9, r8, _ax, _cx, dx, si, di, orig_ax]) => Self {
                args: [di, si, dx, r10, r8, r9, 0, 0],
                nr: orig_ax as u32,
            },
            Err(_) => Self {
                args: [0; 8],
                nr: u32::MAX,
            },
        }
    }

    /// Argument `i` (from 0), as the raw word.
    #[inline(always)]
    pub(crate) fn arg(&self, i: usize) -> u64 {
        self.args[i & 7]
    }

    /// Argument `i` as an `int` (a descriptor).
    #[inline(always)]
    pub(crate) fn int(&self, i: usize) -> i32 {
        self.arg(i) as i32
    }

    /// Argument `i` as a user pointer.
    #[inline(always)]
    pub(crate) fn ptr<T>(&self, i: usize) -> *const T {
        self.arg(i) as *const T
    }
}
