//! Starting a tool server confined: the session cgroup with its limits, and
//! the command line of the exec helper (`mcpwarden sandbox-exec`) that
//! confines itself and execs the server (see `mcpwarden_sandbox::exec`).
use std::{ffi::OsString, path::Path, process::Command};

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

/// Creates a session cgroup with the spec's limits, after removing sessions
/// left by an mcpwarden that died before it could clean up.
pub fn new_session(spec: &Spec) -> Result<Session, CgroupError> {
    let hierarchy = Hierarchy::discover()?;
    let controllers = Controllers::discover(&hierarchy)?;
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for stale in hierarchy.reap_stale(&controllers, alive)? {
        tracing::warn!(
            "removed the stale session cgroup {} (its mcpwarden is gone)",
            stale.display()
        );
    }
    let pid = std::process::id();
    let number = pid ^ (crate::monotonic_ns() as u32).rotate_left(16);
    let label = format!("session-{pid}-{number:08x}");
    let mut cgroup = SessionCgroup::create(&hierarchy, &label)?;
    cgroup.limit(&controllers, &spec.limits)?;
    Ok(Session {
        number,
        label,
        cgroup,
    })
}

/// The helper's command line: `mcpwarden sandbox-exec --spec JSON
/// --traced-procs FILE [--procs FILE]... -- CMD...`.
pub fn helper_command(
    cgroup: &SessionCgroup,
    spec: &Spec,
    command: &[OsString],
) -> std::io::Result<Command> {
    let exe = std::env::current_exe()?;
    let spec_json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut cmd = Command::new(exe);
    cmd.arg("sandbox-exec").arg("--spec").arg(spec_json);
    let mut procs = cgroup.all_procs_files().into_iter();
    if let Some(traced) = procs.next() {
        cmd.arg("--traced-procs").arg(traced);
    }
    for limit in procs {
        cmd.arg("--procs").arg(limit);
    }
    cmd.arg("--").args(command);
    Ok(cmd)
}
