//! The exec helper: runs in the child, confines itself, then becomes the
//! tool server with `execve`, so only the server's tree is confined and it
//! is confined from its very first instruction.
//!
//! ```text
//! helper (root, joins the v1 limit cgroups, opens the traced cgroup.procs)
//!   unshare(mount, ipc, uts, pid[, net])
//!   fork ──► init: pid 1 of the new pid namespace (root)
//!   │          builds the mount view, sets the host name
//!   │          fork ──► server: joins the traced session cgroup, drops to
//!   │          │        the policy's uid/gid, rlimits,
//!   │          │        landlock, closes inherited fds, seccomp (and
//!   │          │        sends the listener up the notify socket), execve
//!   │          reaps every orphan; exits with the server's status
//!   waits for init, exits with its status
//! ```
use std::{
    ffi::{OsStr, OsString},
    fs,
    io::{self, Write as _},
    os::fd::{AsFd as _, AsRawFd, OwnedFd, RawFd},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    fcntl::OFlag,
    sched::{CloneFlags, unshare},
    sys::{
        resource::{Resource, setrlimit},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Gid, Pid, Uid, fork, setgroups, setresgid, setresuid},
};

use crate::{lockdown, mounts, notify, seccomp, spec::Spec};

/// Why the helper could not become the server.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Joining a session cgroup failed.
    #[error("cannot join cgroup via {path}: {source}")]
    JoinCgroup {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No command was given.
    #[error("no command to run")]
    NoCommand,
    /// A confinement step failed.
    #[error("cannot confine the server: {step}: {source}")]
    Confine {
        /// The step.
        step: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `execve` failed.
    #[error("cannot execute {program:?}: {source}")]
    Exec {
        /// The program.
        program: OsString,
        /// Why.
        source: io::Error,
    },
}

fn step<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
) -> impl FnOnce(E) -> ExecError {
    move |e| ExecError::Confine {
        step,
        source: Box::new(e),
    }
}

fn join(procs_files: &[PathBuf]) -> Result<(), ExecError> {
    let me = std::process::id().to_string();
    for path in procs_files {
        fs::write(path, &me).map_err(|source| ExecError::JoinCgroup {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Joins the cgroups, confines, and runs `command` as described in the
/// module docs. `env` is the server's whole environment. Returns the exit
/// code the helper should exit with (the server's), or why it failed.
///
/// The helper and the namespace init join the `limit_procs` cgroups (v1
/// companions) at once; only the server itself joins `traced_procs`, the
/// session cgroup the kernel programs watch and `cgroup.kill` ends, right
/// before it drops privileges. So the events of a session are the server's
/// own, never the helper's set-up.
///
/// With `notify` (a unix socket to mcpwarden), the server installs the
/// listener filter of [`crate::notify`] last and sends its listener there.
pub fn confine_and_run(
    traced_procs: &Path,
    limit_procs: &[PathBuf],
    spec: &Spec,
    env: &[(OsString, OsString)],
    command: &[OsString],
    notify: Option<OwnedFd>,
) -> Result<i32, ExecError> {
    if command.is_empty() {
        return Err(ExecError::NoCommand);
    }
    join(limit_procs)?;
    // Opened now, while the host's /sys is still in view; written by the
    // server just before it drops root.
    let traced = fs::OpenOptions::new()
        .write(true)
        .open(traced_procs)
        .map_err(|source| ExecError::JoinCgroup {
            path: traced_procs.to_owned(),
            source,
        })?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWPID;
    if !spec.has_network() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(step("unshare namespaces"))?;
    // Only the helper holds the write end: the init, in a pid namespace of
    // its own, cannot see its parent's pid, so this pipe tells it whether
    // the helper still lives.
    let (helper_alive, helper_holds) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(step("make the helper's pipe"))?;
    // SAFETY: the helper is single-threaded (no runtime has started), so the
    // child may do anything the parent could.
    match unsafe { fork() }.map_err(step("fork the namespace init"))? {
        ForkResult::Parent { child } => {
            drop(helper_alive);
            drop(notify);
            // Our copies of the server's pipes would keep them open.
            release_stdio();
            let code = wait_exit_code(child);
            drop(helper_holds);
            Ok(code)
        }
        ForkResult::Child => std::process::exit(
            match die_with_helper(&helper_alive, helper_holds)
                .and_then(|()| init(&traced, spec, env, command, notify))
            {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("mcpwarden: {e}");
                    127
                }
            },
        ),
    }
}

/// Asks the kernel to SIGKILL this process when its parent `parent`
/// exits, and fails if it already has. The namespace init dies with the
/// helper, and every process of the sandbox dies with the init (pid 1 of
/// its pid namespace); with `--die-with-parent` the helper dies with
/// mcpwarden, so no server outlives the process that relays for it. The
/// parent is a thread: mcpwarden starts helpers from its runtime's worker
/// threads, which live as long as it does.
pub fn die_with_parent(parent: Pid) -> Result<(), ExecError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(step("ask to die with the parent"))?;
    // The parent may have gone before the request was made.
    if Pid::parent() != parent {
        return Err(step("ask to die with the parent")(nix::Error::ESRCH));
    }
    Ok(())
}

/// The init's half of [`die_with_parent`]: `alive` is the read end of a
/// pipe whose only writer is the helper.
fn die_with_helper(alive: &OwnedFd, ours: OwnedFd) -> Result<(), ExecError> {
    drop(ours);
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(step("ask to die with the helper"))?;
    let mut byte = [0u8; 1];
    match nix::unistd::read(alive, &mut byte) {
        // No data and a writer: the helper lives.
        Err(nix::Error::EAGAIN) => Ok(()),
        // End of file: the helper died before the request was made.
        Ok(_) => Err(step("ask to die with the helper")(nix::Error::ESRCH)),
        Err(e) => Err(step("ask to die with the helper")(e)),
    }
}

/// Pid 1 of the sandbox: builds the view, starts the server, reaps.
fn init(
    traced: &fs::File,
    spec: &Spec,
    env: &[(OsString, OsString)],
    command: &[OsString],
    notify: Option<OwnedFd>,
) -> Result<i32, ExecError> {
    mounts::build(spec).map_err(step("build the mount namespace"))?;
    nix::unistd::sethostname("mcpwarden-sandbox").map_err(step("set the host name"))?;
    // SAFETY: still single-threaded.
    match unsafe { fork() }.map_err(step("fork the server"))? {
        ForkResult::Child => {
            let err = become_server(traced, spec, env, command, notify);
            eprintln!("mcpwarden: {err}");
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            drop(notify);
            release_stdio();
            // Reap everything that gets reparented to us; leave with the
            // server's status (the kernel then kills what is left).
            loop {
                match waitpid(Pid::from_raw(-1), None) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        return Ok(128 + sig as i32);
                    }
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(step("wait for the server")(e)),
                }
            }
        }
    }
}

fn wait_exit_code(child: Pid) -> i32 {
    loop {
        match waitpid(child, Some(WaitPidFlag::empty())) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Err(nix::Error::EINTR) | Ok(_) => {}
            Err(_) => return 127,
        }
    }
}

/// Points stdin and stdout at /dev/null, so only the server holds the pipes.
fn release_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsFd as _;
        let _ = nix::unistd::dup2_stdin(null.as_fd());
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
}

/// Drops privileges, applies limits, landlock and seccomp, and execs.
/// Returns only on failure.
fn become_server(
    traced: &fs::File,
    spec: &Spec,
    env: &[(OsString, OsString)],
    command: &[OsString],
    notify: Option<OwnedFd>,
) -> ExecError {
    match lock_down(traced, spec, notify) {
        Ok(()) => {}
        Err(e) => return e,
    }
    let (program, args) = command
        .split_first()
        .expect("checked non-empty by confine_and_run");
    let source = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .exec();
    ExecError::Exec {
        program: program.clone(),
        source,
    }
}

fn lock_down(traced: &fs::File, spec: &Spec, notify: Option<OwnedFd>) -> Result<(), ExecError> {
    // landlock first, still as root: building the ruleset opens every
    // granted path, which is set-up, not the server's doing. It also sets
    // no_new_privs.
    nix::sys::prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
    lockdown::restrict(spec).map_err(step("landlock"))?;
    // "0" moves the writer: from here on the kernel traces this process.
    // The descriptor was opened before the namespaces, so neither landlock
    // nor the new root stands in the way.
    (&*traced)
        .write_all(b"0")
        .map_err(|source| ExecError::JoinCgroup {
            path: PathBuf::from("the session cgroup.procs"),
            source,
        })?;
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    setgroups(&[gid]).map_err(step("set supplementary groups"))?;
    setresgid(gid, gid, gid).map_err(step("set gid"))?;
    setresuid(uid, uid, uid).map_err(step("set uid"))?;
    if nix::unistd::geteuid().is_root()
        || setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok()
    {
        return Err(ExecError::Confine {
            step: "drop root",
            source: "still able to act as root".into(),
        });
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(step("limit core dumps"))?;
    let nofile = spec.limits.nofile;
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).map_err(step("limit open files"))?;
    let nproc = spec.limits.pids;
    setrlimit(Resource::RLIMIT_NPROC, nproc, nproc).map_err(step("limit processes"))?;
    let keep = notify.as_ref().map(AsRawFd::as_raw_fd);
    close_inherited_fds(keep).map_err(step("close inherited file descriptors"))?;
    let listener = seccomp::install(spec.profile, notify.is_some()).map_err(step("seccomp"))?;
    if let (Some(socket), Some(listener)) = (&notify, &listener) {
        notify::send(socket.as_fd(), listener).map_err(step("send the seccomp listener"))?;
    }
    // Both close here: the server must never hold its own listener (it
    // could answer its own calls).
    drop(listener);
    drop(notify);
    Ok(())
}

/// Closes every descriptor above stderr but `keep`.
fn close_inherited_fds(keep: Option<RawFd>) -> Result<(), nix::Error> {
    let close = |first: u32, last: u32| {
        if first > last {
            return Ok(());
        }
        // SAFETY: close_range only closes descriptors; none in the range is
        // used by this process from here to execve.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r == 0 {
            Ok(())
        } else {
            Err(nix::Error::last())
        }
    };
    match keep
        .and_then(|fd| u32::try_from(fd).ok())
        .filter(|&fd| fd >= 3)
    {
        Some(fd) => {
            close(3, fd - 1)?;
            close(fd + 1, u32::MAX)
        }
        None => close(3, u32::MAX),
    }
}

/// The server's environment: the passed-through variables that are set,
/// plus a safe `PATH` and `HOME` when not passed.
#[must_use]
pub fn server_env(
    names: &[String],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = names
        .iter()
        .filter_map(|n| lookup(n).map(|v| (OsString::from(n), v)))
        .collect();
    let has = |env: &[(OsString, OsString)], k: &str| env.iter().any(|(n, _)| n == OsStr::new(k));
    if !has(&env, "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    if !has(&env, "HOME") {
        env.push(("HOME".into(), "/tmp".into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passed_through_variables_reach_the_server() {
        let lookup = |n: &str| match n {
            "LANG" => Some(OsString::from("C.UTF-8")),
            "AWS_SECRET_ACCESS_KEY" => Some(OsString::from("leak")),
            _ => None,
        };
        let env = server_env(&["LANG".into(), "MISSING".into()], lookup);
        assert_eq!(
            env,
            vec![
                ("LANG".into(), "C.UTF-8".into()),
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), "/tmp".into()),
            ]
        );
    }
}
