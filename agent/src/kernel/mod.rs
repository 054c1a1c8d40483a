//! Loading the tracer into the kernel and talking to its maps.
//!
//! One [`Tracer`] serves every live session of the process ([`shared`]):
//! the sessions are entries in its maps, so N sessions cost the host's
//! other processes what one does. It is loaded with the first session and
//! dropped with the last. While loaded, its attachments and call tables are
//! pinned ([`pins`]), so a killed mcpwarden's rules hold until its
//! sandboxes are dead and the next start removes them. Dropping it removes
//! the pins, detaches and unloads every program and frees every map:
//! nothing stays in the kernel.
//!
//! The tracer attaches three programs: raw `sys_enter`, which tail-calls a
//! handler per traced call ([`calls`]), and two sched tracepoints; each
//! session's cgroup gets a `sock_ops` program (accepted connections' peers)
//! and, with a `[network]` policy, the `sock_addr` programs. The raw
//! `sys_exit` hook (failed calls with their error, `accept` calls) runs a
//! program at every syscall exit of every task on the host, so it is
//! attached only while a live session's policy asks for it
//! (`[kernel] call_results`). The privilege calls, which the sandbox's
//! seccomp refuses before `sys_enter`, reach the agent through seccomp
//! itself ([`notify`]). The tracer used to attach one trace event per call,
//! ~75 of them: each detach waits for the kernel's grace periods (syscall
//! tracepoints are faultable since 6.14), partly under a kernel-wide lock,
//! about 37 ms each here, so ending the last session took seconds.
pub mod calls;
pub mod event;
pub mod failures;
pub(crate) mod notify;
pub mod pins;
pub mod shared;
mod tracer;

use std::{io, path::Path};

use aya::{
    Ebpf, EbpfError,
    maps::{HashMap, LpmTrie, MapError, lpm_trie::Key},
    programs::ProgramError,
};
use mcpwarden_common::DENY_PATH_LEN;

use crate::policy::network::NetAllow;

pub(crate) use self::tracer::{NetLinks, Tracer};
pub use self::{
    event::{EventKind, KernelEvent},
    shared::SessionTracer,
};

/// The session tracer object, built by build.rs from `ebpf/programs`.
static TRACER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcpwarden"));
/// The feature probes, for `mcpwarden doctor` (and the hook-cost programs
/// that the kernel_cost bench attaches).
pub static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcpwarden-probes"));

/// `BPF_CGROUP_SOCK_OPS` of linux/bpf.h's `enum bpf_attach_type`: half of
/// a cgroup storage key.
const BPF_CGROUP_SOCK_OPS: u32 = 3;

/// Errors of loading and driving kernel programs.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The object could not be loaded (maps created, relocations applied).
    #[error("cannot load the kernel programs: {0} (is this root on a kernel with eBPF?)")]
    Load(#[from] EbpfError),
    /// A program the object should have is missing.
    #[error("kernel object has no program {0}")]
    MissingProgram(&'static str),
    /// A map the object should have is missing.
    #[error("kernel object has no map {0}")]
    MissingMap(&'static str),
    /// Loading or attaching a program failed.
    #[error("program {name} ({what}): {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why it failed.
        source: MapError,
    },
    /// tracefs is not mounted and could not be mounted.
    #[error(
        "tracefs is needed to attach tracepoints and could not be mounted at /sys/kernel/tracing: {0}"
    )]
    Tracefs(io::Error),
    /// A session's cgroup directory could not be opened to attach to it.
    #[error("cannot open cgroup {path} to attach programs to it: {source}")]
    OpenCgroup {
        /// The cgroup directory.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A thread that reads a ring buffer could not be started.
    #[error("cannot start a thread to read the kernel's events: {0}")]
    Thread(io::Error),
    /// A deny prefix does not fit the kernel's key.
    #[error("deny prefix {0:?} is too long for the kernel's {DENY_PATH_LEN}-byte key")]
    PrefixTooLong(String),
    /// bpffs is not mounted at /sys/fs/bpf and could not be.
    #[error(
        "bpffs is needed to pin the kernel programs (so their enforcement outlives a killed \
         mcpwarden) and could not be mounted at /sys/fs/bpf ({what}): {source}"
    )]
    Bpffs {
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A program's attachment or map could not be pinned, or a pin removed.
    #[error("pin {path}: {source}")]
    Pin {
        /// The pin (or its directory).
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Two live sessions drew the same number (their map keys would mix).
    #[error("session number {0:08x} is already in use by a live session; start it again")]
    SessionInUse(u32),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

/// The program `name` of an object, as program type `T` (tracepoint,
/// cgroup sock_addr, ...).
pub(crate) fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?
        .try_into()
        .map_err(program_err(name, "type"))
}

/// The map `name` of an object, as map type `M` (hash map, trie...), to
/// change.
fn map_mut<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(KernelError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// A session's cgroup directory, opened to attach programs to it.
fn open_cgroup(cgroup_dir: &Path) -> Result<std::fs::File, KernelError> {
    std::fs::File::open(cgroup_dir).map_err(|source| KernelError::OpenCgroup {
        path: cgroup_dir.to_owned(),
        source,
    })
}

/// Writes `value` to the cgroup storage map `name` for cgroup `cgroup_id`,
/// whose entry the kernel made when a `sock_ops` program using the map was
/// attached to that cgroup.
pub(crate) fn set_sock_ops_storage(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup_id: u64,
    value: u64,
) -> Result<(), KernelError> {
    #[expect(
        deprecated,
        reason = "sock_ops programs get no cgroup pointer for BPF_MAP_TYPE_CGRP_STORAGE"
    )]
    {
        use aya::maps::{CgroupStorage, CgroupStorageKey};
        let mut storage: CgroupStorage<_, u64> = map_mut(ebpf, name)?;
        storage
            .insert(
                CgroupStorageKey::new(cgroup_id, BPF_CGROUP_SOCK_OPS),
                value,
                0,
            )
            .map_err(map_err(name))
    }
}

/// The map `name` of an object, as map type `M`, to read.
fn map_ref<'a, M>(ebpf: &'a Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<&'a aya::maps::Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or(KernelError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// A delete of a key that is not there is not an error: the entry was never
/// made, or is gone already.
fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Deletes every entry of the LPM trie `name` whose key `mine` picks.
fn purge_lpm<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    mine: impl Fn(&K) -> bool,
) -> Result<(), KernelError> {
    let mut trie: LpmTrie<_, K, V> = map_mut(ebpf, name)?;
    let keys: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| mine(&k.data()))
        .collect();
    for key in keys {
        absent_ok(trie.remove(&key)).map_err(map_err(name))?;
    }
    Ok(())
}

/// Deletes every entry of the hash map `name` that `mine` picks.
fn purge_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    mine: impl Fn(&K, &V) -> bool,
) -> Result<(), KernelError> {
    let mut hash: HashMap<_, K, V> = map_mut(ebpf, name)?;
    let keys: Vec<K> = hash
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| mine(k, v))
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        absent_ok(hash.remove(&key)).map_err(map_err(name))?;
    }
    Ok(())
}

/// Inserts one entry into the LPM trie map `name`.
fn insert_lpm<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: Key<K>,
    value: V,
) -> Result<(), KernelError> {
    let mut trie: LpmTrie<_, K, V> = map_mut(ebpf, name)?;
    trie.insert(&key, value, 0).map_err(map_err(name))
}

/// Where tracefs's `events` directory may be: its own mount, or under
/// debugfs on older set-ups.
const TRACEFS_EVENTS: [&str; 2] = [
    "/sys/kernel/tracing/events",
    "/sys/kernel/debug/tracing/events",
];

/// Makes sure tracefs is mounted: aya finds tracepoint ids there.
pub fn ensure_tracefs() -> Result<(), KernelError> {
    if TRACEFS_EVENTS
        .iter()
        .any(|events| Path::new(events).exists())
    {
        return Ok(());
    }
    let tracing = Path::new("/sys/kernel/tracing");
    nix::mount::mount(
        Some("tracefs"),
        tracing,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| KernelError::Tracefs(e.into()))
}

/// What the kernel enforces for one session.
#[derive(Clone, Copy, Debug)]
pub struct SessionRules<'a> {
    /// The session's number (the first bytes of its map keys).
    pub session: u32,
    /// Deny rules and `kill` calls kill (enforce) or alert (monitor).
    pub enforce: bool,
    /// Denied path prefixes.
    pub deny: &'a [String],
    /// Allowed destinations and bindable local addresses, when the policy
    /// has a `[network]` table.
    pub network: Option<(&'a [NetAllow], &'a [NetAllow])>,
    /// Plain events per second (0: no limit).
    pub events_per_second: u32,
    /// `mcpwarden_common::kill` bits: the calls that are a verdict.
    pub kill: u32,
    /// `[kernel] call_results`: watch calls at their exit too.
    pub results: bool,
}

/// A [`KernelError::Program`] maker for `map_err`.
fn program_err<'a>(
    name: &'static str,
    what: &'a str,
) -> impl FnOnce(ProgramError) -> KernelError + 'a {
    move |source| KernelError::Program {
        name,
        what: what.to_owned(),
        source,
    }
}
