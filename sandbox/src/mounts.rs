//! The server's view of the file system, built in its own mount namespace:
//! a new root holding only the granted paths (nothing else of the host
//! exists for the server), read-only but for the granted writable paths (or,
//! in dry-run, throw-away overlays of them), a private `/tmp` and `/dev/shm`,
//! and a `/proc` of the server's own pid namespace. landlock then refines
//! what may be done with what is there (read, write, execute, ports).
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

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn io_fail<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |e| MountError {
        what,
        path: path.to_owned(),
        source: io_errno(&e),
    }
}

/// What a granted path is on the host.
enum Shape {
    Dir,
    File,
    /// Recreated as the same link in the new root (merged-/usr systems
    /// link `/lib` to `usr/lib`).
    Symlink(PathBuf),
}

/// A granted path, held open so that it can be mounted into the new root
/// even once the staging mounts cover where it lived (e.g. under `/tmp`).
struct Grant {
    path: PathBuf,
    fd: Option<OwnedFd>,
    shape: Shape,
}

impl Grant {
    fn source(&self) -> PathBuf {
        self.fd.as_ref().map_or_else(
            || self.path.clone(),
            |fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        )
    }
}

/// Mounted fresh in the new root rather than bound from the host.
const FRESH: &[&str] = &["/proc", "/tmp", "/dev/shm"];
/// Whether `path` is provided fresh rather than bound: the fresh mount
/// points themselves, and everything in /proc. Grants below `/tmp` and
/// `/dev/shm` are bound into the fresh mounts.
fn is_fresh(path: &Path) -> bool {
    path.starts_with("/proc") || FRESH.iter().any(|f| path == Path::new(f))
}

/// Links every /dev has.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// The granted paths that exist, parents before children (a child mounted
/// first would be covered by its parent), one entry each.
fn grants(spec: &Spec) -> Vec<Grant> {
    let mut paths: Vec<(&PathBuf, bool)> = spec
        .read
        .iter()
        .chain(&spec.exec)
        .map(|p| (p, false))
        .chain(spec.write.iter().map(|p| (p, true)))
        .filter(|(p, _)| !is_fresh(p))
        .collect();
    paths.sort_by_key(|(p, w)| (p.components().count(), (*p).clone(), !*w));
    paths.dedup_by(|later, kept| later.0 == kept.0);
    paths
        .into_iter()
        .filter_map(|(path, _)| {
            let meta = fs::symlink_metadata(path).ok()?;
            let (shape, fd) = if meta.file_type().is_symlink() {
                (Shape::Symlink(fs::read_link(path).ok()?), None)
            } else {
                let fd = open(
                    path.as_path(),
                    OFlag::O_PATH | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .ok()?;
                (
                    if meta.is_dir() {
                        Shape::Dir
                    } else {
                        Shape::File
                    },
                    Some(fd),
                )
            };
            Some(Grant {
                path: path.clone(),
                fd,
                shape,
            })
        })
        .collect()
}

/// Builds the view. Runs as root inside fresh mount and pid namespaces.
///
/// A new root on a tmpfs holds bind mounts of the granted paths only, a
/// fresh `/proc`, `/tmp` and `/dev/shm`, and the usual `/dev` links; the
/// process pivots into it and drops the old root, so nothing else of the
/// host is even visible. Then everything but the writable places is made
/// read-only.
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
    let grants = grants(spec);

    let staging = Path::new("/tmp");
    tmpfs(staging, "1M")?;
    let at = |p: &Path| staging.join(p.strip_prefix("/").unwrap_or(p));
    for dir in ["proc", "tmp", "dev/shm"] {
        fs::create_dir_all(staging.join(dir)).map_err(io_fail("create", &staging.join(dir)))?;
    }
    // Fresh mounts first: grants below them are bound on top.
    tmpfs(&staging.join("tmp"), "25%")?;
    tmpfs(&staging.join("dev/shm"), "25%")?;
    for grant in &grants {
        let target = at(&grant.path);
        match &grant.shape {
            Shape::Symlink(to) => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_fail("create", parent))?;
                }
                std::os::unix::fs::symlink(to, &target).map_err(io_fail("link", &target))?;
                continue;
            }
            Shape::Dir => fs::create_dir_all(&target).map_err(io_fail("create", &target))?,
            Shape::File => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_fail("create", parent))?;
                }
                fs::write(&target, b"").map_err(io_fail("create", &target))?;
            }
        }
        bind(&grant.source(), &target)?;
    }
    for (link, to) in DEV_LINKS {
        let target = at(Path::new(link));
        if fs::symlink_metadata(&target).is_err() {
            std::os::unix::fs::symlink(to, &target).map_err(io_fail("link", &target))?;
        }
    }
    // A /proc for the new pid namespace: the server sees only its own tree.
    let proc = staging.join("proc");
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(fail("mount proc on", &proc))?;

    let old = staging.join(".old-root");
    fs::create_dir(&old).map_err(io_fail("create", &old))?;
    nix::unistd::pivot_root(staging, &old).map_err(fail("pivot_root into", staging))?;
    nix::unistd::chdir(root).map_err(fail("chdir", root))?;
    let old = Path::new("/.old-root");
    nix::mount::umount2(old, nix::mount::MntFlags::MNT_DETACH)
        .map_err(fail("detach the old root", old))?;
    fs::remove_dir(old).map_err(io_fail("remove", old))?;
    drop(grants);

    let writable: Vec<&PathBuf> = spec
        .write
        .iter()
        .filter(|p| !is_fresh(p) && !p.starts_with("/dev") && p.exists())
        .collect();
    if spec.dry_run {
        overlay_all(&writable)?;
    }
    set_readonly(root, true, true)?;
    for dir in ["/tmp", "/dev/shm"].iter().map(Path::new) {
        set_readonly(dir, false, false)?;
    }
    for path in &writable {
        set_readonly(path, false, false)?;
    }
    // Writable device nodes (/dev/null...) need no writable mount: writing
    // to a device does not modify the file system.
    Ok(())
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let what = "copy owner and mode to";
    let meta = fs::metadata(from).map_err(io_fail(what, to))?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid())).map_err(io_fail(what, to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_fail(what, to))
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
    let mk = |p: &Path| fs::create_dir_all(p).map_err(io_fail("create", p));
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
            fs::copy(path, &copy).map_err(io_fail("copy for dry run", path))?;
            bind(&copy, path)?;
        }
    }
    Ok(())
}
