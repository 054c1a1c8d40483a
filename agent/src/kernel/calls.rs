//! Which handler serves which system call: the agent fills the kernel's
//! `ENTER_CALLS` and `EXIT_CALLS` tables from these lists (see
//! `ebpf/programs/src/call.rs`). A call in neither list costs the two raw
//! hooks a failed tail call and nothing more.
//!
//! The handlers read arguments from x86-64's saved registers.
use libc::c_long;
use mcpwarden_common::CALL_WORDS;

/// Calls traced at entry: (handler, call number).
pub const ENTER: &[(&str, c_long)] = &[
    ("mcpw_execve", libc::SYS_execve),
    ("mcpw_execveat", libc::SYS_execveat),
    ("mcpw_exit", libc::SYS_exit_group),
    ("mcpw_openat", libc::SYS_openat),
    ("mcpw_openat2", libc::SYS_openat2),
    ("mcpw_connect", libc::SYS_connect),
    ("mcpw_listen", libc::SYS_listen),
    ("mcpw_sendto", libc::SYS_sendto),
    ("mcpw_sendmsg", libc::SYS_sendmsg),
    ("mcpw_sendmmsg", libc::SYS_sendmmsg),
    ("mcpw_unlinkat", libc::SYS_unlinkat),
    ("mcpw_renameat", libc::SYS_renameat),
    ("mcpw_renameat2", libc::SYS_renameat2),
    ("mcpw_mkdirat", libc::SYS_mkdirat),
    ("mcpw_fchmodat", libc::SYS_fchmodat),
    ("mcpw_fchmodat2", libc::SYS_fchmodat2),
    ("mcpw_fchownat", libc::SYS_fchownat),
    ("mcpw_truncate", libc::SYS_truncate),
    ("mcpw_symlinkat", libc::SYS_symlinkat),
    ("mcpw_linkat", libc::SYS_linkat),
    ("mcpw_mprotect", libc::SYS_mprotect),
    ("mcpw_mmap", libc::SYS_mmap),
];

/// x86-64's legacy path calls (arm64 has none of them).
#[cfg(target_arch = "x86_64")]
pub const ENTER_LEGACY: &[(&str, c_long)] = &[
    ("mcpw_open", libc::SYS_open),
    ("mcpw_unlink", libc::SYS_unlink),
    ("mcpw_rmdir", libc::SYS_rmdir),
    ("mcpw_rename", libc::SYS_rename),
    ("mcpw_mkdir", libc::SYS_mkdir),
    ("mcpw_chmod", libc::SYS_chmod),
    ("mcpw_chown", libc::SYS_chown),
    ("mcpw_symlink", libc::SYS_symlink),
    ("mcpw_link", libc::SYS_link),
];
#[cfg(not(target_arch = "x86_64"))]
pub const ENTER_LEGACY: &[(&str, c_long)] = &[];

/// Calls traced at exit, while a session asks for call results
/// (`[kernel] call_results`): (handler, call number).
///
/// The `mcpw_fail_*` handlers report failed file, exec and connect calls
/// with their error; their suffix is the argument that holds the path.
/// The privilege calls are not here: the sandbox's seccomp hands them to
/// the agent (`kernel::notify`).
pub const EXIT: &[(&str, c_long)] = &[
    ("mcpw_accept", libc::SYS_accept),
    ("mcpw_accept", libc::SYS_accept4),
    ("mcpw_fail_a0", libc::SYS_execve),
    ("mcpw_fail_a0", libc::SYS_truncate),
    ("mcpw_fail_a1", libc::SYS_openat),
    ("mcpw_fail_a1", libc::SYS_openat2),
    ("mcpw_fail_a1", libc::SYS_unlinkat),
    ("mcpw_fail_a1", libc::SYS_renameat),
    ("mcpw_fail_a1", libc::SYS_renameat2),
    ("mcpw_fail_a1", libc::SYS_mkdirat),
    ("mcpw_fail_a1", libc::SYS_fchmodat),
    ("mcpw_fail_a1", libc::SYS_fchmodat2),
    ("mcpw_fail_a1", libc::SYS_fchownat),
    ("mcpw_fail_a1", libc::SYS_linkat),
    ("mcpw_fail_a1", libc::SYS_execveat),
    ("mcpw_fail_a2", libc::SYS_symlinkat),
    ("mcpw_fail_np", libc::SYS_connect),
];

/// x86-64's legacy path calls at exit.
#[cfg(target_arch = "x86_64")]
pub const EXIT_LEGACY: &[(&str, c_long)] = &[
    ("mcpw_fail_a0", libc::SYS_open),
    ("mcpw_fail_a0", libc::SYS_unlink),
    ("mcpw_fail_a0", libc::SYS_rmdir),
    ("mcpw_fail_a0", libc::SYS_rename),
    ("mcpw_fail_a0", libc::SYS_mkdir),
    ("mcpw_fail_a0", libc::SYS_chmod),
    ("mcpw_fail_a0", libc::SYS_chown),
    ("mcpw_fail_a0", libc::SYS_link),
    ("mcpw_fail_a1", libc::SYS_symlink),
];
#[cfg(not(target_arch = "x86_64"))]
pub const EXIT_LEGACY: &[(&str, c_long)] = &[];

/// Every handler at entry, legacy calls included.
pub fn enter() -> impl Iterator<Item = (&'static str, c_long)> {
    ENTER.iter().chain(ENTER_LEGACY).copied()
}

/// Every handler at exit, legacy calls included.
pub fn exit() -> impl Iterator<Item = (&'static str, c_long)> {
    EXIT.iter().chain(EXIT_LEGACY).copied()
}

/// The bitmap of the calls in `calls`: bit `n % 64` of word `n / 64`.
#[must_use]
pub fn traced(calls: impl Iterator<Item = (&'static str, c_long)>) -> [u64; CALL_WORDS] {
    let mut bits = [0u64; CALL_WORDS];
    for (_, nr) in calls {
        // In 0..CALL_SLOTS (unit test below).
        let nr = nr as usize;
        bits[nr / 64] |= 1 << (nr % 64);
    }
    bits
}

/// The name of every program of the tracer: hooks, handlers, tracepoints.
#[must_use]
pub fn program_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = mcpwarden_common::SYSCALL_HOOKS
        .iter()
        .map(|&(name, _)| name)
        .chain(
            mcpwarden_common::TRACEPOINTS
                .iter()
                .map(|&(name, _, _)| name),
        )
        .chain(enter().map(|(name, _)| name))
        .chain(exit().map(|(name, _)| name))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The name of the calls the exit programs watch, by number.
pub(crate) fn name(nr: i64) -> &'static str {
    const CALLS: &[(i64, &str)] = &[
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
        (libc::SYS_process_vm_writev, "process_vm_writev"),
        (libc::SYS_setuid, "setuid"),
        (libc::SYS_setgid, "setgid"),
        (libc::SYS_setreuid, "setreuid"),
        (libc::SYS_setregid, "setregid"),
        (libc::SYS_setresuid, "setresuid"),
        (libc::SYS_setresgid, "setresgid"),
        (libc::SYS_setfsuid, "setfsuid"),
        (libc::SYS_setfsgid, "setfsgid"),
        (libc::SYS_setgroups, "setgroups"),
        (libc::SYS_capset, "capset"),
        (libc::SYS_init_module, "init_module"),
        (libc::SYS_finit_module, "finit_module"),
        (libc::SYS_delete_module, "delete_module"),
        (libc::SYS_bpf, "bpf"),
        (libc::SYS_memfd_create, "memfd_create"),
        (libc::SYS_accept, "accept"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_open, "open"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_openat2, "openat2"),
        (libc::SYS_unlink, "unlink"),
        (libc::SYS_unlinkat, "unlinkat"),
        (libc::SYS_rmdir, "rmdir"),
        (libc::SYS_rename, "rename"),
        (libc::SYS_renameat, "renameat"),
        (libc::SYS_renameat2, "renameat2"),
        (libc::SYS_mkdir, "mkdir"),
        (libc::SYS_mkdirat, "mkdirat"),
        (libc::SYS_chmod, "chmod"),
        (libc::SYS_fchmodat, "fchmodat"),
        (libc::SYS_fchmodat2, "fchmodat2"),
        (libc::SYS_chown, "chown"),
        (libc::SYS_fchownat, "fchownat"),
        (libc::SYS_truncate, "truncate"),
        (libc::SYS_symlink, "symlink"),
        (libc::SYS_symlinkat, "symlinkat"),
        (libc::SYS_link, "link"),
        (libc::SYS_linkat, "linkat"),
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_connect, "connect"),
    ];
    CALLS
        .iter()
        .find(|(n, _)| *n == nr)
        .map_or("?", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use mcpwarden_common::CALL_SLOTS;

    use super::*;

    #[test]
    fn every_call_has_one_handler_per_table_and_fits_the_table() {
        for (table, calls) in [
            ("enter", enter().collect::<Vec<_>>()),
            ("exit", exit().collect()),
        ] {
            let mut seen = HashSet::new();
            for (name, nr) in calls {
                assert!(seen.insert(nr), "{table}: call {nr} has two handlers");
                assert!(
                    (0..c_long::from(CALL_SLOTS)).contains(&nr),
                    "{table}: call {nr} ({name}) is past the table"
                );
                assert!(name.len() <= 15, "{name}: kernel names are cut at 15");
                // The sandbox hands these to the agent: a handler would
                // report each a second time.
                assert!(
                    !mcpwarden_sandbox::notify::watched(nr),
                    "{table}: {name} serves call {nr}, which seccomp hands to the agent"
                );
            }
        }
    }

    #[test]
    fn the_bitmap_has_exactly_the_calls_of_its_table() {
        let bits = traced(exit());
        let count: u32 = bits.iter().map(|w| w.count_ones()).sum();
        assert_eq!(count as usize, exit().count());
        let openat = libc::SYS_openat as usize;
        assert_ne!(bits[openat / 64] & (1 << (openat % 64)), 0);
        let close = libc::SYS_close as usize;
        assert_eq!(bits[close / 64] & (1 << (close % 64)), 0);
        assert_eq!(traced(std::iter::empty()), [0; CALL_WORDS]);
    }
}
