//! Part 6: what each kind of syscall hook costs a process outside any
//! session, before any design is built on it. The feature-probe object's
//! `hook_*` programs do only the tracer's first step (the cgroup lookup,
//! which misses for an outsider) on:
//! - `syscalls/sys_enter_openat` (+ `sys_exit_openat`): per-syscall
//!   trace events, what the tracer uses;
//! - raw `sys_enter` (+ `sys_exit`): one hook for every syscall of every
//!   task, dispatching on the syscall's number;
//! - raw `sys_enter` (+ `sys_exit`) as the tracer dispatches since stop
//!   20: the call's number, the cgroup check, and for a task in a session
//!   a tail call to the call's handler;
//! - raw `sys_enter` with an empty program: the slow syscall path alone,
//!   which any syscall hook switches on for every task.
//!
//! The open/close loop runs with each in turn, rounds interleaved, medians
//! reported against nothing attached.
use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{RawTracePoint, TracePoint},
};

use crate::{LOOPS, here, median};

/// openat's number on x86-64: the one slot of `HOOK_CALLS` filled.
const NR_OPENAT: u32 = 257;

const VARIANTS: [(&str, &[(&str, &str)]); 7] = [
    ("nothing attached", &[]),
    (
        "tracepoint sys_enter_openat",
        &[("hook_tp", "syscalls/sys_enter_openat")],
    ),
    (
        "tracepoints sys_enter_openat + sys_exit_openat",
        &[
            ("hook_tp", "syscalls/sys_enter_openat"),
            ("hook_tp", "syscalls/sys_exit_openat"),
        ],
    ),
    (
        "raw sys_enter, empty program",
        &[("hook_raw_empty", "sys_enter")],
    ),
    (
        "raw sys_enter, openat dispatch",
        &[("hook_raw_enter", "sys_enter")],
    ),
    (
        "raw sys_enter + sys_exit, openat dispatch",
        &[
            ("hook_raw_enter", "sys_enter"),
            ("hook_raw_exit", "sys_exit"),
        ],
    ),
    (
        "raw sys_enter + sys_exit, the tracer's dispatch",
        &[
            ("hook_tail_enter", "sys_enter"),
            ("hook_tail_exit", "sys_exit"),
        ],
    ),
];

/// Loads the probes object and attaches `hooks` (program, hook point).
fn attach(hooks: &[(&str, &str)]) -> Ebpf {
    let mut ebpf = Ebpf::load(mcpwarden::kernel::PROBES_OBJECT).expect("load the probes object");
    if hooks.iter().any(|(name, _)| name.starts_with("hook_tail_")) {
        let check: &mut RawTracePoint = ebpf
            .program_mut("hook_tail_check")
            .expect("program")
            .try_into()
            .expect("raw tracepoint");
        check.load().expect("load");
        let fd = check.fd().expect("fd").try_clone().expect("fd");
        let mut calls: ProgramArray<_> = ebpf
            .map_mut("HOOK_CALLS")
            .expect("map")
            .try_into()
            .expect("program array");
        calls.set(NR_OPENAT, &fd, 0).expect("set");
    }
    for (i, (name, point)) in hooks.iter().enumerate() {
        // The same program on two tracepoints: load once, attach twice.
        let first = hooks[..i].iter().all(|(n, _)| n != name);
        if let Some((category, event)) = point.split_once('/') {
            let p: &mut TracePoint = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("tracepoint");
            if first {
                p.load().expect("load");
            }
            p.attach(category, event).expect("attach");
        } else {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("raw tracepoint");
            if first {
                p.load().expect("load");
            }
            p.attach(point).expect("attach");
        }
    }
    ebpf
}

pub fn hooks() {
    println!(
        "\n6. syscall hook kinds, open+close outside any session ({LOOPS} iterations, 7 rounds interleaved, median)"
    );
    mcpwarden::kernel::ensure_tracefs().expect("tracefs");
    let _ = here("open", LOOPS); // warm
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for _ in 0..7 {
        for (i, (_, hooks)) in VARIANTS.iter().enumerate() {
            let ebpf = attach(hooks);
            runs[i].push(here("open", LOOPS));
            drop(ebpf);
        }
    }
    let base = median(runs[0].clone());
    for ((what, _), r) in VARIANTS.iter().zip(runs) {
        let m = median(r);
        println!(
            "   {what:<46} {m:7.1} ns  {:+6.1} %",
            (m / base - 1.0) * 100.0
        );
    }
}
