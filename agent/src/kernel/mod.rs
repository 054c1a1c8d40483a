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
pub(crate) mod notify;
pub mod pins;
pub mod shared;

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, ProgramFd, RawTracePoint, SockOps,
        TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use mcpwarden_common::{
    ACCEPTED_PROGRAM, DENY_PATH_LEN, DROPPED_FULL, DenyKey, DenyRule, DnsPeer, NET_PORTS, NetKey4,
    NetKey6, NetRule, RateState, SESSION_ENFORCE, SESSION_NET_POLICY, SOCK_PROGRAMS, SYSCALL_HOOKS,
    SessionConfig, TRACEPOINTS, maps,
};

use crate::policy::network::NetAllow;

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

/// The cgroup programs' attachments to one session's cgroup (pinned): the
/// network policy's and the accepted-connection program's.
pub(crate) type NetLinks = Vec<PinnedLink>;

/// The loaded and attached tracer: every program, every map.
pub(crate) struct Tracer {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    /// The sched tracepoints' attachments, pinned, to detach them in
    /// parallel on drop.
    links: Vec<PinnedLink>,
    /// The raw syscall hooks' attachments (by program), likewise.
    hooks: Vec<(&'static str, PinnedLink)>,
    /// Where they and the call tables are pinned; dropped last.
    pins: pins::Pins,
}

/// The raw syscall hook attached at load, and the one attached only while
/// a session asks for call results.
const ENTER_HOOK: (&str, &str) = SYSCALL_HOOKS[0];
const EXIT_HOOK: (&str, &str) = SYSCALL_HOOKS[1];

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("ebpf", &self.ebpf)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Loads the tracer, fills its call tables and attaches its hooks.
    /// Until a session is added, every handler returns after one map
    /// lookup.
    pub(crate) fn load() -> Result<Self, KernelError> {
        ensure_tracefs()?;
        // First: on an error below, dropping it detaches what was pinned.
        let pins = pins::Pins::create()?;
        let (enter, exit) = (calls::traced(calls::enter()), calls::traced(calls::exit()));
        let mut ebpf = EbpfLoader::new()
            .override_global(mcpwarden_common::ENTER_TRACED, &enter, true)
            .override_global(mcpwarden_common::EXIT_TRACED, &exit, true)
            .load(TRACER_OBJECT)?;
        fill_calls(&mut ebpf, maps::ENTER_CALLS, calls::enter())?;
        fill_calls(&mut ebpf, maps::EXIT_CALLS, calls::exit())?;
        // The kernel empties a call table when its last user reference
        // goes: pinned, the hook keeps its handlers if this process dies.
        for name in [maps::ENTER_CALLS, maps::EXIT_CALLS] {
            let table = ebpf.map(name).ok_or(KernelError::MissingMap(name))?;
            pins.map(name, table)?;
        }
        let mut links = Vec::with_capacity(TRACEPOINTS.len());
        for &(name, category, tracepoint) in TRACEPOINTS {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program.load().map_err(program_err(name, "load"))?;
            let id = program.attach(category, tracepoint).map_err(program_err(
                name,
                &format!("attach to {category}/{tracepoint}"),
            ))?;
            let link = program
                .take_link(id)
                .map_err(program_err(name, "take the link"))?;
            links.push(pins.link(name, link)?);
        }
        // The hook goes last: with the tables full, the first call it sees
        // is traced.
        let mut hooks = Vec::with_capacity(SYSCALL_HOOKS.len());
        hooks.push((ENTER_HOOK.0, attach_hook(&mut ebpf, &pins, ENTER_HOOK)?));
        let ring = ebpf
            .take_map(maps::EVENTS)
            .ok_or(KernelError::MissingMap(maps::EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(map_err(maps::EVENTS))?;
        Ok(Self {
            ebpf,
            ring,
            links,
            hooks,
            pins,
        })
    }

    /// Attaches the raw `sys_exit` hook (`on`) or detaches it.
    pub(crate) fn exit_hook(&mut self, on: bool) -> Result<(), KernelError> {
        let (name, _) = EXIT_HOOK;
        let at = self.hooks.iter().position(|&(n, _)| n == name);
        match (on, at) {
            (true, None) => {
                let link = attach_hook(&mut self.ebpf, &self.pins, EXIT_HOOK)?;
                self.hooks.push((name, link));
            }
            (false, Some(at)) => {
                let (_, link) = self.hooks.swap_remove(at);
                // Detached here, once its pin is gone.
                drop(pins::unpin(link));
            }
            _ => {}
        }
        Ok(())
    }

    /// Remembers descriptor `fd` of `session` as a memfd (made for it by
    /// [`notify`]): an exec or executable mapping of it is then recognised.
    pub(crate) fn add_memfd(&mut self, session: u32, fd: u32) -> Result<(), KernelError> {
        let mut memfds: HashMap<_, u64, u32> = map_mut(&mut self.ebpf, maps::MEMFDS)?;
        memfds
            .insert(mcpwarden_common::memfd_key(session, fd), 1, 0)
            .map_err(map_err(maps::MEMFDS))
    }

    /// Starts tracing the cgroup `cgroup_id` as the session `rules`
    /// describes. The rules go in first so there is no moment where the
    /// session is traced but not yet protected.
    pub(crate) fn add_session(
        &mut self,
        cgroup_id: u64,
        rules: &SessionRules,
    ) -> Result<(), KernelError> {
        let &SessionRules {
            session,
            enforce,
            deny,
            network,
            events_per_second,
            kill,
            results: _,
        } = rules;
        {
            let mut trie: LpmTrie<_, DenyKey, DenyRule> = map_mut(&mut self.ebpf, maps::DENY)?;
            for (i, prefix) in deny.iter().enumerate() {
                let (key, rule) = deny_entry(session, i, prefix)?;
                trie.insert(&key, rule, 0).map_err(map_err(maps::DENY))?;
            }
        }
        if let Some((allow, bind)) = network {
            self.add_net_rules(session, allow, (maps::NET4, maps::NET6))?;
            self.add_net_rules(session, bind, (maps::BIND4, maps::BIND6))?;
        }
        let mut sessions: HashMap<_, u64, SessionConfig> = map_mut(&mut self.ebpf, maps::SESSIONS)?;
        let mut flags = if enforce { SESSION_ENFORCE } else { 0 };
        if network.is_some() {
            flags |= SESSION_NET_POLICY;
        }
        // The kernel keeps one bucket per CPU: share the limit out.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as u32;
        let rate = match events_per_second {
            0 => 0,
            n => (n / cpus).max(1),
        };
        let config = SessionConfig {
            session,
            flags,
            rate,
            kill,
        };
        sessions
            .insert(cgroup_id, config, 0)
            .map_err(map_err(maps::SESSIONS))
    }

    /// Puts `rules` in the (IPv4, IPv6) tries `tries`.
    fn add_net_rules(
        &mut self,
        session: u32,
        rules: &[NetAllow],
        tries: (&'static str, &'static str),
    ) -> Result<(), KernelError> {
        let sid = session.to_be_bytes();
        for allow in rules {
            let mut value = NetRule {
                rule: allow.rule as u32,
                any_port: u32::from(allow.ports.is_none()),
                ports: [0; NET_PORTS],
            };
            for (slot, port) in value.ports.iter_mut().zip(allow.ports.iter().flatten()) {
                *slot = *port;
            }
            let bits = 32 + u32::from(allow.prefix);
            match allow.addr {
                std::net::IpAddr::V4(a) => {
                    let key = NetKey4 {
                        session: sid,
                        addr: a.octets(),
                    };
                    insert_lpm(&mut self.ebpf, tries.0, Key::new(bits, key), value)?;
                }
                std::net::IpAddr::V6(a) => {
                    let key = NetKey6 {
                        session: sid,
                        addr: a.octets(),
                    };
                    insert_lpm(&mut self.ebpf, tries.1, Key::new(bits, key), value)?;
                }
            }
        }
        Ok(())
    }

    /// Plain events the rate limit of `session` left out so far.
    pub(crate) fn rate_dropped(&self, session: u32) -> Result<u64, KernelError> {
        let rate: PerCpuHashMap<_, u32, RateState> = map_ref(&self.ebpf, maps::RATE)?;
        match rate.get(&session, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().map(|s| s.dropped).sum()),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(map_err(maps::RATE)(e)),
        }
    }

    /// Stops tracing the cgroup `cgroup_id` and forgets everything the
    /// session `session` put in the maps: its deny and network rules, its
    /// rate buckets, its memfds and DNS sockets.
    pub(crate) fn remove_session(
        &mut self,
        cgroup_id: u64,
        session: u32,
    ) -> Result<(), KernelError> {
        // Untraced first: from here on the programs leave its tasks alone.
        {
            let mut sessions: HashMap<_, u64, SessionConfig> =
                map_mut(&mut self.ebpf, maps::SESSIONS)?;
            absent_ok(sessions.remove(&cgroup_id)).map_err(map_err(maps::SESSIONS))?;
        }
        let sid = session.to_be_bytes();
        purge_lpm::<DenyKey, DenyRule>(&mut self.ebpf, maps::DENY, |k| k.session == sid)?;
        for name in [maps::NET4, maps::BIND4] {
            purge_lpm::<NetKey4, NetRule>(&mut self.ebpf, name, |k| k.session == sid)?;
        }
        for name in [maps::NET6, maps::BIND6] {
            purge_lpm::<NetKey6, NetRule>(&mut self.ebpf, name, |k| k.session == sid)?;
        }
        {
            let mut rate: PerCpuHashMap<_, u32, RateState> = map_mut(&mut self.ebpf, maps::RATE)?;
            absent_ok(rate.remove(&session)).map_err(map_err(maps::RATE))?;
        }
        purge_hash::<u64, u32>(&mut self.ebpf, maps::MEMFDS, |key, _| {
            key >> 32 == u64::from(session)
        })?;
        purge_hash::<u64, DnsPeer>(&mut self.ebpf, maps::DNS_PEERS, |_, peer| {
            peer.session == session
        })
    }

    /// Loads (once) and attaches the network programs to a session's cgroup
    /// directory: from then on its inet connects and datagrams are checked in
    /// the kernel. Only sessions whose policy has `[network]` need them, so a
    /// kernel without cgroup `sock_addr` hooks fails exactly those, with the
    /// hook named in the error, and never silently downgrades them.
    /// Attachments made before a failure are put in `links` all the same, for
    /// [`Tracer::detach_network`]. Each is pinned with `session`'s number.
    pub(crate) fn attach_network(
        &mut self,
        cgroup_dir: &Path,
        session: u32,
        links: &mut NetLinks,
    ) -> Result<(), KernelError> {
        let dir = open_cgroup(cgroup_dir)?;
        for &(name, hook) in SOCK_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            if program.fd().is_err() {
                program
                    .load()
                    .map_err(program_err(name, &format!("load ({hook} hook)")))?;
            }
            let id = program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(program_err(
                    name,
                    &format!("attach ({hook}) to {}", cgroup_dir.display()),
                ))?;
            let link = program
                .take_link(id)
                .map_err(program_err(name, "take the link"))?;
            links.push(self.pins.link(&format!("{name}-{session:08x}"), link)?);
        }
        Ok(())
    }

    /// Loads (once) and attaches the accepted-connection program to a
    /// session's cgroup directory, and tells it the cgroup id it serves:
    /// from then on the peers of the TCP connections the session's
    /// listeners accept are reported, without the exit hook. The link goes
    /// in `links`, pinned with `session`'s number, like the network
    /// programs'.
    pub(crate) fn attach_accepts(
        &mut self,
        cgroup_dir: &Path,
        cgroup_id: u64,
        session: u32,
        links: &mut NetLinks,
    ) -> Result<(), KernelError> {
        let name = ACCEPTED_PROGRAM;
        let dir = open_cgroup(cgroup_dir)?;
        let program: &mut SockOps = program(&mut self.ebpf, name)?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(program_err(name, "load (sock_ops hook)"))?;
        }
        let id = program
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(program_err(
                name,
                &format!("attach (sock_ops) to {}", cgroup_dir.display()),
            ))?;
        let link = program
            .take_link(id)
            .map_err(program_err(name, "take the link"))?;
        links.push(self.pins.link(&format!("{name}-{session:08x}"), link)?);
        // The kernel made the attachment's storage (zero: nothing is
        // reported) with the link; now it learns its cgroup.
        set_sock_ops_storage(&mut self.ebpf, maps::ACCEPT_CGROUP, cgroup_id, cgroup_id)
    }

    /// Detaches a session's network programs from its cgroup.
    pub(crate) fn detach_network(links: NetLinks) {
        // Each detaches as its pin goes and its descriptor is dropped.
        for link in links {
            drop(pins::unpin(link));
        }
    }

    /// A second descriptor of the ring buffer, to wait on with epoll.
    pub(crate) fn ring_fd(&self) -> io::Result<OwnedFd> {
        self.ring.as_fd().try_clone_to_owned()
    }

    /// Hands every event waiting in the ring buffer to `f`, oldest first.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(KernelEvent)) {
        while let Some(item) = self.ring.next() {
            if let Some(event) = KernelEvent::decode(&item) {
                f(event);
            } else {
                tracing::warn!(
                    len = item.len(),
                    "undecodable record in the event ring buffer"
                );
            }
        }
    }

    /// Events lost because the ring buffer was full, every session
    /// together.
    pub(crate) fn lost(&self) -> Result<u64, KernelError> {
        let counters: PerCpuArray<_, u64> = map_ref(&self.ebpf, maps::DROPPED)?;
        let per_cpu = counters
            .get(&DROPPED_FULL, 0)
            .map_err(map_err(maps::DROPPED))?;
        Ok(per_cpu.iter().sum())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Each detach waits for grace periods; one thread per link lets
        // them overlap.
        let pinned = self.hooks.drain(..).map(|(_, link)| link);
        let owned: Vec<FdLink> = pinned
            .chain(self.links.drain(..))
            .filter_map(pins::unpin)
            .collect();
        std::thread::scope(|scope| {
            for link in owned {
                // Dropping a link detaches it; a thread that cannot start
                // drops its link here instead.
                if let Err(e) = std::thread::Builder::new().spawn_scoped(scope, move || drop(link))
                {
                    tracing::warn!("detaching a kernel program on this thread: {e}");
                }
            }
        });
        // The programs themselves and the maps go with `ebpf`, the pins of
        // the call tables (and any pin left above) with `pins`.
    }
}

/// Loads, attaches and pins the raw syscall hook `(program, tracepoint)`.
fn attach_hook(
    ebpf: &mut Ebpf,
    pins: &pins::Pins,
    (name, tracepoint): (&'static str, &str),
) -> Result<PinnedLink, KernelError> {
    let program: &mut RawTracePoint = program(ebpf, name)?;
    if program.fd().is_err() {
        program.load().map_err(program_err(name, "load"))?;
    }
    let id = program
        .attach(tracepoint)
        .map_err(program_err(name, &format!("attach to raw {tracepoint}")))?;
    let link = program
        .take_link(id)
        .map_err(program_err(name, "take the link"))?;
    pins.link(name, link)
}

/// Loads each handler of `calls` (once; a handler may serve several calls)
/// and puts it in the table `map` at its call's number.
fn fill_calls(
    ebpf: &mut Ebpf,
    map: &'static str,
    calls: impl Iterator<Item = (&'static str, libc::c_long)>,
) -> Result<(), KernelError> {
    let mut entries: Vec<(u32, ProgramFd)> = Vec::new();
    for (name, nr) in calls {
        let program: &mut RawTracePoint = program(ebpf, name)?;
        if program.fd().is_err() {
            program.load().map_err(program_err(name, "load"))?;
        }
        let fd = program
            .fd()
            .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
            .map_err(program_err(name, "descriptor"))?;
        // In 0..CALL_SLOTS (unit test in `calls`).
        entries.push((nr as u32, fd));
    }
    let mut table: ProgramArray<_> = map_mut(ebpf, map)?;
    for (slot, fd) in &entries {
        table.set(*slot, fd, 0).map_err(map_err(map))?;
    }
    Ok(())
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

/// The trie key and value for deny rule `index` = `prefix` of `session`.
fn deny_entry(
    session: u32,
    index: usize,
    prefix: &str,
) -> Result<(Key<DenyKey>, DenyRule), KernelError> {
    let bytes = prefix.as_bytes();
    if bytes.len() >= DENY_PATH_LEN {
        return Err(KernelError::PrefixTooLong(prefix.to_owned()));
    }
    let mut data = DenyKey {
        session: session.to_be_bytes(),
        path: [0; DENY_PATH_LEN],
    };
    data.path[..bytes.len()].copy_from_slice(bytes);
    let bits = 8 * (4 + bytes.len()) as u32;
    // `/` denies every absolute path: the byte at index 0 is always `/`.
    let len = if prefix == "/" { 0 } else { bytes.len() as u32 };
    Ok((
        Key::new(bits, data),
        DenyRule {
            rule: index as u32,
            len,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_entries_prefix_the_session_and_count_bits() {
        let (key, rule) = deny_entry(0x0102_0304, 3, "/etc").expect("fits");
        let data = key.data();
        assert_eq!(data.session, [1, 2, 3, 4]);
        assert_eq!(&data.path[..5], b"/etc\0");
        assert_eq!(key.prefix_len(), 8 * (4 + 4));
        assert_eq!(rule, DenyRule { rule: 3, len: 4 });
        let (_, root) = deny_entry(1, 0, "/").expect("fits");
        assert_eq!(root.len, 0);
        assert!(deny_entry(1, 0, &"/x".repeat(200)).is_err());
    }
}
