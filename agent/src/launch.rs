//! Starting a tool server confined: the session cgroup with its limits, and
//! the command line of the exec helper (`mcpwarden sandbox-exec`) that
//! confines itself and execs the server (see `mcpwarden_sandbox::exec`).
use std::{
    ffi::OsString,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::Command,
};

use mcpwarden_sandbox::{CgroupError, Hierarchy, SessionCgroup, Spec, cgroup::Controllers};

/// A new session: its number (the kernel maps' session id), its label and
/// its cgroup.
#[derive(Debug)]
pub struct Session {
    /// Session id in the kernel maps.
    pub number: u32,
    /// `session-<pid>-<nonce>`: starts with our pid so that a later start
    /// can tell whether its owner is gone.
    pub label: String,
    /// The session cgroup, with the spec's limits applied.
    pub cgroup: SessionCgroup,
}

/// The number of this process's next session: a base drawn once from the
/// pid and the clock (so a recycled pid does not repeat a dead process's
/// numbers), stepped by an odd constant per session, so no two sessions of
/// one process ever share one. Drawing each from the clock alone let two
/// daemon sessions started together on two CPUs collide (their cgroup
/// already existed).
fn session_number(pid: u32) -> u32 {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    };
    static BASE: OnceLock<u32> = OnceLock::new();
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let base = *BASE.get_or_init(|| pid ^ (crate::monotonic_ns() as u32).rotate_left(16));
    let nth = STARTED.fetch_add(1, Ordering::Relaxed);
    // An odd step is a bijection modulo 2^32: 2^32 sessions before a repeat.
    base.wrapping_add(nth.wrapping_mul(0x9e37_79b9))
}

/// Creates a session cgroup with the spec's limits, after removing sessions
/// left by an mcpwarden that died before it could clean up.
pub fn new_session(spec: &Spec) -> Result<Session, CgroupError> {
    for stale in reap_stale()? {
        tracing::warn!(
            "removed the stale session cgroup {} (its mcpwarden is gone)",
            stale.display()
        );
    }
    let hierarchy = Hierarchy::discover()?;
    let controllers = Controllers::discover(&hierarchy)?;
    let pid = std::process::id();
    let number = session_number(pid);
    let label = format!("session-{pid}-{number:08x}");
    let mut cgroup = SessionCgroup::create(&hierarchy, &label)?;
    cgroup.limit(&controllers, &spec.limits)?;
    Ok(Session {
        number,
        label,
        cgroup,
    })
}

/// Kills and removes the session cgroups whose mcpwarden is gone (the pid
/// their name starts with); returns their paths. Then, with nothing of
/// those sessions left to enforce for, removes what the dead processes
/// pinned in the kernel ([`crate::kernel::pins`]); that part is logged,
/// not returned: a pin left behind holds no one's process.
pub fn reap_stale() -> Result<Vec<std::path::PathBuf>, CgroupError> {
    let hierarchy = Hierarchy::discover()?;
    let controllers = Controllers::discover(&hierarchy)?;
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let reaped = hierarchy.reap_stale(&controllers, alive)?;
    // The pins of a pid whose sessions are still there stay with them.
    let owners: Vec<u32> = std::fs::read_dir(hierarchy.sessions_dir())
        .into_iter()
        .flatten()
        .filter_map(|entry| mcpwarden_sandbox::cgroup::owner_pid(entry.ok()?.file_name().to_str()?))
        .collect();
    match crate::kernel::pins::clean_stale(|pid| owners.contains(&pid)) {
        Ok(cleaned) => {
            for dir in cleaned {
                tracing::warn!(
                    "removed the kernel programs {} of an mcpwarden that is gone",
                    dir.display()
                );
            }
        }
        Err(e) => tracing::error!("cannot remove kernel programs left behind: {e}"),
    }
    Ok(reaped)
}

/// The helper's command line: `mcpwarden sandbox-exec --spec JSON
/// --traced-procs FILE [--procs FILE]... [--die-with-parent PID]
/// [--notify-fd FD] -- CMD...`. With `die_with_us`, the whole sandbox dies
/// with this process. With `notify`, the helper inherits that socket (and
/// no other process started meanwhile does) to send its seccomp listener.
pub fn helper_command(
    cgroup: &SessionCgroup,
    spec: &Spec,
    command: &[OsString],
    die_with_us: bool,
    notify: Option<&OwnedFd>,
) -> std::io::Result<Command> {
    // Our own image, even when the file was replaced since we started (a
    // package upgrade under a running daemon): helper and relay always
    // agree on the version.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let spec_json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut cmd = Command::new(exe);
    cmd.arg("sandbox-exec").arg("--spec").arg(spec_json);
    if die_with_us {
        cmd.arg("--die-with-parent")
            .arg(std::process::id().to_string());
    }
    let mut procs = cgroup.all_procs_files().into_iter();
    if let Some(traced) = procs.next() {
        cmd.arg("--traced-procs").arg(traced);
    }
    for limit in procs {
        cmd.arg("--procs").arg(limit);
    }
    if let Some(socket) = notify {
        let fd = socket.as_raw_fd();
        cmd.arg("--notify-fd").arg(fd.to_string());
        // SAFETY: runs in the forked child before exec; fcntl is
        // async-signal-safe and touches only that child's descriptor.
        unsafe {
            cmd.pre_exec(move || {
                // The descriptor is close-on-exec everywhere else.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.arg("--").args(command);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_numbers_never_repeat_within_a_process() {
        let numbers: std::collections::HashSet<u32> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..10_000)
                            .map(|_| super::session_number(7))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("thread"))
                .collect()
        });
        assert_eq!(numbers.len(), 40_000);
    }
}
