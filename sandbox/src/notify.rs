//! Calls the sandbox hands to mcpwarden instead of refusing them itself.
//!
//! The privilege and evasion calls (`ptrace`, the `set*id` family, module
//! and `bpf` calls) and `memfd_create` go to a third seccomp filter whose
//! answer is `SECCOMP_RET_USER_NOTIF`: the calling thread waits while
//! mcpwarden, which holds the filter's listener, records the call, refuses
//! it (or makes the memfd for it, so it knows the descriptor) and, under
//! `[kernel] kill`, kills the session. The call itself never runs.
//!
//! mcpwarden used to see these calls with a program at every syscall exit
//! of every task on the host (seccomp refuses a call before the kernel's
//! `sys_enter` hook runs, so exit was the only place). This costs only the
//! sandboxed process, only when it makes one of these calls.
//!
//! When nobody holds the listener (mcpwarden is gone), the kernel fails a
//! watched call with `ENOSYS` (kernel/seccomp.c, `seccomp_do_user_notification`):
//! a watched call is never let through.
use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::seccomp::SeccompError;

/// The calls the listener gets.
pub const WATCHED: &[(&str, libc::c_long)] = sys![
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_setuid,
    SYS_setgid,
    SYS_setreuid,
    SYS_setregid,
    SYS_setresuid,
    SYS_setresgid,
    SYS_setfsuid,
    SYS_setfsgid,
    SYS_setgroups,
    SYS_capset,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_bpf,
    SYS_memfd_create,
];

/// Whether the listener gets call `nr`.
#[must_use]
pub fn watched(nr: libc::c_long) -> bool {
    WATCHED.iter().any(|&(_, n)| n == nr)
}

/// `AUDIT_ARCH_*` of this build (linux/audit.h: the ELF machine, 64-bit,
/// little-endian): `EM_X86_64` is 0x3e, `EM_AARCH64` 0xb7.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0x3e | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xb7 | 0x8000_0000 | 0x4000_0000;

/// `struct seccomp_data` offsets: the call number, the architecture.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The listener filter: `USER_NOTIF` for the [`WATCHED`] calls of this
/// architecture, `ALLOW` for the rest (the allow-list filter, installed
/// before it, refuses other architectures and unlisted calls).
#[must_use]
pub fn program() -> Vec<libc::sock_filter> {
    let n = WATCHED.len();
    let mut prog = Vec::with_capacity(n + 5);
    prog.push(stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        ARCH_OFFSET,
    ));
    // Another architecture's numbers mean other calls: skip to ALLOW.
    prog.push(libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf: (n + 1) as u8,
        k: AUDIT_ARCH,
    });
    prog.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET));
    for (i, &(_, nr)) in WATCHED.iter().enumerate() {
        // A match jumps over the rest and the ALLOW to the USER_NOTIF.
        prog.push(libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: (n - i) as u8,
            jf: 0,
            k: nr as u32,
        });
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_USER_NOTIF,
    ));
    prog
}

/// Installs the listener filter on the calling thread (after the other
/// two, no_new_privs set) and returns its listener.
pub fn install() -> Result<OwnedFd, SeccompError> {
    let mut filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel
    // copies the program.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &raw const prog,
        )
    };
    if fd < 0 {
        return Err(SeccompError::Listener(io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `listener` over the unix socket `socket` (`SCM_RIGHTS`).
pub fn send(socket: BorrowedFd<'_>, listener: &OwnedFd) -> io::Result<()> {
    let fds = [listener.as_raw_fd()];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(b"L")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives a listener sent with [`send`]; `None` at end of file (the
/// sandbox ended before it installed its filters).
pub fn receive(socket: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut got = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel installed these descriptors in this
                // process for this message; each is owned once.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    if got.is_none() && msg.bytes > 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the sandbox sent no listener descriptor",
        ));
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    #[test]
    fn the_program_notifies_exactly_the_watched_calls() {
        let prog = program();
        assert_eq!(prog.len(), WATCHED.len() + 5);
        // Walk the program as the kernel would for each call number.
        let run = |arch: u32, nr: u32| -> u32 {
            let mut pc = 0;
            let mut acc = 0;
            loop {
                let ins = prog[pc];
                let code = u32::from(ins.code);
                if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                    acc = if ins.k == ARCH_OFFSET { arch } else { nr };
                    pc += 1;
                } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                    pc += 1 + usize::from(if acc == ins.k { ins.jt } else { ins.jf });
                } else {
                    assert_eq!(code, libc::BPF_RET | libc::BPF_K);
                    return ins.k;
                }
            }
        };
        for nr in 0..460 {
            let expected = if watched(libc::c_long::from(nr)) {
                libc::SECCOMP_RET_USER_NOTIF
            } else {
                libc::SECCOMP_RET_ALLOW
            };
            assert_eq!(run(AUDIT_ARCH, nr as u32), expected, "call {nr}");
            assert_eq!(run(0x4000_0003, nr as u32), libc::SECCOMP_RET_ALLOW);
        }
    }

    #[test]
    fn without_a_listener_the_deny_set_refuses_the_privilege_calls() {
        // A sandbox that hands nothing to mcpwarden (`sandbox run`) still
        // refuses every watched call but memfd_create.
        for &(name, nr) in WATCHED {
            let denied = crate::seccomp::DENY_ALWAYS.iter().any(|&(_, d)| d == nr);
            assert_eq!(denied, nr != libc::SYS_memfd_create, "{name}");
        }
    }

    #[test]
    fn without_a_listener_a_watched_call_fails_and_never_runs() {
        let [allow, deny] =
            crate::seccomp::compile(crate::spec::Profile::Generic, true).expect("compiles");
        let mut notify = program();
        let fprog = |filter: *mut libc::sock_filter, len: usize| libc::sock_fprog {
            len: len as u16,
            filter,
        };
        // seccompiler's `sock_filter` has the kernel's (and libc's) layout.
        let progs = [
            fprog(allow.as_ptr().cast_mut().cast(), allow.len()),
            fprog(deny.as_ptr().cast_mut().cast(), deny.len()),
        ];
        let listen = fprog(notify.as_mut_ptr(), notify.len());
        // SAFETY: the child makes only raw system calls on memory prepared
        // before the fork, then leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for prog in &progs {
                    let r = libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        std::ptr::from_ref(prog),
                    );
                    if r != 0 {
                        libc::_exit(100);
                    }
                }
                let fd = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &raw const listen,
                );
                if fd < 0 {
                    libc::_exit(101);
                }
                // Nobody will answer: the listener is gone.
                libc::close(fd as i32);
                // As root this would work, were it let through.
                let r = libc::syscall(libc::SYS_setuid, 0);
                let errno = *libc::__errno_location();
                libc::_exit(if r == -1 && errno == libc::ENOSYS {
                    0
                } else {
                    102
                });
            }
        }
        assert!(pid > 0, "fork");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "100/101: a filter was refused; 102: setuid was not failed with ENOSYS"
        );
    }

    #[test]
    fn a_listener_crosses_a_socket_and_end_of_file_is_none() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let pair = || {
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .expect("socketpair")
        };
        let (a, b) = pair();
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        send(a.as_fd(), &OwnedFd::from(file)).expect("send");
        let got = receive(b.as_fd()).expect("receive").expect("a descriptor");
        assert!(got.as_raw_fd() >= 0);
        let (a, b) = pair();
        drop(a);
        assert!(receive(b.as_fd()).expect("receive").is_none());
    }
}
