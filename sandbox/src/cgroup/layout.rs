//! Where this host keeps cgroups: the v2 hierarchy (pure v2 at
//! `/sys/fs/cgroup`, or the hybrid layout's `/sys/fs/cgroup/unified`) and
//! the memory, pids and cpu controllers (in v2, or in v1 hierarchies).
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::CgroupError;

/// The cgroup v2 hierarchy of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub(super) root: PathBuf,
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

/// Where a resource controller lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the v2 hierarchy.
    V2,
    /// In a v1 hierarchy mounted here.
    V1(PathBuf),
}

/// Where this host keeps the memory, pids and cpu controllers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controllers {
    places: Vec<(&'static str, Place)>,
}

impl Controllers {
    /// Reads `cgroup.controllers` of the v2 root and the v1 mounts of
    /// `/proc/self/mountinfo`.
    pub fn discover(hierarchy: &Hierarchy) -> Result<Self, CgroupError> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(mountinfo).map_err(|source| CgroupError::MountInfo {
            path: mountinfo.to_owned(),
            source,
        })?;
        Ok(Self::from_parts(hierarchy, &text))
    }

    /// As [`Controllers::discover`], from given mountinfo text.
    #[must_use]
    pub fn from_parts(hierarchy: &Hierarchy, mountinfo: &str) -> Self {
        let v2 =
            fs::read_to_string(hierarchy.root().join("cgroup.controllers")).unwrap_or_default();
        let mut places = Vec::new();
        for controller in ["memory", "pids", "cpu"] {
            if v2.split_whitespace().any(|c| c == controller) {
                places.push((controller, Place::V2));
                continue;
            }
            let v1 = mountinfo.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mut right = right.split_whitespace();
                if right.next()? != "cgroup" {
                    return None;
                }
                let options = right.nth(1)?;
                options
                    .split(',')
                    .any(|o| o == controller)
                    .then(|| left.split_whitespace().nth(4).map(unescape_octal))?
            });
            if let Some(mount) = v1 {
                places.push((controller, Place::V1(PathBuf::from(mount))));
            }
        }
        Self { places }
    }

    /// The existing v1 companion directories of session `name`.
    #[must_use]
    pub fn v1_dirs(&self, name: &std::ffi::OsStr) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .places
            .iter()
            .filter_map(|(_, p)| match p {
                Place::V1(mount) => Some(mount.join("mcpwarden").join(name)),
                Place::V2 => None,
            })
            .filter(|d| d.is_dir())
            .collect();
        dirs.dedup();
        dirs
    }

    /// Where `controller` lives, if anywhere.
    #[must_use]
    pub fn place(&self, controller: &str) -> Option<&Place> {
        self.places
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, p)| p)
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
}
