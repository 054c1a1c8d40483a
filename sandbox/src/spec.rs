//! What a sandbox grants: the `[sandbox]` section of a policy, validated
//! into a [`Spec`] that the exec helper applies.
//!
//! ```toml
//! [sandbox]
//! profile = "python"                 # seccomp profile: generic, python, node
//! read = ["/srv/project"]            # readable (plus the system set below)
//! write = ["/srv/project/out"]       # readable and writable
//! exec = ["/srv/project/bin"]        # executable (plus the system set)
//! system = true                      # grant the system set (default true)
//! env = ["LANG", "HOME"]             # variables passed through
//! user = 1000                        # uid (default: the invoking user, never root)
//! group = 1000                       # gid (default: the user's)
//! [sandbox.network]
//! connect = [443]                    # TCP ports; none at all = no network
//! bind = []
//! [sandbox.limits]
//! memory = "512M"
//! pids = 128
//! cpu = 1.0                          # cores
//! nofile = 1024
//! ```
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The seccomp allow-list a server runs under.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Syscalls of an ordinary single- or multi-threaded program.
    #[default]
    Generic,
    /// Generic plus what CPython needs.
    Python,
    /// Generic plus what Node.js (libuv, V8) needs.
    Node,
}

/// Paths every server may read (and run programs from, where marked), unless
/// the policy says `system = false`. Enough for a dynamically linked program,
/// a shell, Python and Node from the distribution.
pub const SYSTEM_READ: &[&str] = &[
    "/etc",
    "/proc",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
];
/// System paths that are also executable.
pub const SYSTEM_EXEC: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];
/// System paths that are writable.
pub const SYSTEM_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/tmp"];

/// Default `RLIMIT_NOFILE`.
pub const DEFAULT_NOFILE: u64 = 1024;
/// Default pids limit of the session's cgroup.
pub const DEFAULT_PIDS: u64 = 256;
/// Uid of `nobody`, used when the invoking user is root.
pub const NOBODY: u32 = 65534;

/// The `[sandbox]` table as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SandboxPolicy {
    #[serde(default)]
    profile: Profile,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    exec: Vec<String>,
    #[serde(default = "yes")]
    system: bool,
    #[serde(default)]
    env: Vec<String>,
    user: Option<u32>,
    group: Option<u32>,
    #[serde(default)]
    network: NetworkPolicy,
    #[serde(default)]
    limits: LimitsPolicy,
}

fn yes() -> bool {
    true
}

/// An absent `[sandbox]` table: the same as an empty one (system set on).
impl Default for SandboxPolicy {
    fn default() -> Self {
        Self {
            profile: Profile::default(),
            read: Vec::new(),
            write: Vec::new(),
            exec: Vec::new(),
            system: true,
            env: Vec::new(),
            user: None,
            group: None,
            network: NetworkPolicy::default(),
            limits: LimitsPolicy::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct NetworkPolicy {
    #[serde(default)]
    connect: Vec<u16>,
    #[serde(default)]
    bind: Vec<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct LimitsPolicy {
    memory: Option<Size>,
    pids: Option<u64>,
    cpu: Option<f64>,
    nofile: Option<u64>,
}

/// A byte count written as a number or as `"512M"`-style text.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// A `[sandbox]` value that is out of range; names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SpecError {
    /// The key, e.g. `sandbox.read[2]`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        key: key.into(),
        message: message.into(),
    }
}

/// Resource limits of a session.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes (cgroup).
    pub memory: Option<u64>,
    /// Number of tasks (cgroup).
    pub pids: u64,
    /// CPU in thousandths of a core (cgroup).
    pub cpu_millis: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub nofile: u64,
}

/// A validated sandbox, ready for the exec helper.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Spec {
    /// Seccomp profile.
    pub profile: Profile,
    /// Readable paths.
    pub read: Vec<PathBuf>,
    /// Readable and writable paths.
    pub write: Vec<PathBuf>,
    /// Readable and executable paths.
    pub exec: Vec<PathBuf>,
    /// Names of environment variables passed through.
    pub env: Vec<String>,
    /// uid to run as (never 0).
    pub uid: u32,
    /// gid to run as (never 0).
    pub gid: u32,
    /// TCP ports the server may connect to.
    pub connect: Vec<u16>,
    /// TCP ports the server may bind.
    pub bind: Vec<u16>,
    /// Resource limits.
    pub limits: Limits,
    /// Whether a landlock ruleset that is not fully enforced is an error.
    pub enforce: bool,
    /// Writable paths are throw-away overlays.
    pub dry_run: bool,
}

impl Spec {
    /// Whether the server gets any network at all (else: its own empty
    /// network namespace).
    #[must_use]
    pub fn has_network(&self) -> bool {
        !self.connect.is_empty() || !self.bind.is_empty()
    }
}

/// Who invoked mcpwarden, for the default uid/gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invoker {
    /// Real uid (or `SUDO_UID` when run through sudo).
    pub uid: u32,
    /// Real gid (or `SUDO_GID`).
    pub gid: u32,
}

impl Invoker {
    /// The user behind this process: `SUDO_UID`/`SUDO_GID` when root ran
    /// through sudo, else the real ids.
    #[must_use]
    pub fn current() -> Self {
        let sudo = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        if uid == 0
            && let (Some(u), Some(g)) = (sudo("SUDO_UID"), sudo("SUDO_GID"))
        {
            return Self { uid: u, gid: g };
        }
        Self { uid, gid }
    }
}

impl SandboxPolicy {
    /// Validates the table into a [`Spec`]. `enforce` comes from the
    /// policy's mode; `invoker` gives the default user.
    pub fn resolve(&self, enforce: bool, invoker: Invoker) -> Result<Spec, SpecError> {
        let paths = |key: &str, list: &[String]| -> Result<Vec<PathBuf>, SpecError> {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    checked_path(p)
                        .map_err(|m| err(format!("sandbox.{key}[{i}]"), format!("{p:?}: {m}")))
                })
                .collect()
        };
        let mut read = paths("read", &self.read)?;
        let mut write = paths("write", &self.write)?;
        let mut exec = paths("exec", &self.exec)?;
        if self.system {
            read.extend(SYSTEM_READ.iter().map(PathBuf::from));
            exec.extend(SYSTEM_EXEC.iter().map(PathBuf::from));
            write.extend(SYSTEM_WRITE.iter().map(PathBuf::from));
        }
        for (i, name) in self.env.iter().enumerate() {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(err(
                    format!("sandbox.env[{i}]"),
                    format!("{name:?} is not a variable name"),
                ));
            }
        }
        let (uid, gid) = match (self.user, self.group) {
            (Some(u), g) => (u, g.unwrap_or(u)),
            (None, g) if invoker.uid != 0 => (invoker.uid, g.unwrap_or(invoker.gid)),
            (None, g) => (NOBODY, g.unwrap_or(NOBODY)),
        };
        if uid == 0 {
            return Err(err("sandbox.user", "servers never run as root (uid 0)"));
        }
        if gid == 0 {
            return Err(err("sandbox.group", "servers never run with gid 0"));
        }
        for (key, ports) in [
            ("connect", &self.network.connect),
            ("bind", &self.network.bind),
        ] {
            if let Some(i) = ports.iter().position(|&p| p == 0) {
                return Err(err(
                    format!("sandbox.network.{key}[{i}]"),
                    "port 0 is not a port",
                ));
            }
        }
        let limits = self.limits.resolve()?;
        Ok(Spec {
            profile: self.profile,
            read,
            write,
            exec,
            env: self.env.clone(),
            uid,
            gid,
            connect: self.network.connect.clone(),
            bind: self.network.bind.clone(),
            limits,
            enforce,
            dry_run: false,
        })
    }
}

impl LimitsPolicy {
    fn resolve(&self) -> Result<Limits, SpecError> {
        let l = self;
        let memory = l
            .memory
            .as_ref()
            .map(parse_size)
            .transpose()
            .map_err(|m| err("sandbox.limits.memory", m))?;
        if memory.is_some_and(|m| m < 16 << 20) {
            return Err(err(
                "sandbox.limits.memory",
                "below 16 MiB no runtime starts",
            ));
        }
        let pids = l.pids.unwrap_or(DEFAULT_PIDS);
        if pids < 4 {
            return Err(err(
                "sandbox.limits.pids",
                "at least 4 tasks are needed to start anything",
            ));
        }
        let cpu_millis = match l.cpu {
            None => None,
            Some(c) if (0.01..=4096.0).contains(&c) => Some((c * 1000.0).round() as u64),
            Some(c) => {
                return Err(err(
                    "sandbox.limits.cpu",
                    format!("{c} is not a number of cores between 0.01 and 4096"),
                ));
            }
        };
        let nofile = l.nofile.unwrap_or(DEFAULT_NOFILE);
        if !(16..=1 << 20).contains(&nofile) {
            return Err(err(
                "sandbox.limits.nofile",
                "must be between 16 and 1048576",
            ));
        }
        Ok(Limits {
            memory,
            pids,
            cpu_millis,
            nofile,
        })
    }
}

/// An absolute path without `.`/`..`, as landlock and bind mounts need.
fn checked_path(p: &str) -> Result<PathBuf, &'static str> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err("must be an absolute path");
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err("must not contain . or .. components");
    }
    Ok(path.components().collect())
}

/// `1048576`, `"64K"`, `"512M"`, `"2G"` (powers of 1024).
fn parse_size(size: &Size) -> Result<u64, String> {
    match size {
        Size::Bytes(b) => Ok(*b),
        Size::Text(t) => {
            let t = t.trim();
            let (num, mult) = match t.char_indices().last() {
                Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
                Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
                Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
                _ => (t, 1),
            };
            num.trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| format!("{t:?} is not a size such as 1048576, \"512M\" or \"2G\""))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        #[derive(Deserialize)]
        struct Doc {
            sandbox: SandboxPolicy,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        doc.sandbox.resolve(true, Invoker { uid: 0, gid: 0 })
    }

    #[test]
    fn a_full_table_resolves() {
        let s = parse(
            "[sandbox]\nprofile = \"node\"\nread = [\"/srv/p\"]\nwrite = [\"/srv/p/out/\"]\nenv = [\"LANG\"]\n\
             user = 1000\n[sandbox.network]\nconnect = [443]\n[sandbox.limits]\nmemory = \"512M\"\npids = 64\ncpu = 0.5\n",
        )
        .expect("valid");
        assert_eq!(s.profile, Profile::Node);
        assert_eq!((s.uid, s.gid), (1000, 1000));
        assert!(
            s.read.contains(&PathBuf::from("/srv/p")) && s.read.contains(&PathBuf::from("/etc"))
        );
        assert!(
            s.write.contains(&PathBuf::from("/srv/p/out")),
            "trailing slash dropped: {:?}",
            s.write
        );
        assert_eq!(
            s.limits,
            Limits {
                memory: Some(512 << 20),
                pids: 64,
                cpu_millis: Some(500),
                nofile: DEFAULT_NOFILE
            }
        );
        assert!(s.has_network());
    }

    #[test]
    fn defaults_never_run_as_root_and_have_no_network() {
        let s = parse("[sandbox]\n").expect("valid");
        assert_eq!((s.uid, s.gid), (NOBODY, NOBODY));
        assert!(!s.has_network());
        let sudo = SandboxPolicy::default()
            .resolve(
                true,
                Invoker {
                    uid: 1000,
                    gid: 100,
                },
            )
            .expect("valid");
        assert_eq!((sudo.uid, sudo.gid), (1000, 100));
        let bare = SandboxPolicy {
            system: false,
            ..SandboxPolicy::default()
        }
        .resolve(true, Invoker { uid: 5, gid: 5 })
        .expect("valid");
        assert!(bare.read.is_empty() && bare.exec.is_empty() && bare.write.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[sandbox]\nread = [\"/a\", \"rel\"]\n", "sandbox.read[1]"),
            ("[sandbox]\nwrite = [\"/a/../b\"]\n", "sandbox.write[0]"),
            ("[sandbox]\nuser = 0\n", "sandbox.user"),
            ("[sandbox]\ngroup = 0\n", "sandbox.group"),
            ("[sandbox]\nenv = [\"A=B\"]\n", "sandbox.env[0]"),
            (
                "[sandbox.network]\nbind = [80, 0]\n",
                "sandbox.network.bind[1]",
            ),
            (
                "[sandbox.limits]\nmemory = \"lots\"\n",
                "sandbox.limits.memory",
            ),
            ("[sandbox.limits]\nmemory = 1024\n", "sandbox.limits.memory"),
            ("[sandbox.limits]\npids = 1\n", "sandbox.limits.pids"),
            ("[sandbox.limits]\ncpu = -1.0\n", "sandbox.limits.cpu"),
            ("[sandbox.limits]\nnofile = 3\n", "sandbox.limits.nofile"),
        ];
        for (text, key) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size(&Size::Text("64K".into())), Ok(64 << 10));
        assert_eq!(parse_size(&Size::Text(" 2g ".into())), Ok(2 << 30));
        assert_eq!(parse_size(&Size::Bytes(7)), Ok(7));
        assert!(parse_size(&Size::Text("99999999999999999999G".into())).is_err());
    }

    #[test]
    fn a_spec_survives_the_trip_to_the_helper() {
        let s = parse("[sandbox]\nread = [\"/x\"]\n").expect("valid");
        let back: Spec =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("json");
        assert_eq!(back, s);
    }
}
