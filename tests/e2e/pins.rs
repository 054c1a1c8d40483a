//! Pinned enforcement: the kernel programs of a daemon's sessions are
//! pinned in bpffs, so when the daemon is SIGKILLed its rules still hold
//! for anything in its session cgroups, and the next start kills what is
//! left there before it removes the pins (which unloads the programs).
use std::{
    net::TcpListener,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    daemon::Daemon,
    daemon_sessions::{eventually, kill_and_see_the_server_die, live_session, pids_in},
    shared_tracer::loaded,
    support::{Fixture, assert_nothing_left_behind, python, serial},
};

const PINS: &str = "/sys/fs/bpf/mcpwarden";

/// The pin directory of process `pid` (`<pid>-<start time>`), if any.
fn pin_dir(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(PINS)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('-'))
                .is_some_and(|(p, _)| p == pid.to_string())
        })
}

/// The names pinned in `dir`.
fn pinned(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the pin directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `script` (sh) as a process that first moves itself into `cgroup`
/// (when given), as a process left in a session would be.
fn in_cgroup(cgroup: Option<&Path>, script: &str) -> Command {
    let join = cgroup.map_or(String::new(), |cg| {
        format!("echo $$ > {}/cgroup.procs && ", cg.display())
    });
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("{join}{script}"));
    cmd
}

/// What a TCP connect to 127.0.0.1:`port` from (maybe) `cgroup` gives:
/// "connected" or the errno's name.
fn connect_from(cgroup: Option<&Path>, port: u16) -> String {
    let code = format!(
        "import errno, socket\n\
         s = socket.socket()\n\
         try:\n    s.connect(('127.0.0.1', {port})); print('connected')\n\
         except OSError as e:\n    print(errno.errorcode.get(e.errno, e.errno))\n"
    );
    let out = in_cgroup(cgroup, &format!("exec {} -c \"$0\"", python().display()))
        .arg(code)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_killed_daemons_rules_hold_until_the_next_start_removes_them() {
    let _serial = serial();
    let mut d = Daemon::start();
    let fx = Fixture::with_sandbox(
        "enforce",
        "[network]\nallow = [\"127.0.0.1:9\"]\n[inspect]\nenabled = false\n",
    );
    let go_on = fx.dir().join("go-on");
    let (client, label, cgroup, server) = live_session(&d, &fx, &go_on);

    // The live daemon's pins: its hooks, its call tables, the session's
    // network programs (named with the session's number); no exit hook,
    // as no session asked for call results.
    let dir = pin_dir(d.pid()).expect("the daemon pinned nothing");
    let names = pinned(&dir);
    let number = label.rsplit('-').next().expect("session-<pid>-<number>");
    let mut wanted: Vec<String> = ["mcpw_sys_enter", "mcpw_exec", "mcpw_fork"]
        .into_iter()
        .chain(["ENTER_CALLS", "EXIT_CALLS"])
        .map(str::to_owned)
        .collect();
    wanted.extend(
        mcpwarden_common::SOCK_PROGRAMS
            .iter()
            .map(|(name, _)| format!("{name}-{number}")),
    );
    for name in &wanted {
        assert!(names.contains(name), "{name} is not pinned: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n == "mcpw_sys_exit"),
        "the exit hook is pinned, so attached, with no session asking: {names:?}"
    );

    kill_and_see_the_server_die(&mut d, &server, client, &go_on);

    // No mcpwarden runs now (every test that starts one is serial, as
    // each start reaps what a dead one left), and the programs are still
    // in the kernel.
    assert!(dir.exists(), "the dead daemon's pins are gone already");
    assert_eq!(loaded("mcpw_sys_enter"), 1, "the syscall hook was unloaded");
    // A process that joins the session's cgroup is under its rules: a
    // connect the policy does not allow is refused (the same connect from
    // outside goes through) ...
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    assert_eq!(connect_from(None, port), "connected");
    assert_eq!(connect_from(Some(&cgroup), port), "EPERM");
    // ... and an open under the denied prefix is killed at syscall entry,
    // which takes the hook's call table, kept by its pin.
    let out = in_cgroup(Some(&cgroup), &format!("exec cat {}", fx.secret()))
        .output()
        .expect("run cat");
    assert_eq!(out.status.signal(), Some(9), "{}", out.status);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("the secret"),
        "the secret was read"
    );

    // The next start kills what is left in the session, then removes the
    // pins, which unloads every program.
    let mut left = in_cgroup(Some(&cgroup), "exec sleep 300")
        .spawn()
        .expect("spawn sleep");
    assert!(
        eventually(Duration::from_secs(5), || pids_in(&cgroup)
            .contains(&left.id())),
        "sleep never joined {}",
        cgroup.display()
    );
    d.restart();
    let status = left.wait().expect("wait for sleep");
    assert_eq!(status.signal(), Some(9), "{status}");
    // The daemon answers once it has recovered.
    assert!(
        !dir.exists(),
        "the restart left {}; its log:\n{}",
        dir.display(),
        d.log()
    );
    assert!(
        d.log().contains("removed the kernel programs"),
        "the restart did not say what it removed:\n{}",
        d.log()
    );
    assert_nothing_left_behind(Some(&cgroup));
    d.stop_quietly();
}
