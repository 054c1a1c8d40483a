//! seccomp: a default-deny allow-list per kind of server, and a deny-always
//! set that wins over it with `EPERM`.
//!
//! Two filters are installed. The allow-list answers `ENOSYS` for anything
//! it does not list, which runtimes read as "not supported here" (glibc falls
//! back from `clone3` to `clone` that way). The deny filter, installed after
//! it and so consulted first by the kernel for equal actions, answers `EPERM`
//! for the dangerous set: namespace, mount, module, kexec, BPF, perf, ptrace,
//! keyring, `io_uring` calls; `clone` with namespace flags; raw and packet
//! sockets; the `TIOCSTI`/`TIOCLINUX` terminal injection ioctls.
use std::{collections::BTreeMap, os::fd::OwnedFd};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{notify, spec::Profile};

/// Errors of building or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This CPU architecture has no syscall table here.
    #[error("seccomp profiles are not defined for the {0} architecture")]
    UnsupportedArch(&'static str),
    /// seccompiler refused the filter.
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    /// The kernel refused the listener filter (`SECCOMP_RET_USER_NOTIF`
    /// needs Linux 5.0).
    #[error("installing the seccomp listener filter: {0}")]
    Listener(std::io::Error),
}

/// Syscalls every profile allows: an ordinary program's I/O, memory,
/// threads, signals, time, files, sockets, processes.
const BASE: &[(&str, libc::c_long)] = sys![
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_openat,
    SYS_openat2,
    SYS_close,
    SYS_close_range,
    SYS_lseek,
    SYS_newfstatat,
    SYS_fstat,
    SYS_statx,
    SYS_statfs,
    SYS_fstatfs,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_readlinkat,
    SYS_getdents64,
    SYS_getcwd,
    SYS_chdir,
    SYS_fchdir,
    SYS_mkdirat,
    SYS_unlinkat,
    SYS_renameat,
    SYS_renameat2,
    SYS_linkat,
    SYS_symlinkat,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_utimensat,
    SYS_truncate,
    SYS_ftruncate,
    SYS_fallocate,
    SYS_fsync,
    SYS_fdatasync,
    SYS_sync_file_range,
    SYS_flock,
    SYS_fcntl,
    SYS_ioctl,
    SYS_dup,
    SYS_dup3,
    SYS_pipe2,
    SYS_copy_file_range,
    SYS_splice,
    SYS_tee,
    SYS_sendfile,
    SYS_fadvise64,
    SYS_umask,
    SYS_memfd_create,
    SYS_inotify_init1,
    SYS_inotify_add_watch,
    SYS_inotify_rm_watch,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_madvise,
    SYS_mincore,
    SYS_msync,
    SYS_brk,
    SYS_mlock,
    SYS_munlock,
    SYS_get_mempolicy,
    SYS_membarrier,
    SYS_futex,
    SYS_futex_waitv,
    SYS_set_robust_list,
    SYS_get_robust_list,
    SYS_set_tid_address,
    SYS_rseq,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_sched_getparam,
    SYS_sched_getscheduler,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_getcpu,
    SYS_getpriority,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_rt_sigpending,
    SYS_rt_sigtimedwait,
    SYS_rt_sigsuspend,
    SYS_rt_sigqueueinfo,
    SYS_sigaltstack,
    SYS_kill,
    SYS_tgkill,
    SYS_tkill,
    SYS_clock_gettime,
    SYS_clock_getres,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_gettimeofday,
    SYS_getitimer,
    SYS_setitimer,
    SYS_timer_create,
    SYS_timer_settime,
    SYS_timer_gettime,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_times,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_eventfd2,
    SYS_signalfd4,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_ppoll,
    SYS_pselect6,
    SYS_socket,
    SYS_socketpair,
    SYS_connect,
    SYS_bind,
    SYS_listen,
    SYS_accept,
    SYS_accept4,
    SYS_getsockname,
    SYS_getpeername,
    SYS_setsockopt,
    SYS_getsockopt,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_sendmmsg,
    SYS_recvmmsg,
    SYS_shutdown,
    SYS_clone,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_wait4,
    SYS_waitid,
    SYS_getpid,
    SYS_getppid,
    SYS_gettid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_getresuid,
    SYS_getresgid,
    SYS_getgroups,
    SYS_getpgid,
    SYS_getpgrp,
    SYS_getsid,
    SYS_setsid,
    SYS_setpgid,
    SYS_capget,
    SYS_prctl,
    SYS_getrlimit,
    SYS_prlimit64,
    SYS_getrusage,
    SYS_uname,
    SYS_sysinfo,
    SYS_getrandom,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pidfd_getfd,
    SYS_restart_syscall,
    // Reading extended attributes (`ls -l` asks for ACLs and labels).
    SYS_getxattr,
    SYS_lgetxattr,
    SYS_fgetxattr,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_flistxattr,
    // FIFOs and sockets in writable places (device nodes need CAP_MKNOD).
    SYS_mknodat,
    // System V and POSIX IPC, private to the sandbox's IPC namespace.
    SYS_shmget,
    SYS_shmat,
    SYS_shmdt,
    SYS_shmctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_semctl,
    SYS_msgget,
    SYS_msgsnd,
    SYS_msgrcv,
    SYS_msgctl,
    SYS_mq_open,
    SYS_mq_unlink,
    SYS_mq_timedsend,
    SYS_mq_timedreceive,
    SYS_mq_notify,
    SYS_mq_getsetattr,
    SYS_sync,
    SYS_syncfs,
    SYS_ioprio_get,
    SYS_sched_getattr,
    SYS_rt_tgsigqueueinfo,
    // Adding a seccomp filter or a landlock domain can only narrow what is
    // allowed; our own second filter is installed through seccomp().
    SYS_seccomp,
    SYS_landlock_create_ruleset,
    SYS_landlock_add_rule,
    SYS_landlock_restrict_self,
];

/// x86-64's legacy calls, still used by older binaries and some runtimes.
#[cfg(target_arch = "x86_64")]
const LEGACY: &[(&str, libc::c_long)] = sys![
    SYS_open,
    SYS_stat,
    SYS_lstat,
    SYS_access,
    SYS_readlink,
    SYS_mkdir,
    SYS_rmdir,
    SYS_unlink,
    SYS_rename,
    SYS_link,
    SYS_symlink,
    SYS_chmod,
    SYS_chown,
    SYS_lchown,
    SYS_creat,
    SYS_getdents,
    SYS_dup2,
    SYS_pipe,
    SYS_poll,
    SYS_select,
    SYS_epoll_create,
    SYS_epoll_wait,
    SYS_eventfd,
    SYS_signalfd,
    SYS_inotify_init,
    SYS_fork,
    SYS_vfork,
    SYS_alarm,
    SYS_pause,
    SYS_time,
    SYS_utime,
    SYS_utimes,
    SYS_futimesat,
    SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[(&str, libc::c_long)] = &[];

/// What CPython adds (its own `os` module reaches a little further).
const PYTHON: &[(&str, libc::c_long)] = sys![SYS_sched_setaffinity, SYS_mlock2, SYS_setpriority];
/// What Node.js adds (V8 and libuv).
const NODE: &[(&str, libc::c_long)] = sys![
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_sched_setaffinity,
    SYS_mbind,
    SYS_setpriority
];

/// Always refused with `EPERM`, whatever the profile.
pub const DENY_ALWAYS: &[(&str, libc::c_long)] = sys![
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_chroot,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_bpf,
    SYS_perf_event_open,
    SYS_userfaultfd,
    SYS_keyctl,
    SYS_add_key,
    SYS_request_key,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_unshare,
    SYS_setns,
    SYS_personality,
    SYS_acct,
    SYS_swapon,
    SYS_swapoff,
    SYS_reboot,
    SYS_syslog,
    SYS_open_by_handle_at,
    SYS_name_to_handle_at,
    SYS_quotactl,
    SYS_settimeofday,
    SYS_clock_settime,
    SYS_clock_adjtime,
    SYS_adjtimex,
    SYS_sethostname,
    SYS_setdomainname,
    SYS_fanotify_init,
    SYS_fsopen,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fspick,
    SYS_open_tree,
    SYS_move_mount,
    SYS_mount_setattr,
    SYS_kcmp,
    SYS_vhangup,
    SYS_setuid,
    SYS_setgid,
    SYS_setreuid,
    SYS_setregid,
    SYS_setresuid,
    SYS_setresgid,
    SYS_setgroups,
    SYS_setfsuid,
    SYS_setfsgid,
    SYS_capset,
    SYS_lookup_dcookie,
];

/// `clone` flags that create namespaces.
const CLONE_NEW_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// The syscalls a profile allows, by name (for `explain` and tests).
#[must_use]
pub fn allowed(profile: Profile) -> Vec<&'static str> {
    allow_list(profile)
        .iter()
        .map(|(name, _)| name.trim_start_matches("SYS_"))
        .collect()
}

fn allow_list(profile: Profile) -> Vec<(&'static str, libc::c_long)> {
    let extra = match profile {
        Profile::Generic => &[][..],
        Profile::Python => PYTHON,
        Profile::Node => NODE,
    };
    let mut list: Vec<_> = BASE.iter().chain(LEGACY).chain(extra).copied().collect();
    list.sort_unstable();
    list.dedup();
    list
}

fn arch() -> Result<TargetArch, SeccompError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(arg, len, op, value)?)
}

/// Both filters, compiled: `[allow-list, deny set]`, in installation order.
/// With `watch`, the [`notify::WATCHED`] calls pass both (the listener
/// filter installed after them answers them: see [`crate::notify`]).
pub fn compile(profile: Profile, watch: bool) -> Result<[BpfProgram; 2], SeccompError> {
    use SeccompCmpArgLen::{Dword, Qword};
    use SeccompCmpOp::{Eq, MaskedEq, Ne};

    let arch = arch()?;
    let watched = notify::WATCHED.iter().filter(|_| watch);
    let allow: BTreeMap<i64, Vec<SeccompRule>> = allow_list(profile)
        .into_iter()
        .chain(watched.copied())
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    let allow = SeccompFilter::new(
        allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        SeccompAction::Allow,
        arch,
    )?;

    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = DENY_ALWAYS
        .iter()
        .filter(|&&(_, nr)| !(watch && notify::watched(nr)))
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    let clone_ns = CLONE_NEW_FLAGS
        .iter()
        .map(|&flag| {
            Ok(SeccompRule::new(vec![cond(
                0,
                Qword,
                MaskedEq(flag),
                flag,
            )?])?)
        })
        .collect::<Result<Vec<_>, SeccompError>>()?;
    deny.insert(libc::SYS_clone, clone_ns);
    let raw = u64::from(libc::SOCK_RAW as u32);
    deny.insert(
        libc::SYS_socket,
        vec![
            SeccompRule::new(vec![cond(0, Dword, Eq, libc::AF_PACKET as u64)?])?,
            SeccompRule::new(vec![
                cond(0, Dword, Ne, libc::AF_NETLINK as u64)?,
                cond(1, Dword, MaskedEq(0xf), raw)?,
            ])?,
        ],
    );
    deny.insert(
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![cond(1, Dword, Eq, libc::TIOCSTI)?])?,
            SeccompRule::new(vec![cond(1, Dword, Eq, libc::TIOCLINUX)?])?,
        ],
    );
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    Ok([allow.try_into()?, deny.try_into()?])
}

/// Installs both filters on the calling thread (no_new_privs must be set),
/// and with `watch` the listener filter after them, whose listener it
/// returns. After this, only the listed syscalls work: call it last, right
/// before `execve`.
pub fn install(profile: Profile, watch: bool) -> Result<Option<OwnedFd>, SeccompError> {
    for program in compile(profile, watch)? {
        seccompiler::apply_filter(&program)?;
    }
    watch.then(notify::install).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_compile_and_never_allow_the_deny_set() {
        for profile in [Profile::Generic, Profile::Python, Profile::Node] {
            let [allow, deny] = compile(profile, false).expect("compiles");
            let [watch_allow, watch_deny] = compile(profile, true).expect("compiles");
            assert!(watch_allow.len() > allow.len() && watch_deny.len() < deny.len());
            assert!(!allow.is_empty() && !deny.is_empty());
            let allowed = allow_list(profile);
            for (name, nr) in DENY_ALWAYS {
                assert!(
                    !allowed.iter().any(|(_, a)| a == nr),
                    "{profile:?} allows {name}"
                );
            }
        }
    }

    #[test]
    fn runtimes_get_what_they_need_on_top_of_the_base() {
        assert!(allowed(Profile::Node).contains(&"pkey_alloc"));
        assert!(!allowed(Profile::Generic).contains(&"pkey_alloc"));
        assert!(allowed(Profile::Generic).contains(&"openat"));
        assert!(
            !allowed(Profile::Generic).contains(&"clone3"),
            "clone3 must fall back to clone"
        );
    }
}
