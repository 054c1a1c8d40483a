//! The server's view of the file system, built in its own mount namespace:
//! everything read-only, a private `/tmp` and `/dev/shm`, the granted
//! writable paths writable (or, in dry-run, throw-away overlays of them),
//! and a `/proc` of the server's own pid namespace. landlock then decides
//! which of the visible paths may be touched at all.
use std::{
    ffi::CString,
    fs,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{OFlag, open},
    mount::{MsFlags, mount},
    sys::stat::Mode,
};

use crate::spec::Spec;

/// A mount step failed; names the step and the path.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct MountError {
    /// The step.
    pub what: &'static str,
    /// The path it was applied to.
    pub path: PathBuf,
    /// The kernel's answer.
    pub source: nix::Error,
}

fn fail<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |source| MountError {
        what,
        path: path.to_owned(),
        source,
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets or clears read-only on the mount at `path` (and below, if `recursive`).
fn set_readonly(path: &Path, readonly: bool, recursive: bool) -> Result<(), MountError> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| MountError {
        what: "path with NUL",
        path: path.to_owned(),
        source: nix::Error::EINVAL,
    })?;
    let attr = MountAttr {
        attr_set: if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if readonly { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: a NUL-terminated path and a live, correctly sized mount_attr
    // that the kernel only reads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            flags,
            &raw const attr,
            size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(MountError {
            what: "mount_setattr",
            path: path.to_owned(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

fn bind(source: &Path, target: &Path) -> Result<(), MountError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind-mount onto", target))
}

fn tmpfs(target: &Path, size: &str) -> Result<(), MountError> {
    let options = format!("mode=1777,size={size}");
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(fail("mount tmpfs on", target))
}

/// A granted path that sits under a directory we are about to cover with a
/// fresh tmpfs: held open so it can be mounted back on top.
struct Kept {
    path: PathBuf,
    fd: OwnedFd,
    is_dir: bool,
}

impl Kept {
    fn source(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Recreates the mount point in the new tmpfs and mounts the original.
    fn restore(&self) -> Result<(), MountError> {
        if self.is_dir {
            fs::create_dir_all(&self.path)
        } else {
            self.path
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|()| fs::write(&self.path, b""))
        }
        .map_err(|e| MountError {
            what: "create mount point",
            path: self.path.clone(),
            source: io_errno(&e),
        })?;
        bind(&self.source(), &self.path)
    }
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Directories that get a fresh private tmpfs.
const PRIVATE: &[&str] = &["/tmp", "/dev/shm"];

/// Builds the view. Runs as root inside fresh mount and pid namespaces.
pub fn build(spec: &Spec) -> Result<(), MountError> {
    let root = Path::new("/");
    // Nothing we do here may leak back to the host.
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail("make private", root))?;

    // Granted paths inside the private directories survive their covering.
    let granted = spec.read.iter().chain(&spec.exec).chain(&spec.write);
    let mut kept = Vec::new();
    for path in granted {
        if PRIVATE
            .iter()
            .any(|p| path.starts_with(p) && path != Path::new(p))
            && let Ok(fd) = open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        {
            kept.push(Kept {
                path: path.clone(),
                fd,
                is_dir: path.is_dir(),
            });
        }
    }
    for dir in PRIVATE.iter().map(Path::new).filter(|d| d.is_dir()) {
        tmpfs(dir, "25%")?;
    }
    for k in &kept {
        k.restore()?;
    }

    // Writable paths become mounts of their own so that they can stay
    // writable once everything else is read-only.
    let writable: Vec<&PathBuf> = spec
        .write
        .iter()
        .filter(|p| p.exists() && !PRIVATE.iter().any(|d| Path::new(d) == p.as_path()))
        .filter(|p| !p.starts_with("/dev"))
        .collect();
    if spec.dry_run {
        overlay_all(&writable)?;
    } else {
        for path in &writable {
            bind(path, path)?;
        }
    }

    // A /proc for the new pid namespace: the server sees only its own tree.
    let proc = Path::new("/proc");
    mount(
        Some("proc"),
        proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(fail("mount proc on", proc))?;

    set_readonly(root, true, true)?;
    for dir in PRIVATE.iter().map(Path::new).filter(|d| d.is_dir()) {
        set_readonly(dir, false, false)?;
    }
    for path in &writable {
        set_readonly(path, false, false)?;
    }
    for k in kept.iter().filter(|k| spec.write.contains(&k.path)) {
        set_readonly(&k.path, false, false)?;
    }
    Ok(())
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let fail = |e: &std::io::Error| MountError {
        what: "copy owner and mode to",
        path: to.to_owned(),
        source: io_errno(e),
    };
    let meta = fs::metadata(from).map_err(|e| fail(&e))?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid())).map_err(|e| fail(&e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(|e| fail(&e))
}

/// Dry run: each writable directory becomes an overlay whose upper layer
/// lives in a tmpfs that disappears with the sandbox; a writable file is
/// replaced by a copy in that tmpfs.
fn overlay_all(writable: &[&PathBuf]) -> Result<(), MountError> {
    if writable.is_empty() {
        return Ok(());
    }
    // Under /tmp, which is already a private tmpfs: invisible to the host
    // and gone with the namespace.
    let scratch = Path::new("/tmp/.mcpwarden-dry-run");
    let mk = |p: &Path| {
        fs::create_dir_all(p).map_err(|e| MountError {
            what: "create",
            path: p.to_owned(),
            source: io_errno(&e),
        })
    };
    mk(scratch)?;
    for (i, path) in writable.iter().enumerate() {
        if path.is_dir() {
            let upper = scratch.join(format!("{i}/upper"));
            let work = scratch.join(format!("{i}/work"));
            mk(&upper)?;
            mk(&work)?;
            // The overlay's root takes the upper directory's owner and mode:
            // give it the original's, or the unprivileged server could not
            // write where it is allowed to.
            copy_owner_and_mode(path, &upper)?;
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                path.display(),
                upper.display(),
                work.display()
            );
            mount(
                Some("overlay"),
                path.as_path(),
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
            .map_err(fail("mount overlay on", path))?;
        } else {
            let copy = scratch.join(format!("{i}.file"));
            fs::copy(path, &copy).map_err(|e| MountError {
                what: "copy for dry run",
                path: (*path).clone(),
                source: io_errno(&e),
            })?;
            bind(&copy, path)?;
        }
    }
    Ok(())
}
