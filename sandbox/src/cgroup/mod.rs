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

use crate::spec::Limits;

mod layout;
pub use layout::{Controllers, Hierarchy, Place};

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
    /// A resource limit was asked for, but the host has no such controller.
    #[error("the {0} cgroup controller is available neither in cgroup v2 nor as a v1 hierarchy")]
    NoController(&'static str),
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
    pub fn reap_stale(
        &self,
        controllers: &Controllers,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Vec<PathBuf>, CgroupError> {
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
            let v1 = controllers.v1_dirs(&name);
            SessionCgroup {
                path: path.clone(),
                id,
                v1,
                removed: true,
            }
            .teardown(Duration::from_secs(5))?;
            reaped.push(path);
        }
        Ok(reaped)
    }
}

/// One session's cgroup. Dropping it kills what is left inside and removes
/// the directory; call [`SessionCgroup::remove`] to see errors.
#[derive(Debug)]
pub struct SessionCgroup {
    path: PathBuf,
    id: u64,
    /// Companion directories in v1 controller hierarchies (hybrid hosts).
    v1: Vec<PathBuf>,
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
            v1: Vec::new(),
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

    /// Every `cgroup.procs` a server must join: the v2 one first, then any
    /// v1 companions that carry its resource limits.
    #[must_use]
    pub fn all_procs_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.procs_file())
            .chain(self.v1.iter().map(|d| d.join("cgroup.procs")))
            .collect()
    }

    /// Applies resource limits wherever this host keeps each controller:
    /// the v2 files (`memory.max`, `pids.max`, `cpu.max`) or companion v1
    /// cgroups (`memory.limit_in_bytes`, `pids.max`, `cpu.cfs_quota_us`).
    pub fn limit(&mut self, controllers: &Controllers, limits: &Limits) -> Result<(), CgroupError> {
        let name = self
            .path
            .file_name()
            .map(std::ffi::OsStr::to_owned)
            .unwrap_or_default();
        let wanted = [
            (
                "memory",
                limits.memory.map(|m| {
                    (
                        vec![("memory.max", m.to_string())],
                        vec![("memory.limit_in_bytes", m.to_string())],
                    )
                }),
            ),
            (
                "pids",
                Some((
                    vec![("pids.max", limits.pids.to_string())],
                    vec![("pids.max", limits.pids.to_string())],
                )),
            ),
            (
                "cpu",
                limits.cpu_millis.map(|c| {
                    let quota = (c * 100).to_string(); // per 100 ms period
                    (
                        vec![("cpu.max", format!("{quota} 100000"))],
                        vec![
                            ("cpu.cfs_period_us", "100000".to_owned()),
                            ("cpu.cfs_quota_us", quota),
                        ],
                    )
                }),
            ),
        ];
        for (controller, files) in wanted {
            let Some((v2_files, v1_files)) = files else {
                continue;
            };
            match controllers.place(controller) {
                Some(Place::V2) => {
                    let sessions = self.path.parent().unwrap_or(&self.path);
                    enable(sessions.parent().unwrap_or(sessions), controller)?;
                    enable(sessions, controller)?;
                    for (file, value) in v2_files {
                        write(&self.path.join(file), &value)?;
                    }
                }
                Some(Place::V1(mount)) => {
                    let dir = mount.join("mcpwarden").join(&name);
                    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
                    if !self.v1.contains(&dir) {
                        self.v1.push(dir.clone());
                    }
                    for (file, value) in v1_files {
                        write(&dir.join(file), &value)?;
                    }
                }
                None => return Err(CgroupError::NoController(controller)),
            }
        }
        Ok(())
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
        for dir in std::iter::once(&self.path).chain(&self.v1) {
            remove_when_released(dir, deadline)?;
        }
        for dir in std::iter::once(&self.path).chain(&self.v1) {
            if let Some(parent) = dir.parent() {
                // Fails with EBUSY while other sessions live: that is fine.
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }
}

/// rmdir, retried while the kernel is still releasing the last task.
fn remove_when_released(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc_ebusy()) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("remove", dir)(e)),
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

/// Turns `controller` on for the children of `dir` (v2 `subtree_control`).
fn enable(dir: &Path, controller: &str) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let on = fs::read_to_string(&file).unwrap_or_default();
    if on.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write(&file, &format!("+{controller}"))
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

    #[test]
    fn hybrid_hosts_keep_limits_in_v1_hierarchies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy {
            root: dir.path().join("unified"),
        };
        fs::create_dir(h.root()).expect("mkdir");
        fs::write(h.root().join("cgroup.controllers"), "hugetlb\n").expect("write");
        let mountinfo = format!(
            "31 29 0:28 / {m} rw shared:11 - cgroup cgroup rw,memory\n32 29 0:29 / {p} rw - cgroup cgroup rw,pids\n\
             33 29 0:30 / {c} rw - cgroup cgroup rw,cpu\n",
            m = dir.path().join("memory").display(),
            p = dir.path().join("pids").display(),
            c = dir.path().join("cpu").display(),
        );
        let c = Controllers::from_parts(&h, &mountinfo);
        assert_eq!(
            c.place("memory"),
            Some(&Place::V1(dir.path().join("memory")))
        );
        assert_eq!(c.place("cpu"), Some(&Place::V1(dir.path().join("cpu"))));
        let mut cg = fixture_session(&h);
        cg.limit(
            &c,
            &Limits {
                memory: Some(64 << 20),
                pids: 32,
                cpu_millis: Some(500),
                nofile: 64,
            },
        )
        .expect("limits");
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).expect(p);
        assert_eq!(
            read("memory/mcpwarden/s/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("pids/mcpwarden/s/pids.max"), "32");
        assert_eq!(read("cpu/mcpwarden/s/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/mcpwarden/s/cpu.cfs_period_us"), "100000");
        assert_eq!(cg.all_procs_files().len(), 4, "v2 plus three v1 companions");
        cg.removed = true;
    }

    #[test]
    fn pure_v2_hosts_keep_limits_in_the_session_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy {
            root: dir.path().to_owned(),
        };
        fs::write(
            h.root().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        fs::write(h.root().join("cgroup.subtree_control"), "memory pids\n").expect("write");
        let c = Controllers::from_parts(&h, "");
        assert_eq!(c.place("pids"), Some(&Place::V2));
        let mut cg = fixture_session(&h);
        cg.limit(
            &c,
            &Limits {
                memory: Some(1 << 30),
                pids: 100,
                cpu_millis: Some(1500),
                nofile: 64,
            },
        )
        .expect("limits");
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).expect(p);
        assert_eq!(read("mcpwarden/s/memory.max"), (1u64 << 30).to_string());
        assert_eq!(read("mcpwarden/s/pids.max"), "100");
        assert_eq!(read("mcpwarden/s/cpu.max"), "150000 100000");
        // cpu was not yet delegated from the root; memory already was.
        assert_eq!(read("cgroup.subtree_control"), "+cpu");
        assert_eq!(
            cg.all_procs_files(),
            vec![dir.path().join("mcpwarden/s/cgroup.procs")]
        );
        cg.removed = true;
    }

    #[test]
    fn a_missing_controller_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy {
            root: dir.path().to_owned(),
        };
        let mut cg = fixture_session(&h);
        let err = cg
            .limit(
                &Controllers::default(),
                &Limits {
                    pids: 8,
                    ..Limits::default()
                },
            )
            .unwrap_err();
        assert!(matches!(err, CgroupError::NoController("pids")), "{err}");
        cg.removed = true;
    }

    /// A session "cgroup" in a plain directory (no kernel behind it).
    fn fixture_session(h: &Hierarchy) -> SessionCgroup {
        let path = h.sessions_dir().join("s");
        fs::create_dir_all(&path).expect("mkdir");
        SessionCgroup {
            path,
            id: 0,
            v1: Vec::new(),
            removed: false,
        }
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
            h.reap_stale(&Controllers::default(), |_| false)
                .expect("no sessions dir"),
            Vec::<PathBuf>::new()
        );
        fs::create_dir(h.sessions_dir()).expect("mkdir");
        fs::create_dir(h.sessions_dir().join("not-a-session")).expect("mkdir");
        assert_eq!(
            h.reap_stale(&Controllers::default(), |_| false)
                .expect("nothing stale"),
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
