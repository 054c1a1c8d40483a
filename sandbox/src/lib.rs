//! PES, the prompt execution sandbox: how mcpwarden starts a tool server.
//!
//! A cgroup per session (whose v2 inode is the cgroup id the kernel programs
//! filter on, with memory/pids/cpu limits on v2 or v1 controllers), and an
//! exec helper ([`exec`]) that joins it and confines itself before it execs
//! the server: namespaces and a root of only the granted paths ([`mounts`]), an
//! unprivileged uid, rlimits, landlock ([`lockdown`]) and seccomp
//! ([`seccomp`]), as the policy's `[sandbox]` table ([`spec`]) grants.
/// `(name, number)` pairs of system calls, from `libc::SYS_*` names.
macro_rules! sys {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), libc::$name)),*] };
}

pub mod cgroup;
pub mod exec;
pub mod explain;
pub mod lockdown;
pub mod mounts;
pub mod notify;
pub mod seccomp;
pub mod spec;

pub use cgroup::{CgroupError, Hierarchy, SessionCgroup};
pub use spec::{Invoker, SandboxPolicy, Spec, SpecError};
