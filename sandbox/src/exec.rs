//! The exec helper: runs in the child, confines itself, then becomes the
//! tool server with `execvp`, so only the server's tree is confined and it
//! is confined from its very first instruction.
use std::{
    ffi::OsString,
    fs, io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

/// Why the helper could not become the server.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Joining the session cgroup failed.
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
    /// `execvp` failed.
    #[error("cannot execute {program:?}: {source}")]
    Exec {
        /// The program.
        program: OsString,
        /// Why.
        source: io::Error,
    },
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs_file`, then replaces it with `command`. Returns only on failure.
#[must_use = "it only returns on failure, with the reason"]
pub fn join_cgroup_and_exec(procs_file: &Path, command: &[OsString]) -> ExecError {
    let Some((program, args)) = command.split_first() else {
        return ExecError::NoCommand;
    };
    // Writing "0" moves the writing process itself.
    if let Err(source) = fs::write(procs_file, "0") {
        return ExecError::JoinCgroup {
            path: procs_file.to_owned(),
            source,
        };
    }
    let source = Command::new(program).args(args).exec();
    ExecError::Exec {
        program: program.clone(),
        source,
    }
}
