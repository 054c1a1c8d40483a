//! The loaded tracer: its programs attached and pinned, the sessions'
//! entries in its maps, their cgroup programs, and the ring buffer read.

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
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

use super::{
    KernelError, KernelEvent, SessionRules, TRACER_OBJECT, absent_ok, calls, ensure_tracefs,
    insert_lpm, map_err, map_mut, map_ref, open_cgroup, pins, program, program_err, purge_hash,
    purge_lpm, set_sock_ops_storage,
};

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
