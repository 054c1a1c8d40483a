//! One tracer for every session of the process.
//!
//! Each session used to load and attach its own copy of every program, so
//! with N live sessions every syscall of every task on the host ran N
//! programs, and each session's start and end paid for loading and
//! detaching ~75 tracepoints. Now the first session loads the [`Tracer`],
//! later ones add themselves to its maps, and the last one to end drops it
//! (which detaches everything: nothing of mcpwarden stays in the kernel
//! while no session is live, as the cost targets ask).
//!
//! The sessions share one ring buffer. Whichever session drains it (its
//! pump, or its relay before a server message) hands every record to the
//! session whose cgroup made it, under one lock, so each session still
//! sees its own events in the order the kernel wrote them, and an event
//! written before a server message is in its session's hands before the
//! message is forwarded. A session that got records from another's drain is
//! woken through its [`Notify`].
use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

use tokio::sync::Notify;

use super::{
    KernelError, KernelEvent, NetLinks, SessionRules, Tracer,
    notify::{self, Watch},
};

/// Events a session may have waiting in memory before further ones are
/// counted as lost: its pump takes them every 5 ms, so a queue this long
/// means the pump stopped, and it must not eat the host's memory meanwhile
/// (some 25 MiB at most).
const QUEUE_MAX: usize = 1 << 16;

/// The process's tracer, while at least one session is live.
static HUB: Mutex<Weak<Hub>> = Mutex::new(Weak::new());

struct Hub {
    state: Mutex<State>,
}

struct State {
    tracer: Tracer,
    /// Live sessions by cgroup id.
    routes: HashMap<u64, Route>,
    /// `DROPPED_FULL` as last reported, so each session's end reports what
    /// was lost since.
    full_reported: u64,
}

struct Route {
    session: u32,
    /// The session asked for call results: the exit hook is attached
    /// while a live session has.
    results: bool,
    queue: Vec<KernelEvent>,
    /// Records that did not fit the queue.
    lost: u64,
    notify: Arc<Notify>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Hands every record in the ring to its session's queue and wakes
    /// the sessions (other than `me`) that got any.
    fn route(&mut self, me: u64) {
        let Self { tracer, routes, .. } = self;
        let mut woken: Vec<u64> = Vec::new();
        tracer.drain(|event| {
            let cgroup = event.cgroup_id;
            let Some(route) = routes.get_mut(&cgroup) else {
                // Its session ended between the write and this drain.
                tracing::debug!(cgroup, "kernel event of no live session; dropped");
                return;
            };
            if route.queue.len() >= QUEUE_MAX {
                route.lost += 1;
                return;
            }
            route.queue.push(event);
            if cgroup != me && !woken.contains(&cgroup) {
                woken.push(cgroup);
            }
        });
        for cgroup in woken {
            if let Some(route) = routes.get(&cgroup) {
                route.notify.notify_one();
            }
        }
    }

    /// Whether a live session asked for call results.
    fn results_wanted(&self) -> bool {
        self.routes.values().any(|r| r.results)
    }

    /// Marks the session `cgroup` as asking for call results, attaching
    /// the exit hook for the first one.
    fn want_results(&mut self, cgroup: u64) -> Result<(), KernelError> {
        if !self.results_wanted() {
            self.tracer.exit_hook(true)?;
        }
        if let Some(route) = self.routes.get_mut(&cgroup) {
            route.results = true;
        }
        Ok(())
    }
}

/// Where a session's [`Watch`] puts what it sees: the session's queue,
/// behind the ring's records written before it, and the kernel's memfds.
struct HubSink {
    hub: Arc<Hub>,
    cgroup_id: u64,
    session: u32,
}

impl notify::Sink for HubSink {
    fn event(&self, event: KernelEvent) {
        let mut state = lock(&self.hub.state);
        // What the ring holds was written before this call was answered.
        state.route(self.cgroup_id);
        let Some(route) = state.routes.get_mut(&self.cgroup_id) else {
            return;
        };
        if route.queue.len() >= QUEUE_MAX {
            route.lost += 1;
        } else {
            route.queue.push(event);
        }
        route.notify.notify_one();
    }

    fn memfd(&self, fd: u32) -> Result<(), String> {
        lock(&self.hub.state)
            .tracer
            .add_memfd(self.session, fd)
            .map_err(|e| e.to_string())
    }
}

fn hub() -> Result<Arc<Hub>, KernelError> {
    let mut slot = HUB.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(hub) = slot.upgrade() {
        return Ok(hub);
    }
    // Loaded under the lock: two sessions starting together load it once.
    let hub = Arc::new(Hub {
        state: Mutex::new(State {
            tracer: Tracer::load()?,
            routes: HashMap::new(),
            full_reported: 0,
        }),
    });
    *slot = Arc::downgrade(&hub);
    Ok(hub)
}

/// One session's part of the shared tracer. Dropping it stops tracing the
/// session and removes its rules; dropping the last one unloads the tracer.
pub struct SessionTracer {
    hub: Arc<Hub>,
    cgroup_id: u64,
    session: u32,
    notify: Arc<Notify>,
    net_links: NetLinks,
    /// The thread answering the sandbox's watched calls.
    watch: Option<Watch>,
}

impl std::fmt::Debug for SessionTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTracer")
            .field("cgroup_id", &self.cgroup_id)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl SessionTracer {
    /// Starts tracing the cgroup `cgroup_id` (directory `cgroup_dir`) as
    /// `rules` describe, loading the tracer if no session has it loaded.
    /// The rules go in before the session is traced, so there is no moment
    /// where it is traced but not yet protected. On an error nothing of
    /// the session is left in the kernel.
    pub fn start(
        cgroup_id: u64,
        cgroup_dir: &Path,
        rules: &SessionRules,
    ) -> Result<Self, KernelError> {
        let hub = hub()?;
        let notify = Arc::new(Notify::new());
        {
            let mut state = lock(&hub.state);
            if state.routes.values().any(|r| r.session == rules.session) {
                return Err(KernelError::SessionInUse(rules.session));
            }
            state.routes.insert(
                cgroup_id,
                Route {
                    session: rules.session,
                    results: false,
                    queue: Vec::new(),
                    lost: 0,
                    notify: Arc::clone(&notify),
                },
            );
        }
        // From here on an error drops `this`, which removes what was added.
        let mut this = Self {
            hub,
            cgroup_id,
            session: rules.session,
            notify,
            net_links: Vec::new(),
            watch: None,
        };
        let mut state = lock(&this.hub.state);
        let added = state
            .tracer
            .add_session(cgroup_id, rules)
            .and_then(|()| {
                state.tracer.attach_accepts(
                    cgroup_dir,
                    cgroup_id,
                    rules.session,
                    &mut this.net_links,
                )
            })
            .and_then(|()| {
                if rules.network.is_some() {
                    state
                        .tracer
                        .attach_network(cgroup_dir, rules.session, &mut this.net_links)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                if rules.results {
                    state.want_results(cgroup_id)
                } else {
                    Ok(())
                }
            });
        drop(state);
        added.map(|()| this)
    }

    /// Answers the sandbox's watched calls (see [`notify`]) from the
    /// listener that arrives on `socket`, until the session ends.
    pub fn watch(
        &mut self,
        socket: OwnedFd,
        cgroup_dir: &Path,
        enforce: bool,
        kill: u32,
    ) -> io::Result<()> {
        let rules = notify::Rules {
            cgroup_id: self.cgroup_id,
            cgroup_dir: cgroup_dir.to_owned(),
            enforce,
            kill,
        };
        let sink = HubSink {
            hub: Arc::clone(&self.hub),
            cgroup_id: self.cgroup_id,
            session: self.session,
        };
        self.watch = Some(Watch::start(socket, rules, sink)?);
        Ok(())
    }

    /// Woken when another session's drain left records for this one.
    #[must_use]
    pub fn routed(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// A descriptor of the shared ring buffer, to wait on with epoll.
    pub fn ring_fd(&self) -> io::Result<OwnedFd> {
        lock(&self.hub.state).tracer.ring_fd()
    }

    /// Hands every event of this session written so far to `f`, oldest
    /// first (and every other session's to its own queue).
    pub fn drain(&mut self, f: impl FnMut(KernelEvent)) {
        let mine = {
            let mut state = lock(&self.hub.state);
            state.route(self.cgroup_id);
            state
                .routes
                .get_mut(&self.cgroup_id)
                .map(|r| std::mem::take(&mut r.queue))
                .unwrap_or_default()
        };
        mine.into_iter().for_each(f);
    }

    /// Events not reported: (lost, the ring buffer or this session's queue
    /// being full; left out by this session's rate limit). The ring's
    /// count is every session's since the last session reported it.
    /// Read once, at the session's end.
    pub fn take_dropped(&mut self) -> (u64, u64) {
        let mut state = lock(&self.hub.state);
        let full = match state.tracer.lost() {
            Ok(full) => full,
            Err(e) => {
                tracing::warn!("cannot read the lost-events counter: {e}");
                state.full_reported
            }
        };
        let since = full.saturating_sub(state.full_reported);
        state.full_reported = full;
        let queued = state.routes.get(&self.cgroup_id).map_or(0, |r| r.lost);
        let rate = state.tracer.rate_dropped(self.session).unwrap_or_else(|e| {
            tracing::warn!("cannot read the session's rate-limit counter: {e}");
            0
        });
        (since + queued, rate)
    }
}

impl Drop for SessionTracer {
    fn drop(&mut self) {
        // First, and without the lock: the thread may be waiting for it.
        drop(self.watch.take());
        let mut state = lock(&self.hub.state);
        let Some(route) = state.routes.remove(&self.cgroup_id) else {
            return;
        };
        if route.results
            && !state.results_wanted()
            && let Err(e) = state.tracer.exit_hook(false)
        {
            tracing::warn!("detaching the syscall exit hook: {e}");
        }
        if let Err(e) = state.tracer.remove_session(self.cgroup_id, self.session) {
            tracing::warn!(
                session = self.session,
                "removing the session from the kernel maps: {e}"
            );
        }
        Tracer::detach_network(std::mem::take(&mut self.net_links));
        // The last session's `hub` goes after this: the tracer is detached
        // and unloaded by the thread that ends that session.
    }
}
