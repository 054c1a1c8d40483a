//! landlock: file-system, TCP and scope rules at the best ABI the kernel
//! offers, with an explicit check that the ruleset is fully enforced.
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError,
    RulesetStatus, Scope,
};

use crate::spec::Spec;

/// Errors of applying landlock.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel has no landlock.
    #[error("landlock is not available on this kernel ({0})")]
    Unavailable(String),
    /// The crate or the kernel refused the ruleset.
    #[error("landlock: {0}")]
    Ruleset(#[from] RulesetError),
    /// In enforce mode, anything short of full enforcement is an error.
    #[error(
        "landlock ruleset is only {0:?} on this kernel (ABI {1}); enforce mode requires it fully enforced"
    )]
    NotFullyEnforced(RulesetStatus, i32),
}

/// The landlock ABI version the kernel offers (`landlock_create_ruleset`
/// with the VERSION flag), or why there is none.
pub fn kernel_abi() -> Result<i32, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attr, size 0 and the VERSION flag the syscall only
    // returns the ABI version; it reads and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(abi as i32)
}

/// Read without execute.
fn read_only(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_read(abi) & !AccessFs::Execute
}

/// Everything but execute: a writable directory is no place to run code from.
fn read_write(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_all(abi) & !AccessFs::Execute
}

/// Applies the spec's rules to the calling thread and (through
/// no_new_privs and inheritance) to everything it executes.
pub fn restrict(spec: &Spec) -> Result<RestrictionStatus, LandlockError> {
    let raw = kernel_abi().map_err(LandlockError::Unavailable)?;
    // The kernel's own ABI, not the crate's newest: asking for more than the
    // kernel has would be reported as partial enforcement.
    let abi = ABI::from(raw);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?;
    if raw >= 4 {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    if raw >= 6 {
        ruleset = ruleset.scope(Scope::AbstractUnixSocket | Scope::Signal)?;
    }
    let mut created = ruleset.create()?;
    let grants = [
        (&spec.read, read_only(abi)),
        (&spec.exec, AccessFs::from_read(abi)),
        (&spec.write, read_write(abi)),
    ];
    for (paths, access) in grants {
        for path in paths {
            // A path that does not exist cannot be reached either way.
            let Ok(fd) = PathFd::new(path) else { continue };
            let access = if Path::new(path).is_dir() {
                access
            } else {
                access & AccessFs::from_file(abi)
            };
            created = created.add_rule(PathBeneath::new(fd, access))?;
        }
    }
    if raw >= 4 {
        for &port in &spec.connect {
            created = created.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
        }
        for &port in &spec.bind {
            created = created.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
        }
    }
    let status = created.restrict_self()?;
    if spec.enforce && status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::NotFullyEnforced(status.ruleset, raw));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_and_readable_grants_never_include_execute() {
        for abi in [ABI::V1, ABI::V4, ABI::V7] {
            assert!(!read_only(abi).contains(AccessFs::Execute));
            assert!(!read_write(abi).contains(AccessFs::Execute));
            assert!(read_write(abi).contains(AccessFs::WriteFile));
            assert!(AccessFs::from_read(abi).contains(AccessFs::Execute));
        }
    }

    #[test]
    fn this_kernel_reports_an_abi() {
        // Our machines run 6.18 with landlock; a kernel without it says why.
        match kernel_abi() {
            Ok(abi) => assert!(abi >= 1),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
