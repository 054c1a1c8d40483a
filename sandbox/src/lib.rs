//! PES, the prompt execution sandbox: how mcpwarden starts a tool server.
//!
//! Today: a cgroup v2 directory per session (whose inode is the cgroup id
//! the kernel programs filter on) and an exec helper that moves itself into
//! that cgroup before it execs the server, so the server's whole process
//! tree is born managed and nothing outside it is.
pub mod cgroup;
pub mod exec;

pub use cgroup::{CgroupError, Hierarchy, SessionCgroup};
