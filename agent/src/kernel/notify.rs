//! The calls a session's sandbox hands to mcpwarden: the privilege and
//! evasion calls, and `memfd_create` (see `mcpwarden_sandbox::notify`).
//!
//! A thread per session holds the seccomp listener the sandbox sent up.
//! For each call it receives it writes the event the kernel programs would
//! have written, into the session's queue (so the session records and
//! judges it with the rest), and answers:
//! - a privilege call is refused with `EPERM`; under `[kernel] kill` in
//!   enforce mode the process is killed first, while it still waits;
//! - `memfd_create` is done here, and the descriptor put in the process
//!   with `SECCOMP_IOCTL_NOTIF_ADDFD`: its number goes in the kernel's
//!   `MEMFDS` before the process gets it, so an exec of it is recognised.
//!
//! The calling thread waits in the kernel meanwhile, so none of these calls
//! runs unseen; if this thread is gone, the kernel fails them (`ENOSYS`).
use std::{
    ffi::CString,
    fs,
    io::{self, ErrorKind},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::fs::FileExt as _,
    },
    path::PathBuf,
    thread::JoinHandle,
};

use mcpwarden_common::{COMM_LEN, Event, NO_RULE, PATH_LEN, action, kill, kind};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::KernelEvent;

/// Where the thread's results go.
pub(crate) trait Sink: Send + 'static {
    /// A call's event, for the session's queue.
    fn event(&self, event: KernelEvent);
    /// Remembers descriptor `fd` of the session as a memfd (the kernel's
    /// `MEMFDS`), so an exec or executable mapping of it is recognised.
    fn memfd(&self, fd: u32) -> Result<(), String>;
}

/// What the session's policy makes of a watched call.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    /// The session's cgroup id (events carry it).
    pub cgroup_id: u64,
    /// Its cgroup directory (for `cgroup.kill`).
    pub cgroup_dir: PathBuf,
    /// Enforce mode: `kill`-listed calls kill.
    pub enforce: bool,
    /// `mcpwarden_common::kill` bits.
    pub kill: u32,
}

/// The running thread; dropping it stops the thread and closes the
/// listener (the sandbox's later watched calls then fail).
pub(crate) struct Watch {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Starts the thread: it takes the listener from `socket` (the
    /// sandbox's end sends it once it has confined itself), then answers.
    pub(crate) fn start(socket: OwnedFd, rules: Rules, sink: impl Sink) -> io::Result<Self> {
        let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("mcpw-seccomp".into())
            .spawn(move || {
                if let Err(e) = run(&socket, &stop_rx, &rules, &sink) {
                    tracing::error!(
                        cgroup = rules.cgroup_id,
                        "the seccomp listener stopped: {e}; the sandbox's privilege calls now fail with ENOSYS"
                    );
                }
            })?;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Closing the write end wakes the thread's poll.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until `fd` is readable or `stop` is closed; false on stop or
/// when `fd` hung up.
fn wait(fd: BorrowedFd<'_>, stop: &OwnedFd) -> io::Result<bool> {
    loop {
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |p: &PollFd| p.revents().unwrap_or(PollFlags::empty());
        if !ready(&fds[1]).is_empty() {
            return Ok(false);
        }
        let mine = ready(&fds[0]);
        if mine.contains(PollFlags::POLLIN) {
            return Ok(true);
        }
        if mine.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
            return Ok(false);
        }
    }
}

fn run(socket: &OwnedFd, stop: &OwnedFd, rules: &Rules, sink: &impl Sink) -> io::Result<()> {
    if !wait(socket.as_fd(), stop)? {
        return Ok(());
    }
    let Some(listener) = mcpwarden_sandbox::notify::receive(socket.as_fd())? else {
        // The sandbox ended before it confined itself: nothing to watch.
        return Ok(());
    };
    let sizes = notif_sizes()?;
    if sizes.seccomp_notif as usize > size_of::<libc::seccomp_notif>()
        || sizes.seccomp_notif_resp as usize > size_of::<libc::seccomp_notif_resp>()
    {
        return Err(io::Error::other(format!(
            "this kernel's seccomp notifications ({} bytes) are larger than this build knows",
            sizes.seccomp_notif
        )));
    }
    while wait(listener.as_fd(), stop)? {
        let Some(notif) = receive(&listener)? else {
            continue;
        };
        answer(&listener, &notif, rules, sink);
    }
    Ok(())
}

fn notif_sizes() -> io::Result<libc::seccomp_notif_sizes> {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: the kernel writes the three sizes into `sizes`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &raw mut sizes,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sizes)
}

/// One notification; `None` when it went away before we took it (its
/// task was killed).
fn receive(listener: &OwnedFd) -> io::Result<Option<libc::seccomp_notif>> {
    let mut notif = libc::seccomp_notif {
        id: 0,
        pid: 0,
        flags: 0,
        data: libc::seccomp_data {
            nr: 0,
            arch: 0,
            instruction_pointer: 0,
            args: [0; 6],
        },
    };
    // SAFETY: `notif` is a zeroed `struct seccomp_notif` (the kernel
    // requires zeroes) of at least the kernel's size (checked).
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &raw mut notif,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT | libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(notif))
}

/// Answers notification `id`: `error` (a positive errno) or `val`.
fn respond(listener: &OwnedFd, id: u64, error: i32, val: i64) {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val,
        error: -error,
        flags: 0,
    };
    // SAFETY: a filled `struct seccomp_notif_resp`.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &raw mut resp,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the task was killed meanwhile (by us, under a kill rule).
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!("answering a seccomp notification: {e}");
        }
    }
}

/// Whether notification `id` still waits: what was read about its task
/// (in /proc, in its memory) is its own, not a recycled pid's.
fn still_valid(listener: &OwnedFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: the ioctl reads the u64 id.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &raw mut id,
        ) == 0
    }
}

/// The event kind and `[kernel] kill` bit of a watched call.
fn classify(nr: libc::c_long) -> Option<(u32, u32)> {
    Some(match nr {
        libc::SYS_ptrace | libc::SYS_process_vm_readv | libc::SYS_process_vm_writev => {
            (kind::PTRACE, kill::PTRACE)
        }
        libc::SYS_setuid
        | libc::SYS_setgid
        | libc::SYS_setreuid
        | libc::SYS_setregid
        | libc::SYS_setresuid
        | libc::SYS_setresgid
        | libc::SYS_setfsuid
        | libc::SYS_setfsgid
        | libc::SYS_setgroups
        | libc::SYS_capset => (kind::PRIVILEGE, kill::PRIVILEGE),
        libc::SYS_init_module | libc::SYS_finit_module | libc::SYS_delete_module => {
            (kind::MODULE, kill::MODULE)
        }
        libc::SYS_bpf => (kind::BPF, kill::BPF),
        libc::SYS_memfd_create => (kind::MEMFD, 0),
        _ => return None,
    })
}

/// The task's process id, real uid and name, from /proc.
fn task_facts(tid: u32) -> (u32, u32, [u8; COMM_LEN]) {
    let mut comm = [0u8; COMM_LEN];
    if let Ok(name) = fs::read(format!("/proc/{tid}/comm")) {
        let name = name.strip_suffix(b"\n").unwrap_or(&name);
        let n = name.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&name[..n]);
    }
    let status = fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    (
        field("Tgid:").unwrap_or(tid),
        field("Uid:").unwrap_or(0),
        comm,
    )
}

/// A NUL-terminated string at `addr` in task `tid`'s memory (at most
/// `PATH_LEN` - 1 bytes).
fn read_string(tid: u32, addr: u64) -> io::Result<Vec<u8>> {
    const PAGE: u64 = 4096;
    let mem = fs::File::open(format!("/proc/{tid}/mem"))?;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < PATH_LEN - 1 {
        // Never across a page: the next one may not be mapped.
        let want = ((PAGE - at % PAGE) as usize).min(PATH_LEN - 1 - out.len());
        let mut chunk = vec![0u8; want];
        let n = mem.read_at(&mut chunk, at)?;
        if n == 0 {
            return Err(io::Error::from(ErrorKind::UnexpectedEof));
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    Ok(out)
}

fn answer(listener: &OwnedFd, notif: &libc::seccomp_notif, rules: &Rules, sink: &impl Sink) {
    let nr = libc::c_long::from(notif.data.nr);
    let Some((event_kind, bit)) = classify(nr) else {
        // The filter watches nothing else; refuse whatever this is.
        respond(listener, notif.id, libc::EPERM, 0);
        return;
    };
    let args = notif.data.args;
    let (pid, uid, comm) = task_facts(notif.pid);
    let mut event = Event {
        ts_ns: crate::monotonic_ns(),
        cgroup_id: rules.cgroup_id,
        kind: event_kind,
        action: action::ALLOW,
        pid,
        tid: notif.pid,
        rule: NO_RULE,
        fd: args[1] as i32,
        flags: notif.data.nr as u32,
        family: 0,
        port: 0,
        addr: [0; 16],
        comm,
        arg: args[0] as i64,
        fd2: args[2] as i32,
        uid,
        ret: -i64::from(libc::EPERM),
        lookup: [0; 2],
        path: [0; PATH_LEN],
        path2: [0; PATH_LEN],
    };
    if event_kind == kind::MEMFD {
        make_memfd(listener, notif, &mut event, sink);
    } else {
        if !still_valid(listener, notif.id) {
            return;
        }
        if rules.kill & bit != 0 {
            if rules.enforce {
                event.action = action::KILLED;
                kill_now(pid, rules);
            } else {
                event.action = action::ALERT;
            }
        }
        respond(listener, notif.id, libc::EPERM, 0);
    }
    if let Some(decoded) = KernelEvent::from_raw(&event) {
        sink.event(decoded);
    }
}

/// SIGKILLs the process (it waits in the kernel: it dies there) and the
/// session's tree.
fn kill_now(pid: u32, rules: &Rules) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let file = rules.cgroup_dir.join("cgroup.kill");
    if let Err(e) = fs::write(&file, "1") {
        tracing::error!("cannot kill the session via {}: {e}", file.display());
    }
}

/// `memfd_create(name, flags)` made here for the task, its descriptor
/// recorded, then handed over.
fn make_memfd(
    listener: &OwnedFd,
    notif: &libc::seccomp_notif,
    event: &mut Event,
    sink: &impl Sink,
) {
    let args = notif.data.args;
    let flags = args[1] as u32;
    event.arg = i64::from(flags);
    event.fd = -1;
    event.fd2 = -1;
    let Ok(name) = read_string(notif.pid, args[0]) else {
        event.ret = -i64::from(libc::EFAULT);
        respond(listener, notif.id, libc::EFAULT, 0);
        return;
    };
    let n = name.len().min(PATH_LEN - 1);
    event.path[..n].copy_from_slice(&name[..n]);
    if !still_valid(listener, notif.id) {
        return;
    }
    let Ok(cname) = CString::new(name) else {
        event.ret = -i64::from(libc::EINVAL);
        respond(listener, notif.id, libc::EINVAL, 0);
        return;
    };
    // SAFETY: a NUL-terminated name; the kernel checks the flags.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL);
        event.ret = -i64::from(errno);
        respond(listener, notif.id, errno, 0);
        return;
    }
    // SAFETY: the new descriptor memfd_create just returned.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cloexec = flags & libc::MFD_CLOEXEC != 0;
    let mut addfd = libc::seccomp_notif_addfd {
        id: notif.id,
        flags: 0,
        srcfd: memfd.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: a filled `struct seccomp_notif_addfd`; the kernel installs a
    // copy of `srcfd` in the task and returns its number there.
    let theirs = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD,
            &raw mut addfd,
        )
    };
    if theirs < 0 {
        let e = io::Error::last_os_error();
        let errno = e.raw_os_error().unwrap_or(libc::EBADF);
        if errno != libc::ENOENT {
            tracing::warn!("handing a memfd to the sandbox: {e}");
        }
        event.ret = -i64::from(errno);
        respond(listener, notif.id, errno, 0);
        return;
    }
    // Recorded before the task can use it.
    if let Err(e) = sink.memfd(theirs as u32) {
        tracing::error!("cannot remember the sandbox's memfd {theirs}: {e}");
    }
    event.ret = i64::from(theirs);
    respond(listener, notif.id, 0, i64::from(theirs));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_watched_call_has_a_kind() {
        for &(name, nr) in mcpwarden_sandbox::notify::WATCHED {
            assert!(classify(nr).is_some(), "{name}");
        }
        assert_eq!(classify(libc::SYS_openat), None);
        assert_eq!(
            classify(libc::SYS_setresuid),
            Some((kind::PRIVILEGE, kill::PRIVILEGE))
        );
    }

    #[test]
    fn strings_are_read_from_a_task_up_to_their_nul() {
        let text = b"mcpw-stage\0ignored";
        let tid = std::process::id();
        let got = read_string(tid, text.as_ptr() as u64).expect("read own memory");
        assert_eq!(got, b"mcpw-stage");
        assert!(read_string(tid, 8).is_err(), "page zero is never mapped");
    }
}
