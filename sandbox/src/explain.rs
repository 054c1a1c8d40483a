//! `mcpwarden sandbox explain`: a [`Spec`] in plain words.
use std::fmt::Write as _;

use crate::{seccomp, spec::Spec};

fn list(paths: &[std::path::PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a server started under `spec` will and will not be able to do.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "one line of output per statement, in reading order"
)]
pub fn explain(spec: &Spec) -> String {
    let mut s = String::new();
    let user = if spec.uid == crate::spec::NOBODY {
        " (nobody)"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "The server runs as uid {}{user}, gid {}, never as root, with no_new_privs",
        spec.uid, spec.gid
    );
    let _ = writeln!(s, "(setuid programs cannot raise its privileges).");
    let _ = writeln!(s, "\nIt can:");
    let _ = writeln!(s, "  - read files under: {}", list(&spec.read));
    let _ = writeln!(s, "  - read and run programs under: {}", list(&spec.exec));
    let verb = if spec.dry_run {
        "write (into throw-away copies, discarded at exit)"
    } else {
        "read and write"
    };
    let _ = writeln!(s, "  - {verb} under: {}", list(&spec.write));
    let _ = writeln!(
        s,
        "    (/tmp and /dev/shm are private to this server and empty at start)"
    );
    if spec.has_network() {
        let ports = |p: &[u16]| {
            if p.is_empty() {
                "none".to_owned()
            } else {
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(
            s,
            "  - connect to TCP ports: {}; bind TCP ports: {}",
            ports(&spec.connect),
            ports(&spec.bind)
        );
    }
    let env = if spec.env.is_empty() {
        "none".to_owned()
    } else {
        spec.env.join(", ")
    };
    let _ = writeln!(
        s,
        "  - see these environment variables from the caller: {env} (plus a default PATH and HOME=/tmp)"
    );
    let _ = writeln!(
        s,
        "  - make the {:?} profile's {} system calls",
        spec.profile,
        seccomp::allowed(spec.profile).len()
    );
    let _ = writeln!(s, "\nIt cannot:");
    let _ = writeln!(
        s,
        "  - see any other file: nothing else of the host exists in its view (its own root,\n    \
         built from the paths above); nor run programs from writable places"
    );
    if spec.has_network() {
        let _ = writeln!(
            s,
            "  - use any other TCP port (UDP is not restricted by landlock)"
        );
    } else {
        let _ = writeln!(
            s,
            "  - use the network at all: it has its own empty network namespace"
        );
    }
    let _ = writeln!(
        s,
        "  - see processes outside its own tree (own pid namespace), signal them, or reach"
    );
    let _ = writeln!(s, "    abstract unix sockets outside the sandbox");
    let _ = writeln!(
        s,
        "  - change mounts, namespaces, the kernel (modules, kexec, BPF, perf), trace other"
    );
    let _ = writeln!(
        s,
        "    processes, use keyrings or io_uring, open raw or packet sockets, or inject"
    );
    let _ = writeln!(
        s,
        "    terminal input (TIOCSTI): {} system calls are always refused",
        seccomp::DENY_ALWAYS.len()
    );
    let l = &spec.limits;
    let memory = l
        .memory
        .map_or("unlimited".to_owned(), |m| format!("{} MiB", m >> 20));
    let cpu = l.cpu_millis.map_or("unlimited".to_owned(), |c| {
        format!(
            "{:.2} cores",
            f64::from(u32::try_from(c).unwrap_or(u32::MAX)) / 1000.0
        )
    });
    let _ = writeln!(
        s,
        "  - exceed: memory {memory}, {} tasks, cpu {cpu}, {} open files",
        l.pids, l.nofile
    );
    let mode = if spec.enforce {
        "enforce: if the kernel cannot apply every landlock rule, the server does not start"
    } else {
        "monitor: a partly enforced landlock ruleset is accepted"
    };
    let _ = writeln!(s, "\nMode {mode}.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Invoker, SandboxPolicy};

    #[test]
    fn explains_grants_and_refusals() {
        let spec = SandboxPolicy::default()
            .resolve(true, Invoker { uid: 0, gid: 0 })
            .expect("valid");
        let text = explain(&spec);
        assert!(text.contains("uid 65534 (nobody)"), "{text}");
        assert!(text.contains("own empty network namespace"), "{text}");
        assert!(text.contains("/usr"), "{text}");
        assert!(text.contains("nothing else of the host exists"), "{text}");
        assert!(
            text.contains(&format!(
                "{} system calls are always refused",
                seccomp::DENY_ALWAYS.len()
            )),
            "{text}"
        );
    }
}
