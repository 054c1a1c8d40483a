//! Privilege and evasion calls from a real process of the session: `ptrace`,
//! `setuid`, `bpf` (handed by the sandbox's seccomp filter to mcpwarden,
//! which records and refuses them), `memfd_create` (made by mcpwarden for
//! the process), memory made executable, and a program run from a memfd. Reported with the call they happened in;
//! under `[kernel] kill` (every one of them by default) they kill the tree
//! in enforce mode and alert in monitor mode.
use serde_json::{Value, json};

use crate::support::{Fixture, Run, VENV_PYTHON, assert_nothing_left_behind, events, serial};

/// Python run by the server's `run` tool: each call, and what it returned.
const CALLS: &str = r#"
import ctypes, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
out = {}
out["ptrace"] = [libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno()]
try:
    os.setuid(0)
    out["setuid"] = "changed"
except OSError as e:
    out["setuid"] = e.errno
out["bpf"] = [libc.syscall(321, 0, 0, 0), ctypes.get_errno()]
out["finit_module"] = [libc.syscall(313, 0, b"", 0), ctypes.get_errno()]
out["process_vm_readv"] = [libc.syscall(310, 1, 0, 0, 0, 0, 0), ctypes.get_errno()]
out["capset"] = [libc.syscall(126, 0, 0), ctypes.get_errno()]
out["memfd"] = os.memfd_create("mcpw-stage")
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
out["mapped"] = len(m)
print(out)
"#;

/// The same kinds of calls from a process outside the session.
const HOST_CALLS: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None)
libc.ptrace(16, 0x7fffffff, 0, 0)
libc.syscall(321, -1, 0, 0)
os.memfd_create("host-stage")
"#;

/// Copies `/bin/true` into a memfd and runs it from there.
const MEMFD_EXEC: &str = r#"
import os
fd = os.memfd_create("stage", 0)
with open("/bin/true", "rb") as f:
    os.write(fd, f.read())
os.execv(f"/proc/self/fd/{fd}", ["stage"])
"#;

fn python(code: &str) -> Value {
    json!({"call": "run", "args": {"argv": [VENV_PYTHON, "-c", code]}})
}

fn only(all: &[Value], kind: &str, call: Option<&str>) -> Value {
    let found: Vec<&Value> = all
        .iter()
        .filter(|e| e["kind"] == kind && call.is_none_or(|c| e["call"] == c))
        .collect();
    assert!(!found.is_empty(), "no {kind} {call:?} event in {all:#?}");
    found[0].clone()
}

#[test]
fn privilege_and_evasion_calls_are_events_of_their_request() {
    let _guard = serial();
    // `kill = []`: every call is only reported.
    let fx = Fixture::with_sandbox("enforce", "[kernel]\nkill = []\n");
    let scenario = json!([
        {"call": "whoami"},
        python(CALLS),
        {"host_run": ["python3", "-c", HOST_CALLS]},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    assert_eq!(run.step(2)["host_run"], 0);
    let server_pid = run.whoami(0)["pid"].as_u64().expect("pid");
    let printed = run.text(1);
    // mcpwarden refused ptrace, setuid and bpf (EPERM); memfd_create and
    // the executable mapping worked.
    assert!(printed.contains("'ptrace': [-1, 1]"), "{printed}");
    assert!(printed.contains("'setuid': 1"), "{printed}");
    assert!(printed.contains("'bpf': [-1, 1]"), "{printed}");
    for call in ["finit_module", "process_vm_readv", "capset"] {
        assert!(printed.contains(&format!("'{call}': [-1, 1]")), "{printed}");
    }
    assert!(printed.contains("'mapped': 4096"), "{printed}");
    let id = run.call_id("run", 0);
    let all = events(&fx.events);

    let ptrace = only(&all, "ptrace", Some("ptrace"));
    assert_eq!(ptrace["error"], "EPERM");
    assert_eq!(ptrace["args"][0], 16, "PTRACE_ATTACH: {ptrace}");
    assert_eq!(ptrace["args"][1], server_pid, "its target: {ptrace}");
    let setuid = only(&all, "privilege", Some("setuid"));
    assert_eq!(setuid["error"], "EPERM");
    assert_eq!(setuid["args"][0], 0);
    let bpf = only(&all, "bpf", Some("bpf"));
    assert_eq!(bpf["error"], "EPERM");
    let module = only(&all, "module", Some("finit_module"));
    let vm_read = only(&all, "ptrace", Some("process_vm_readv"));
    let capset = only(&all, "privilege", Some("capset"));
    let memfd = only(&all, "memfd", Some("memfd_create"));
    assert_eq!(memfd["path"], "mcpw-stage");
    assert!(memfd["ret"].as_i64().is_some_and(|fd| fd >= 0), "{memfd}");
    let exec_memory = all
        .iter()
        .find(|e| e["kind"] == "exec_memory" && e["length"] == 4096 && e["prot"] == 7)
        .unwrap_or_else(|| panic!("no PROT_EXEC mapping of 4096 bytes in {all:#?}"));
    for event in [&module, &vm_read, &capset] {
        assert_eq!(event["error"], "EPERM", "{event}");
    }
    for event in [
        &ptrace,
        &setuid,
        &bpf,
        &module,
        &vm_read,
        &capset,
        &memfd,
        exec_memory,
    ] {
        assert_eq!(
            event["request_id"], id,
            "attributed to the run call: {event}"
        );
        assert_eq!(event["action"], "allow", "{event}");
        assert_eq!(event["rule"], Value::Null, "{event}");
        assert_ne!(event["pid"], server_pid, "the tool's child did it: {event}");
    }
    // Nothing from the host's process, though it made the same calls.
    assert!(!all.iter().any(|e| e["path"] == "host-stage"), "{all:#?}");
    assert_eq!(all.iter().filter(|e| e["kind"] == "ptrace").count(), 2);
    assert_eq!(all.iter().filter(|e| e["kind"] == "bpf").count(), 1);
    assert_nothing_left_behind(Some(&run.session_cgroup(0)));
}

#[test]
fn ptrace_kills_the_tree_and_fails_the_call_in_enforce_mode() {
    let _guard = serial();
    // The default `[kernel] kill` names every call.
    let fx = Fixture::new("enforce");
    let scenario = json!([
        {"call": "whoami"},
        python("import ctypes, os; ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0); print('alive')"),
        {"call": "whoami"},
    ]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    let error = &run.step(1)["error"];
    assert_eq!(error["code"], -32001, "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("called ptrace") && message.contains("kernel.kill \"ptrace\""),
        "{message}"
    );
    assert!(
        run.step(2)["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no longer running")),
        "the server is gone: {}",
        run.step(2)
    );
    let all = events(&fx.events);
    let ptrace = only(&all, "ptrace", Some("ptrace"));
    assert_eq!(ptrace["action"], "killed");
    assert_eq!(ptrace["rule"], "kernel.kill \"ptrace\"");
    assert_eq!(ptrace["detected_by"], "kernel");
    assert_eq!(ptrace["request_id"], run.call_id("run", 0));
    assert_nothing_left_behind(Some(&run.session_cgroup(0)));
}

#[test]
fn a_program_run_from_a_memfd_is_recognised() {
    let _guard = serial();
    // Monitor mode: reported as an alert, the program runs.
    let fx = Fixture::new("monitor");
    let scenario =
        json!([python(MEMFD_EXEC), python("import os; os.setgid(0)"), {"call": "whoami"}]);
    let run = Run::through_mcpwarden(&fx, &scenario);
    assert_eq!(run.text(0), "", "/bin/true ran from the memfd");
    let all = events(&fx.events);
    let exec = all
        .iter()
        .find(|e| e["kind"] == "exec" && e["from_memfd"] == true)
        .unwrap_or_else(|| panic!("no exec from a memfd in {all:#?}"));
    assert_eq!(exec["action"], "alert", "{exec}");
    assert_eq!(exec["rule"], "kernel.kill \"memfd_exec\"");
    assert_eq!(exec["request_id"], run.call_id("run", 0));
    let setgid = only(&all, "privilege", Some("setgid"));
    assert_eq!(setgid["action"], "alert", "{setgid}");
    assert_eq!(setgid["request_id"], run.call_id("run", 1));
    assert_nothing_left_behind(Some(&run.session_cgroup(2)));

    // Enforce mode: killed at exec, the call fails naming the rule.
    let fx = Fixture::new("enforce");
    let run = Run::through_mcpwarden(&fx, &json!([python(MEMFD_EXEC)]));
    let message = run.step(0)["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("the call failed: {}", run.step(0)))
        .to_owned();
    assert!(message.contains("kernel.kill \"memfd_exec\""), "{message}");
    let all = events(&fx.events);
    let exec = all
        .iter()
        .find(|e| e["kind"] == "exec" && e["from_memfd"] == true)
        .unwrap_or_else(|| panic!("no exec from a memfd in {all:#?}"));
    assert_eq!(exec["action"], "killed");
    assert_nothing_left_behind(None);
}
