//! `[kernel]`: which privilege and evasion calls are a verdict.
use mcpwarden_common::kill;

/// The names `[kernel] kill` accepts, with their kernel bits and what each
/// covers (for messages).
pub const KILL_CALLS: &[(&str, u32, &str)] = &[
    ("ptrace", kill::PTRACE, "ptrace or process_vm_readv/writev"),
    (
        "privilege",
        kill::PRIVILEGE,
        "a change of ids or capabilities (set*id, setgroups, capset)",
    ),
    (
        "module",
        kill::MODULE,
        "loading or removing a kernel module",
    ),
    ("bpf", kill::BPF, "the bpf system call"),
    (
        "memfd_exec",
        kill::MEMFD_EXEC,
        "running a program from a memfd (a file only in memory)",
    ),
];

/// Every call [`KILL_CALLS`] names: the default. None of them is needed by
/// a tool server, the sandbox refuses all of them, and a server that tries
/// one is compromised or up to something.
#[must_use]
pub fn default_kill() -> u32 {
    KILL_CALLS.iter().fold(0, |bits, &(_, bit, _)| bits | bit)
}

/// The kernel bits of `[kernel] kill`; an unknown name is an error naming
/// its index and the names there are.
pub fn parse_kill(names: &[String]) -> Result<u32, (usize, String)> {
    let mut bits = 0;
    for (i, name) in names.iter().enumerate() {
        let Some(&(_, bit, _)) = KILL_CALLS.iter().find(|(n, _, _)| n == name) else {
            let known: Vec<&str> = KILL_CALLS.iter().map(|(n, _, _)| *n).collect();
            return Err((
                i,
                format!("unknown call {name:?}; one of: {}", known.join(", ")),
            ));
        };
        bits |= bit;
    }
    Ok(bits)
}

/// The name and description of the `[kernel] kill` entry that covers
/// `bit`.
#[must_use]
pub fn kill_call(bit: u32) -> Option<(&'static str, &'static str)> {
    KILL_CALLS
        .iter()
        .find(|&&(_, b, _)| b == bit)
        .map(|&(name, _, what)| (name, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_bits_and_unknown_names_are_refused() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_kill(&[]), Ok(0));
        assert_eq!(
            parse_kill(&names(&["ptrace", "memfd_exec"])),
            Ok(kill::PTRACE | kill::MEMFD_EXEC)
        );
        assert_eq!(parse_kill(&names(&["bpf", "bpf"])), Ok(kill::BPF));
        let (i, message) = parse_kill(&names(&["ptrace", "setuid"])).expect_err("unknown");
        assert_eq!(i, 1);
        assert!(message.contains("\"setuid\"") && message.contains("privilege"));
        assert_eq!(
            default_kill(),
            kill::PTRACE | kill::PRIVILEGE | kill::MODULE | kill::BPF | kill::MEMFD_EXEC
        );
        assert_eq!(kill_call(kill::BPF).map(|c| c.0), Some("bpf"));
        assert_eq!(kill_call(0), None);
    }
}
