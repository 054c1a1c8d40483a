//! cgroup v2 discovery and per-session cgroups.
//!
//! Hosts come in two layouts: pure v2 at `/sys/fs/cgroup`, and hybrid (v1
//! controllers plus a v2 hierarchy at `/sys/fs/cgroup/unified`). Either way
//! the v2 hierarchy is where BPF programs see cgroup ids and where
//! `cgroup.kill` ends a whole tree, so that is the one found here.
use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// Errors of cgroup handling; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("cannot read {path}: {source}")]
    MountInfo {
        /// The file read.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No cgroup2 file system is mounted.
    #[error(
        "no cgroup v2 hierarchy is mounted (looked for fstype cgroup2 in /proc/self/mountinfo); \
         mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoV2,
    /// A file-system operation on a cgroup failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The cgroup file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Processes were still in the cgroup after it was killed.
    #[error("cgroup {path} still has processes {pids:?} after cgroup.kill")]
    StillPopulated {
        /// The cgroup.
        path: PathBuf,
        /// What was left.
        pids: Vec<u32>,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The cgroup v2 hierarchy of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    /// Finds the cgroup v2 mount of this process's mount namespace.
    pub fn discover() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|source| CgroupError::MountInfo {
            path: path.to_owned(),
            source,
        })?;
        Self::from_mountinfo(&text).ok_or(CgroupError::NoV2)
    }

    /// Finds the first cgroup2 mount point in mountinfo text (proc(5)).
    #[must_use]
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        text.lines().find_map(|line| {
            // Fields: id parent major:minor root mount-point options
            // [optional...] - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let mount_point = left.split_whitespace().nth(4)?;
            Some(Self {
                root: PathBuf::from(unescape_octal(mount_point)),
            })
        })
    }

    /// The mount point, e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where mcpwarden puts its session cgroups.
    #[must_use]
    pub fn sessions_dir(&self) -> PathBuf {
        self.root.join("mcpwarden")
    }
}

/// The pid of the process that owns a session cgroup, from its name
/// `session-<pid>-<nonce>`.
#[must_use]
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("session-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

impl Hierarchy {
    /// Kills and removes session cgroups whose owning mcpwarden process is
    /// gone (it was killed before it could tear down). `alive` answers
    /// whether a pid still runs. Returns the cgroups removed.
    pub fn reap_stale(&self, alive: impl Fn(u32) -> bool) -> Result<Vec<PathBuf>, CgroupError> {
        let dir = self.sessions_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        let mut reaped = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(owner_pid) else {
                continue;
            };
            if alive(pid) || !entry.path().is_dir() {
                continue;
            }
            let path = entry.path();
            let id = fs::metadata(&path).map_err(io_err("stat", &path))?.ino();
            SessionCgroup {
                path: path.clone(),
                id,
                removed: true,
            }
            .teardown(Duration::from_secs(5))?;
            reaped.push(path);
        }
        Ok(reaped)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One session's cgroup. Dropping it kills what is left inside and removes
/// the directory; call [`SessionCgroup::remove`] to see errors.
#[derive(Debug)]
pub struct SessionCgroup {
    path: PathBuf,
    id: u64,
    removed: bool,
}

impl SessionCgroup {
    /// Creates `<hierarchy>/mcpwarden/<name>`.
    pub fn create(hierarchy: &Hierarchy, name: &str) -> Result<Self, CgroupError> {
        let parent = hierarchy.sessions_dir();
        let path = parent.join(name);
        // The parent may be removed by another session's teardown between
        // our mkdir calls; one retry covers that race.
        for attempt in 0..2 {
            match fs::create_dir(&parent) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &parent)(e)),
            }
            match fs::create_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => {}
                Err(e) => return Err(io_err("create", &path)(e)),
            }
        }
        let id = fs::metadata(&path).map_err(io_err("stat", &path))?.ino();
        Ok(Self {
            path,
            id,
            removed: false,
        })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id, as `bpf_get_current_cgroup_id()` reports it: the
    /// inode number of the directory.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `cgroup.procs`, which a process writes `0` to in order to join.
    #[must_use]
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        read_pids(&self.procs_file())
    }

    /// SIGKILLs every process in the cgroup and its descendants at once,
    /// through `cgroup.kill` (Linux 5.14+), falling back to signalling each
    /// listed process where that file does not exist.
    pub fn kill(&self) -> Result<(), CgroupError> {
        let kill_file = self.path.join("cgroup.kill");
        match fs::write(&kill_file, "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                for pid in self.pids()? {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Ok(())
            }
            Err(e) => Err(io_err("write", &kill_file)(e)),
        }
    }

    /// Kills what is left, waits (up to `timeout`) for the cgroup to empty
    /// and removes it. The shared parent directory is removed too when this
    /// was its last session.
    pub fn remove(mut self, timeout: Duration) -> Result<(), CgroupError> {
        self.removed = true;
        self.teardown(timeout)
    }

    fn teardown(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                break;
            }
            self.kill()?;
            if Instant::now() >= deadline {
                return Err(CgroupError::StillPopulated {
                    path: self.path.clone(),
                    pids,
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
        // rmdir can race the kernel's own release of the last task.
        let mut result = fs::remove_dir(&self.path);
        while let Err(e) = &result {
            if e.raw_os_error() != Some(libc_ebusy()) || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(5));
            result = fs::remove_dir(&self.path);
        }
        result.map_err(io_err("remove", &self.path))?;
        if let Some(parent) = self.path.parent() {
            // Fails with EBUSY while other sessions live: that is fine.
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

const fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.teardown(Duration::from_secs(2));
        }
    }
}

fn read_pids(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
29 1 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
30 29 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
31 29 0:28 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory
";
    const PURE_V2: &str = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
29 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v2_mount_in_a_hybrid_layout() {
        let h = Hierarchy::from_mountinfo(HYBRID).expect("cgroup2 present");
        assert_eq!(h.root(), Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(
            h.sessions_dir(),
            Path::new("/sys/fs/cgroup/unified/mcpwarden")
        );
    }

    #[test]
    fn finds_the_v2_mount_in_a_pure_v2_layout() {
        let h = Hierarchy::from_mountinfo(PURE_V2).expect("cgroup2 present");
        assert_eq!(h.root(), Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn no_v2_mount_is_none() {
        let only_v1 = "31 29 0:28 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n";
        assert_eq!(Hierarchy::from_mountinfo(only_v1), None);
        assert_eq!(Hierarchy::from_mountinfo("garbage without separator"), None);
    }

    #[test]
    fn mount_points_with_escaped_spaces_are_unescaped() {
        let line = "30 29 0:27 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::from_mountinfo(line).expect("cgroup2 present");
        assert_eq!(h.root(), Path::new("/mnt/my cgroups"));
    }

    #[test]
    fn session_names_carry_their_owner() {
        assert_eq!(owner_pid("session-1234-00ab00cd"), Some(1234));
        assert_eq!(owner_pid("doctor-1234"), None);
        assert_eq!(owner_pid("session-x-1"), None);
    }

    #[test]
    fn reaping_a_hierarchy_without_sessions_is_a_no_op() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy {
            root: dir.path().to_owned(),
        };
        assert_eq!(
            h.reap_stale(|_| false).expect("no sessions dir"),
            Vec::<PathBuf>::new()
        );
        fs::create_dir(h.sessions_dir()).expect("mkdir");
        fs::create_dir(h.sessions_dir().join("not-a-session")).expect("mkdir");
        assert_eq!(
            h.reap_stale(|_| false).expect("nothing stale"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn pids_of_a_missing_cgroup_are_empty_and_garbage_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_pids(&dir.path().join("nope")).expect("missing is empty"),
            Vec::<u32>::new()
        );
        let f = dir.path().join("cgroup.procs");
        fs::write(&f, "12\n\n34\nxx\n").expect("write");
        assert_eq!(read_pids(&f).expect("read"), vec![12, 34]);
    }
}
