//! `mcpwarden doctor`: what this kernel really offers, found by loading a
//! tiny program of each kind (and attaching where that is cheap), not by
//! reading version numbers.
use std::{
    fmt::Write as _,
    fs,
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf,
    maps::{MapData, ProgramArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockAddr, FEntry, Lsm, RawTracePoint, SockOps,
        TracePoint,
    },
};
use mcpwarden_sandbox::{Hierarchy, SessionCgroup};
use serde::Serialize;

use crate::kernel::{
    PROBES_OBJECT, ensure_tracefs,
    pins::{self, Pins},
    set_sock_ops_storage,
};

/// One finding.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    /// Feature name.
    pub name: &'static str,
    /// Whether mcpwarden needs it.
    pub required: bool,
    /// Whether it works here.
    pub available: bool,
    /// What was seen (version, path, error).
    pub detail: String,
}

/// The full report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Names of required features that are missing.
    #[must_use]
    pub fn missing(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| c.required && !c.available)
            .map(|c| c.name)
            .collect()
    }

    /// Human-readable table.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.available {
                "ok"
            } else if c.required {
                "MISSING"
            } else {
                "no"
            };
            let need = if c.required { "" } else { " (optional)" };
            let _ = writeln!(out, "{mark:>8}  {:<24} {}{need}", c.name, c.detail);
        }
        match self.missing().as_slice() {
            [] => out.push_str("mcpwarden can protect tool servers on this host.\n"),
            missing => {
                let _ = writeln!(out, "missing required features: {}", missing.join(", "));
            }
        }
        out
    }
}

fn check(name: &'static str, required: bool, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            required,
            available: true,
            detail,
        },
        Err(detail) => Check {
            name,
            required,
            available: false,
            detail,
        },
    }
}

/// Runs every probe.
#[must_use]
pub fn probe() -> Report {
    let mut checks = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    checks.push(check(
        "root",
        true,
        if root {
            Ok("euid 0".into())
        } else {
            Err("not root: eBPF and cgroups need it".into())
        },
    ));

    let hierarchy = Hierarchy::discover();
    checks.push(check(
        "cgroup v2",
        true,
        hierarchy
            .as_ref()
            .map(|h| h.root().display().to_string())
            .map_err(ToString::to_string),
    ));
    let scratch = hierarchy
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|h| {
            SessionCgroup::create(h, &format!("doctor-{}", std::process::id()))
                .map_err(|e| e.to_string())
        });
    checks.push(check(
        "cgroup.kill",
        true,
        scratch.as_ref().map_err(Clone::clone).and_then(|cg| {
            if cg.path().join("cgroup.kill").exists() {
                Ok("kills a whole tree at once".into())
            } else {
                Err("missing (Linux < 5.14)".into())
            }
        }),
    ));

    checks.extend(probe_bpf(scratch.as_ref().ok()));
    checks.push(check("bpffs pins", true, probe_pins()));
    checks.push(check(
        "landlock",
        true,
        mcpwarden_sandbox::lockdown::kernel_abi()
            .map(|abi| format!("ABI {abi}"))
            .map_err(|e| format!("not available: {e}")),
    ));
    checks.push(check("seccomp", true, seccomp()));
    checks.push(check("seccomp notify", true, seccomp_notify()));
    if let Ok(cg) = scratch
        && let Err(e) = cg.remove(Duration::from_secs(2))
    {
        tracing::warn!("cannot remove the doctor's scratch cgroup: {e}");
    }
    Report { checks }
}

const BPF_CHECKS: [(&str, bool); 9] = [
    ("tracepoints", true),
    ("ring buffer", true),
    ("bpf_send_signal", true),
    ("raw syscall hooks", true),
    ("cgroup sock_addr", true),
    ("cgroup sock_ops", true),
    ("BPF-LSM", false),
    ("fentry", false),
    ("BTF tracepoints", false),
];

fn probe_bpf(cgroup: Option<&SessionCgroup>) -> Vec<Check> {
    let loaded = ensure_tracefs()
        .map_err(|e| e.to_string())
        .and_then(|()| Ebpf::load(PROBES_OBJECT).map_err(|e| e.to_string()));
    let mut ebpf = match loaded {
        Ok(ebpf) => ebpf,
        Err(e) => {
            return BPF_CHECKS
                .into_iter()
                .map(|(name, required)| {
                    check(name, required, Err(format!("cannot load probes: {e}")))
                })
                .collect();
        }
    };
    let (tracepoints, ring, mut ring_map) = probe_tracepoint_and_ring(&mut ebpf);
    let raw = probe_raw_hooks(&mut ebpf, ring_map.as_mut());
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"));
    let results = [
        tracepoints,
        ring,
        probe_signal(&mut ebpf),
        raw,
        probe_sock_addr(&mut ebpf, cgroup),
        probe_sock_ops(&mut ebpf, cgroup),
        btf.clone().and_then(|btf| probe_lsm(&mut ebpf, &btf)),
        btf.clone().and_then(|btf| probe_fentry(&mut ebpf, &btf)),
        btf.and_then(|btf| probe_tp_btf(&mut ebpf, &btf)),
    ];
    BPF_CHECKS
        .into_iter()
        .zip(results)
        .map(|((name, required), result)| check(name, required, result))
        .collect()
}

/// The probe program `name`, as program type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    crate::kernel::program(ebpf, name).map_err(|e| e.to_string())
}

/// What one probe found: a detail when the feature works, why not else.
type Probe = Result<String, String>;

/// Pinning, end to end, as the tracer does it: bpffs mounted (or mounted
/// now), a map of the probes pinned in this process's directory under
/// `/sys/fs/bpf/mcpwarden`, opened back from its pin, and the directory
/// removed. Also says what mcpwarden processes that are gone left pinned.
fn probe_pins() -> Probe {
    let pins = Pins::create().map_err(|e| e.to_string())?;
    let ebpf = Ebpf::load(PROBES_OBJECT).map_err(|e| format!("cannot load probes: {e}"))?;
    let map = ebpf.map("PROBE_RING").ok_or("no PROBE_RING")?;
    let path = pins.map("probe", map).map_err(|e| e.to_string())?;
    MapData::from_pin(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    drop(pins);
    let stale = pins::instances()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|i| !i.alive)
        .count();
    Ok(match stale {
        0 => "a map pinned and opened back".to_owned(),
        n => format!(
            "a map pinned and opened back; {n} left pinned by mcpwarden processes that are \
             gone (the next session's start removes them)"
        ),
    })
}

/// Tracepoint + ring buffer, end to end: attach to getppid, call it, and
/// read our own pid back. The ring is handed back for the next probe.
fn probe_tracepoint_and_ring(ebpf: &mut Ebpf) -> (Probe, Probe, Option<RingBuf<MapData>>) {
    let attached = program::<TracePoint>(ebpf, "probe_ringbuf").and_then(|tp| {
        tp.load().map_err(|e| format!("load: {e}"))?;
        tp.attach("syscalls", "sys_enter_getppid")
            .map_err(|e| format!("attach: {e}"))
    });
    if let Err(e) = attached {
        return (Err(e.clone()), Err(e), None);
    }
    let ring = ebpf
        .take_map("PROBE_RING")
        .ok_or_else(|| "no PROBE_RING".to_owned())
        .and_then(|map| RingBuf::try_from(map).map_err(|e| e.to_string()));
    let mut ring = match ring {
        Ok(ring) => ring,
        Err(e) => return (Ok("attached".into()), Err(e), None),
    };
    let me = std::process::id().to_ne_bytes();
    let read = read_back(&mut ring, |item| item.len() == 4 && item == me)
        .then(|| "event read back from the kernel".to_owned())
        .ok_or_else(|| "no event arrived within 1 s".to_owned());
    (
        Ok("attached to syscalls/sys_enter_getppid".into()),
        read,
        Some(ring),
    )
}

/// Calls getppid until `ring` yields an item `wanted` accepts (true), for
/// at most a second.
fn read_back(ring: &mut RingBuf<MapData>, wanted: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let _ = nix::unistd::getppid();
        while let Some(item) = ring.next() {
            if wanted(&item) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The tracer's hooks, end to end: a raw `sys_enter` program that
/// tail-calls a handler by syscall number (getppid's here), which writes
/// `RAW_MARK << 32 | pid` to the ring.
fn probe_raw_hooks(ebpf: &mut Ebpf, ring: Option<&mut RingBuf<MapData>>) -> Result<String, String> {
    const RAW_MARK: u64 = 0x7261_7721;
    let handler = program::<RawTracePoint>(ebpf, "probe_raw_call")?;
    handler.load().map_err(|e| format!("load: {e}"))?;
    let fd = handler
        .fd()
        .map_err(|e| e.to_string())?
        .try_clone()
        .map_err(|e| e.to_string())?;
    let mut calls: ProgramArray<_> = ebpf
        .map_mut("PROBE_CALLS")
        .ok_or("no PROBE_CALLS")?
        .try_into()
        .map_err(|e: aya::maps::MapError| e.to_string())?;
    calls
        .set(libc::SYS_getppid as u32, &fd, 0)
        .map_err(|e| format!("program array: {e}"))?;
    let hook = program::<RawTracePoint>(ebpf, "probe_raw_hook")?;
    hook.load().map_err(|e| format!("load: {e}"))?;
    hook.attach("sys_enter")
        .map_err(|e| format!("attach to raw sys_enter: {e}"))?;
    let ring = ring.ok_or("not checked: the ring buffer is not working")?;
    let want = ((RAW_MARK << 32) | u64::from(std::process::id())).to_ne_bytes();
    if read_back(ring, |item| item == want) {
        Ok("raw sys_enter reached its handler by tail call".into())
    } else {
        Err("attached, but no event arrived through the tail call within 1 s".into())
    }
}

fn probe_signal(ebpf: &mut Ebpf) -> Result<String, String> {
    let tp = program::<TracePoint>(ebpf, "probe_signal")?;
    tp.load().map_err(|e| format!("load: {e}"))?;
    Ok("accepted by the verifier in tracepoints".into())
}

/// The scratch cgroup and its directory, opened to attach to.
fn scratch_dir(cgroup: Option<&SessionCgroup>) -> Result<(&SessionCgroup, fs::File), String> {
    let cg = cgroup.ok_or("no scratch cgroup to attach to")?;
    let dir =
        fs::File::open(cg.path()).map_err(|e| format!("open {}: {e}", cg.path().display()))?;
    Ok((cg, dir))
}

fn probe_sock_addr(ebpf: &mut Ebpf, cgroup: Option<&SessionCgroup>) -> Result<String, String> {
    let prog = program::<CgroupSockAddr>(ebpf, "probe_connect4")?;
    prog.load().map_err(|e| format!("load: {e}"))?;
    let (_, dir) = scratch_dir(cgroup)?;
    let link = prog
        .attach(dir.as_fd(), CgroupAttachMode::Single)
        .map_err(|e| format!("attach: {e}"))?;
    prog.detach(link).map_err(|e| format!("detach: {e}"))?;
    Ok("connect4 attached to a cgroup".into())
}

/// The tracer's accepted-connection program's kind: a `sock_ops` program
/// with cgroup storage, attached to a cgroup, its storage written from
/// here as the tracer writes it.
fn probe_sock_ops(ebpf: &mut Ebpf, cgroup: Option<&SessionCgroup>) -> Result<String, String> {
    let prog = program::<SockOps>(ebpf, "probe_sock_ops")?;
    prog.load().map_err(|e| format!("load: {e}"))?;
    let (cg, dir) = scratch_dir(cgroup)?;
    let link = prog
        .attach(dir.as_fd(), CgroupAttachMode::Single)
        .map_err(|e| format!("attach: {e}"))?;
    let stored = set_sock_ops_storage(ebpf, "PROBE_CGROUP", cg.id(), 1)
        .map_err(|e| format!("cgroup storage: {e}"));
    let prog = program::<SockOps>(ebpf, "probe_sock_ops")?;
    prog.detach(link).map_err(|e| format!("detach: {e}"))?;
    stored.map(|()| "attached to a cgroup, its cgroup storage written".into())
}

fn probe_lsm(ebpf: &mut Ebpf, btf: &Btf) -> Result<String, String> {
    let active = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let active = active.trim();
    let prog = program::<Lsm>(ebpf, "probe_lsm")?;
    prog.load("file_open", btf)
        .map_err(|e| format!("load: {e} (active LSMs: {active})"))?;
    let link = prog
        .attach()
        .map_err(|e| format!("attach: {e} (active LSMs: {active})"))?;
    prog.detach(link).map_err(|e| format!("detach: {e}"))?;
    Ok(format!("active LSMs: {active}"))
}

fn probe_fentry(ebpf: &mut Ebpf, btf: &Btf) -> Result<String, String> {
    let prog = program::<FEntry>(ebpf, "probe_fentry")?;
    prog.load("do_unlinkat", btf)
        .map_err(|e| format!("load: {e}"))?;
    let link = prog.attach().map_err(|e| format!("attach: {e}"))?;
    prog.detach(link).map_err(|e| format!("detach: {e}"))?;
    Ok("attached to do_unlinkat".into())
}

/// BTF-typed raw tracepoints (`tp_btf`): typed syscall hooks, optional.
fn probe_tp_btf(ebpf: &mut Ebpf, btf: &Btf) -> Result<String, String> {
    let prog = program::<BtfTracePoint>(ebpf, "probe_tp_btf")?;
    prog.load("sys_exit", btf)
        .map_err(|e| format!("load: {e}"))?;
    let link = prog.attach().map_err(|e| format!("attach: {e}"))?;
    prog.detach(link).map_err(|e| format!("detach: {e}"))?;
    Ok("attached to sys_exit".into())
}

/// Whether seccomp filters that kill the process are available.
/// Whether seccomp filters may return `action` (`SECCOMP_GET_ACTION_AVAIL`).
fn seccomp_action(action: u32) -> std::io::Result<()> {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    // SAFETY: the kernel reads one u32 through the pointer, which points at a
    // live local for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &raw const action,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn seccomp() -> Result<String, String> {
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    seccomp_action(SECCOMP_RET_KILL_PROCESS)
        .map(|()| "filters with SECCOMP_RET_KILL_PROCESS".into())
        .map_err(|e| format!("not available: {e}"))
}

/// The sandbox hands the privilege calls to mcpwarden with
/// `SECCOMP_RET_USER_NOTIF` (Linux 5.0) and makes memfds for it with
/// `SECCOMP_IOCTL_NOTIF_ADDFD` (5.9).
fn seccomp_notify() -> Result<String, String> {
    seccomp_action(libc::SECCOMP_RET_USER_NOTIF)
        .map_err(|e| format!("SECCOMP_RET_USER_NOTIF not available: {e}"))?;
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .map_err(|e| format!("uname: {e}"))?;
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (5, 9) {
        return Err(format!(
            "Linux {release} has no SECCOMP_IOCTL_NOTIF_ADDFD (5.9)"
        ));
    }
    Ok("the sandbox's privilege calls reach mcpwarden".into())
}
