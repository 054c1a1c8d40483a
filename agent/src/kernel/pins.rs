//! The tracer's kernel objects pinned in bpffs, and what a dead mcpwarden
//! pinned cleaned up.
//!
//! While a tracer is loaded, its attachments (the raw syscall hooks, the
//! sched tracepoints, each session's cgroup network programs) and its two
//! call tables are pinned under `/sys/fs/bpf/mcpwarden/<pid>-<start>`, one
//! directory per mcpwarden process (`<start>`: its start time in clock
//! ticks, so a recycled pid is not taken for the process that pinned).
//! Without the pins, the kernel's enforcement would end with mcpwarden's
//! descriptors: a link detaches when its last descriptor closes, and a
//! tail-call table (`PROG_ARRAY`) is emptied when its last user reference
//! goes, after which the syscall hook reaches no handler. A killed
//! mcpwarden takes its sandboxes with it, but not in the same instant: the
//! pins keep every rule of its sessions in force until they are dead and
//! the next mcpwarden to start cleans up ([`clean_stale`], after the stale
//! session cgroups are killed). An mcpwarden that ends normally removes its
//! directory, and nothing of it stays in the kernel.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::Map,
    programs::links::{FdLink, PinnedLink},
};

use super::KernelError;

/// Where bpffs is mounted on every distribution.
const BPFFS: &str = "/sys/fs/bpf";
/// mcpwarden's directory in it.
const ROOT: &str = "/sys/fs/bpf/mcpwarden";

/// Mounts bpffs at `/sys/fs/bpf` unless it is there. Two processes that
/// find it missing at once would each mount one, the second hiding the
/// first's pins from everyone: the mount is made under a lock on the
/// directory below it, and checked again once the lock is held.
pub fn ensure_bpffs() -> Result<(), KernelError> {
    let err = |what: &'static str| {
        move |e: nix::Error| KernelError::Bpffs {
            what,
            source: e.into(),
        }
    };
    let mounted = || -> Result<bool, KernelError> {
        let fs = nix::sys::statfs::statfs(BPFFS).map_err(err("statfs"))?;
        Ok(fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if mounted()? {
        return Ok(());
    }
    let below = fs::File::open(BPFFS).map_err(|source| KernelError::Bpffs {
        what: "open",
        source,
    })?;
    let _lock = nix::fcntl::Flock::lock(below, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| err("lock")(e))?;
    if mounted()? {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(err("mount"))
}

/// This process's name in `ROOT`: `<pid>-<start time>`.
fn instance_name(pid: u32) -> Option<String> {
    Some(format!("{pid}-{}", start_time(pid)?))
}

/// A process's start time (clock ticks after boot), field 22 of
/// `/proc/PID/stat`; `None` when there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself: count from the
/// last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    // Fields 3.. follow: the start time is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// One process's pin directory. Dropping it removes what is left in it:
/// the call tables go, and any link still pinned detaches.
#[derive(Debug)]
pub(crate) struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// Makes this process's directory, empty.
    pub(crate) fn create() -> Result<Self, KernelError> {
        ensure_bpffs()?;
        let pid = std::process::id();
        let name = instance_name(pid).ok_or_else(|| KernelError::Pin {
            path: PathBuf::from(format!("/proc/{pid}/stat")),
            source: io::Error::other("cannot read this process's start time"),
        })?;
        let dir = Path::new(ROOT).join(name);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| KernelError::Pin { path, source }
        };
        match fs::create_dir(ROOT) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_err(Path::new(ROOT))(e));
            }
            _ => {}
        }
        // Left by an earlier tracer of this process that could not remove
        // it: nothing in it is in use any more.
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        Ok(Self { dir })
    }

    /// Pins `link` as `name`: it stays attached until [`unpin`]ned (or the
    /// directory is removed). Only a kernel link (`bpf_link`) can be
    /// pinned; an attachment made the older way is an error here.
    pub(crate) fn link<L>(&self, name: &str, link: L) -> Result<PinnedLink, KernelError>
    where
        L: TryInto<FdLink>,
        L::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = self.dir.join(name);
        let pinned = link
            .try_into()
            .map_err(io::Error::other)
            .and_then(|link| link.pin(&path).map_err(io::Error::other));
        pinned.map_err(|source| KernelError::Pin { path, source })
    }

    /// Pins `map` as `name`; returns the pin's path.
    pub(crate) fn map(&self, name: &str, map: &Map) -> Result<PathBuf, KernelError> {
        let path = self.dir.join(name);
        match map.pin(&path) {
            Ok(()) => Ok(path),
            Err(e) => Err(KernelError::Pin {
                path,
                source: io::Error::other(e),
            }),
        }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove the pins at {}: {e}", self.dir.display());
        }
    }
}

/// Removes a link's pin and hands back its descriptor: the link detaches
/// when that is dropped. A pin that cannot be removed is reported; it goes
/// with the directory.
pub(crate) fn unpin(link: PinnedLink) -> Option<FdLink> {
    match link.unpin() {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("cannot remove a link's pin: {e}");
            None
        }
    }
}

/// One mcpwarden process's pin directory.
#[derive(Debug)]
pub struct Instance {
    /// The directory.
    pub dir: PathBuf,
    /// The process that made it.
    pub pid: u32,
    /// Whether that process still runs (the pid, with its start time).
    pub alive: bool,
}

/// The pin directories under `ROOT`.
pub fn instances() -> Result<Vec<Instance>, KernelError> {
    let err = |source| KernelError::Pin {
        path: ROOT.into(),
        source,
    };
    let entries = match fs::read_dir(ROOT) {
        Ok(entries) => entries,
        // Never pinned here (or bpffs not mounted: nothing could be).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        if let Some((pid, start)) = name.to_str().and_then(parse_instance) {
            found.push(Instance {
                dir: entry.path(),
                pid,
                alive: start_time(pid) == Some(start),
            });
        }
    }
    Ok(found)
}

/// Removes the pin directories of mcpwarden processes that are gone, and
/// so detaches and unloads what they left in the kernel. Call it once the
/// session cgroups those processes left are killed, so their rules hold
/// until nothing is left to hold them for; `keep` names the pids whose
/// sessions are still there (their pins stay). Returns the directories
/// removed.
pub fn clean_stale(keep: impl Fn(u32) -> bool) -> Result<Vec<PathBuf>, KernelError> {
    let mut cleaned = Vec::new();
    for Instance { dir, pid, alive } in instances()? {
        if alive || keep(pid) {
            continue;
        }
        fs::remove_dir_all(&dir).map_err(|source| KernelError::Pin {
            path: dir.clone(),
            source,
        })?;
        cleaned.push(dir);
    }
    Ok(cleaned)
}

/// `<pid>-<start>` of a pin directory's name.
fn parse_instance(name: &str) -> Option<(u32, u64)> {
    let (pid, start) = name.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat =
            "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("1234 (x"), None);
        let own = start_time(std::process::id()).expect("this process has a start time");
        assert!(own > 0);
    }

    #[test]
    fn instance_names_round_trip_and_refuse_strangers() {
        assert_eq!(parse_instance("42-1234"), Some((42, 1234)));
        assert_eq!(parse_instance("maps.debug"), None);
        assert_eq!(parse_instance("42"), None);
        let name = instance_name(std::process::id()).expect("own name");
        let (pid, start) = parse_instance(&name).expect("parses");
        assert_eq!(pid, std::process::id());
        assert_eq!(start_time(pid), Some(start));
    }
}
