//! The watcher's kernel side and its thread: the `mcpwarden-watch` object
//! on `sched/sched_process_exec`, read by a thread of the daemon that
//! judges each new program and acts.
use std::{
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use mcpwarden_common::{HostExec, watch};

use super::{Action, Found, Judge, Settings, Sighting, running};
use crate::{
    daemon::events::Feed,
    kernel::{KernelError, ensure_tracefs, program},
};

/// The watcher object, built by build.rs from `ebpf/programs`.
static WATCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcpwarden-watch"));

/// The running watcher; dropping it stops the thread and unloads the
/// program.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Loads and attaches the exec watcher and starts its thread. `None`
    /// when `[unmanaged] action = "off"`.
    pub fn start(settings: &Settings, feed: Arc<Feed>) -> Result<Option<Self>, KernelError> {
        if settings.action == Action::Off {
            return Ok(None);
        }
        ensure_tracefs()?;
        let mut ebpf = Ebpf::load(WATCH_OBJECT)?;
        let prog: &mut TracePoint = program(&mut ebpf, watch::PROGRAM)?;
        prog.load().map_err(|source| KernelError::Program {
            name: watch::PROGRAM,
            what: "load".into(),
            source,
        })?;
        prog.attach("sched", "sched_process_exec")
            .map_err(|source| KernelError::Program {
                name: watch::PROGRAM,
                what: "attach to sched/sched_process_exec".into(),
                source,
            })?;
        let ring = ebpf
            .take_map(watch::EXECS)
            .ok_or(KernelError::MissingMap(watch::EXECS))?;
        let ring = RingBuf::try_from(ring).map_err(|source| KernelError::Map {
            name: watch::EXECS,
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = State {
            ebpf,
            ring,
            judge: Judge::new(settings.patterns.clone()),
            action: settings.action,
            feed,
            reported_drops: 0,
        };
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("unmanaged-watch".into())
                .spawn(move || state.run(&stop))
                .map_err(KernelError::Thread)?
        };
        tracing::info!(
            action = ?settings.action,
            patterns = settings.patterns.len(),
            "watching the host's execs for unmanaged MCP servers"
        );
        Ok(Some(Self {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    judge: Judge,
    action: Action,
    feed: Arc<Feed>,
    reported_drops: u64,
}

impl State {
    fn run(&mut self, stop: &AtomicBool) {
        // The program is attached: what starts from now on is in the ring.
        // What runs already was started while nothing watched.
        self.sweep();
        let fd = self.ring.as_fd().as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd; the descriptor outlives the call.
            let ready = unsafe { libc::poll(pfd.as_mut_ptr(), 1, 200) };
            if ready < 0 {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let mut execs = Vec::new();
            while let Some(item) = self.ring.next() {
                if item.len() >= size_of::<HostExec>() {
                    // SAFETY: length checked; plain data, any alignment.
                    execs.push(unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<HostExec>())
                    });
                }
            }
            for exec in execs {
                if let Some(s) = self.judge.look(exec.pid, exec.uid) {
                    self.act(&s, Found::Exec);
                }
            }
            self.check_drops();
        }
    }

    /// Judges every process running when the watch begins.
    fn sweep(&mut self) {
        let mut found = 0;
        for (pid, uid) in running() {
            if let Some(s) = self.judge.look(pid, uid) {
                self.act(&s, Found::Start);
                found += 1;
            }
        }
        tracing::info!(
            found,
            "looked for unmanaged MCP servers among the running processes"
        );
    }

    fn act(&mut self, s: &Sighting, found: Found) {
        let when = match found {
            Found::Exec => "was started",
            Found::Start => "was running when the watch began",
        };
        let action = match self.action {
            Action::Kill => {
                let killed = kill_tree(s.pid);
                self.judge.forget(s.pid);
                tracing::error!(
                    pid = s.pid, uid = s.uid, killed, cmdline = %s.cmdline,
                    "killed an MCP server outside mcpwarden (it {when})"
                );
                "killed"
            }
            Action::Alert => {
                tracing::warn!(
                    pid = s.pid, uid = s.uid, cmdline = %s.cmdline,
                    "an MCP server outside mcpwarden {when}"
                );
                "alert"
            }
            Action::Record | Action::Off => {
                tracing::info!(
                    pid = s.pid, uid = s.uid, cmdline = %s.cmdline,
                    "an MCP server outside mcpwarden {when}"
                );
                "allow"
            }
        };
        self.feed.publish(&self.judge.event_line(s, action, found));
    }

    /// Logs execs the kernel could not report (ring full), once per new
    /// batch: never silently ignored.
    fn check_drops(&mut self) {
        let Some(map) = self.ebpf.map(watch::DROPPED) else {
            return;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return;
        };
        let Ok(per_cpu) = counters.get(&0, 0) else {
            return;
        };
        let dropped: u64 = per_cpu.iter().sum();
        if dropped > self.reported_drops {
            tracing::error!(
                dropped,
                "the exec watcher's ring buffer overflowed: some execs were not checked"
            );
            self.reported_drops = dropped;
        }
    }
}

/// SIGKILLs `pid` and every descendant, each through a pidfd opened
/// before the signal (a pid reused meanwhile is never hit). Descendants
/// first are collected, then all are signalled; returns how many were.
fn kill_tree(pid: u32) -> usize {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children(tree[i]));
        i += 1;
    }
    let fds: Vec<OwnedFd> = tree.iter().filter_map(|&p| pidfd_open(p)).collect();
    fds.iter()
        .filter(|fd| {
            // SAFETY: a valid pidfd; a null siginfo sends a plain SIGKILL.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            sent == 0
        })
        .count()
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the descriptor was just created and is owned here alone.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The processes whose parent is `pid`, from each thread's `children`
/// list.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
