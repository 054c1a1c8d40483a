//! The daemon's settings file, `/etc/mcpwarden/mcpwarden.toml` (the
//! package installs a commented one). What decides each setting, first
//! first: the command line, the environment (`MCPWARDEN_SOCKET`,
//! `MCPWARDEN_STATE_DIR`), the file, the built-in default.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{DEFAULT_API, DaemonError, DaemonOptions};

/// Where the settings are read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/mcpwarden/mcpwarden.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    daemon: DaemonTable,
    #[serde(default)]
    retention: Retention,
    #[serde(default)]
    unmanaged: crate::unmanaged::Settings,
}

/// How much history the store keeps (`[retention]`): records older than
/// `days` go, then the oldest beyond the counts. 0 turns a limit off.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub days: u64,
    pub audit_records: u64,
    pub sessions: u64,
    pub verdicts: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            days: 365,
            audit_records: 1_000_000,
            sessions: 100_000,
            verdicts: 1_000_000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonTable {
    socket: Option<PathBuf>,
    /// An address, or "off".
    api: Option<String>,
    api_tls: Option<bool>,
    state: Option<PathBuf>,
}

/// What the command line said (`mcpwarden daemon`'s flags).
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// The settings file (default: /etc/mcpwarden/mcpwarden.toml, if
    /// present). Flags win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (default: $MCPWARDEN_STATE_DIR, else the
    /// settings, else /var/lib/mcpwarden).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The Unix socket (default: $MCPWARDEN_SOCKET, else the settings,
    /// else /run/mcpwarden/mcpwarden.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Where the TCP API listens (default: the settings, else
    /// 127.0.0.1:8000).
    #[arg(long, conflicts_with = "no_api")]
    pub api: Option<SocketAddr>,
    /// No TCP API: the Unix socket only.
    #[arg(long)]
    pub no_api: bool,
    /// Serve the TCP API over HTTPS, accepting client certificates of
    /// the host's CA (`mcpwarden ca init`).
    #[arg(long)]
    pub api_tls: bool,
}

/// The daemon's options: `flags` over the environment over the settings
/// file over the defaults. A missing default file is no error; a missing
/// `--config` file, or a file that does not parse, is.
pub fn resolve(flags: Flags) -> Result<DaemonOptions, DaemonError> {
    let (path, must_exist) = match &flags.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => None,
        Err(e) => {
            return Err(DaemonError::Config {
                path: path.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    let env = |name: &str| std::env::var_os(name).map(PathBuf::from);
    resolve_with(
        flags,
        text.as_deref().map(|t| (t, path.as_path())),
        env("MCPWARDEN_SOCKET"),
        env("MCPWARDEN_STATE_DIR"),
    )
}

fn resolve_with(
    flags: Flags,
    file: Option<(&str, &Path)>,
    env_socket: Option<PathBuf>,
    env_state: Option<PathBuf>,
) -> Result<DaemonOptions, DaemonError> {
    let invalid = |path: &Path, message: String| DaemonError::Config {
        path: path.display().to_string(),
        message,
    };
    let settings = match file {
        Some((text, path)) => toml::from_str::<Settings>(text)
            .map_err(|e| invalid(path, e.to_string().trim_end().to_owned()))?,
        None => Settings::default(),
    };
    if let Some((i, p)) = settings
        .unmanaged
        .patterns
        .iter()
        .enumerate()
        .find(|(_, p)| p.chars().all(|c| c == '*'))
    {
        return Err(invalid(
            file.map_or(Path::new(DEFAULT_CONFIG), |(_, p)| p),
            format!(
                "unmanaged.patterns[{i}] = {p:?} matches every program on the host; name the servers' command lines"
            ),
        ));
    }
    let table = settings.daemon;
    let from_file_api = match table.api.as_deref().map(str::trim) {
        None => Some(DEFAULT_API.parse().expect("the default API address parses")),
        Some("off") => None,
        Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|e| {
            invalid(
                file.map_or(Path::new(DEFAULT_CONFIG), |(_, p)| p),
                format!(
                    "daemon.api = {addr:?}: {e} (an address such as 127.0.0.1:8000, or \"off\")"
                ),
            )
        })?),
    };
    let api = if flags.no_api {
        None
    } else {
        flags.api.or(from_file_api)
    };
    Ok(DaemonOptions {
        state: flags.state.or(env_state).or(table.state),
        socket: flags
            .socket
            .or(env_socket)
            .or(table.socket)
            .unwrap_or_else(|| PathBuf::from(crate::admin::client::DEFAULT_SOCKET)),
        api,
        api_tls: flags.api_tls || table.api_tls.unwrap_or(false),
        retention: settings.retention,
        unmanaged: settings.unmanaged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGED: &str = include_str!("../../../packaging/config/mcpwarden.toml");

    fn file(text: &str) -> (&str, &Path) {
        (text, Path::new("/etc/mcpwarden/mcpwarden.toml"))
    }

    #[test]
    fn the_packaged_file_gives_the_defaults() {
        let o = resolve_with(Flags::default(), Some(file(PACKAGED)), None, None).expect("parses");
        assert_eq!(o.socket, Path::new(crate::admin::client::DEFAULT_SOCKET));
        assert_eq!(o.api, Some(DEFAULT_API.parse().expect("addr")));
        assert!(!o.api_tls);
        assert_eq!(o.state, None, "the store's own default applies");
        assert_eq!(o.retention, Retention::default());
        assert_eq!(o.unmanaged, crate::unmanaged::Settings::default());
    }

    #[test]
    fn unmanaged_servers_settings_are_read_and_checked() {
        use crate::unmanaged::Action;
        let text = "[unmanaged]\naction = \"kill\"\npatterns = [\"*my-server*\"]\n";
        let o = resolve_with(Flags::default(), Some(file(text)), None, None).expect("parses");
        assert_eq!(o.unmanaged.action, Action::Kill);
        assert_eq!(o.unmanaged.patterns, ["*my-server*"]);
        let text = "[unmanaged]\naction = \"off\"\n";
        let o = resolve_with(Flags::default(), Some(file(text)), None, None).expect("parses");
        assert_eq!(o.unmanaged.action, Action::Off);
        assert_eq!(
            o.unmanaged.patterns,
            crate::unmanaged::Settings::default().patterns
        );
        let e = resolve_with(
            Flags::default(),
            Some(file("[unmanaged]\naction = \"maybe\"\n")),
            None,
            None,
        )
        .expect_err("bad action");
        assert!(e.to_string().contains("unknown variant `maybe`"), "{e}");
        let e = resolve_with(
            Flags::default(),
            Some(file("[unmanaged]\npatterns = [\"*mcp*\", \"**\"]\n")),
            None,
            None,
        )
        .expect_err("matches everything");
        assert!(e.to_string().contains("unmanaged.patterns[1]"), "{e}");
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let text =
            "[daemon]\nsocket = \"/f.sock\"\nstate = \"/f\"\napi = \"off\"\napi_tls = true\n";
        let o = resolve_with(Flags::default(), Some(file(text)), None, None).expect("parses");
        assert_eq!(
            (o.socket.as_path(), o.state.as_deref(), o.api, o.api_tls),
            (Path::new("/f.sock"), Some(Path::new("/f")), None, true)
        );
        let o = resolve_with(
            Flags::default(),
            Some(file(text)),
            Some("/e.sock".into()),
            Some("/e".into()),
        )
        .expect("parses");
        assert_eq!(o.socket, Path::new("/e.sock"));
        assert_eq!(o.state.as_deref(), Some(Path::new("/e")));
        let flags = Flags {
            socket: Some("/c.sock".into()),
            api: Some("127.0.0.1:9".parse().expect("addr")),
            ..Flags::default()
        };
        let o =
            resolve_with(flags, Some(file(text)), Some("/e.sock".into()), None).expect("parses");
        assert_eq!(o.socket, Path::new("/c.sock"));
        assert_eq!(o.api, Some("127.0.0.1:9".parse().expect("addr")));
    }

    #[test]
    fn a_bad_file_is_an_error_that_names_it_and_the_key() {
        let e = resolve_with(
            Flags::default(),
            Some(file("[daemon]\napi = \"everywhere\"\n")),
            None,
            None,
        )
        .expect_err("bad address");
        let message = e.to_string();
        assert!(
            message.contains("/etc/mcpwarden/mcpwarden.toml"),
            "{message}"
        );
        assert!(message.contains("daemon.api"), "{message}");
        let e = resolve_with(
            Flags::default(),
            Some(file("[daemon]\nport = 1\n")),
            None,
            None,
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn retention_limits_are_read_and_zero_turns_one_off() {
        let text = "[retention]\ndays = 30\naudit_records = 0\n";
        let o = resolve_with(Flags::default(), Some(file(text)), None, None).expect("parses");
        assert_eq!(
            o.retention,
            Retention {
                days: 30,
                audit_records: 0,
                ..Retention::default()
            }
        );
    }

    #[test]
    fn no_api_wins_over_everything() {
        let flags = Flags {
            no_api: true,
            ..Flags::default()
        };
        let o = resolve_with(
            flags,
            Some(file("[daemon]\napi = \"127.0.0.1:1\"\n")),
            None,
            None,
        )
        .expect("parses");
        assert_eq!(o.api, None);
    }
}
