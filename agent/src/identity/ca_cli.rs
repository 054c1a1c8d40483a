//! `mcpwarden ca`: the host's CA for agents' client certificates.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use serde_json::Value;

use super::{ca, cli::parse_ttl};
use crate::admin::{Op, client};

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create the CA and the HTTPS endpoint's certificate (in <state>/ca).
    Init {
        /// The CA's common name.
        #[arg(long, default_value = "mcpwarden agents CA")]
        name: String,
        /// A name the endpoint certificate is for (repeatable; default:
        /// localhost, 127.0.0.1, ::1 and the host name).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Renew the HTTPS endpoint's certificate.
    Server {
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Issue a client certificate for a registered identity: writes
    /// NAME.crt and NAME.key (0600) into --out, and the CA's certificate
    /// as ca.crt if it is not there yet.
    Issue {
        name: String,
        /// Directory for the files (default: the current one).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Lifetime (`90d`, `12h`, ... or `never`); never beyond the
        /// identity's own expiry.
        #[arg(long, default_value = "90d")]
        expires: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// List issued client certificates.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Revoke client certificates: by serial, by fingerprint, or every
    /// certificate of an identity.
    Revoke {
        what: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Print a CRL of the revoked certificates (PEM), signed by the CA.
    Crl {
        /// How long the CRL is valid.
        #[arg(long, default_value = "7d")]
        valid: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

impl CaCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        crate::exit_code(self.go())
    }

    fn go(self) -> Result<ExitCode, String> {
        match self {
            Self::Init {
                name,
                server_names,
                state,
            } => {
                let a = client::ask(Op::CaInit { name, server_names }, state.as_deref())?;
                println!(
                    "CA {} created in {}\n  CA certificate (give it to clients): {}\n  endpoint certificate for {}: {}",
                    a["name"],
                    text(&a["dir"]),
                    text(&a["ca_cert"]),
                    names(&a["server_names"]),
                    text(&a["server_cert"])
                );
            }
            Self::Server {
                server_names,
                state,
            } => {
                let a = client::ask(Op::CaServer { server_names }, state.as_deref())?;
                println!(
                    "endpoint certificate for {} renewed: {}",
                    names(&a["server_names"]),
                    text(&a["server_cert"])
                );
            }
            Self::Issue {
                name,
                out,
                expires,
                state,
            } => {
                parse_ttl(&expires)?;
                let op = Op::IssueCert {
                    name: name.clone(),
                    expires,
                };
                issue_files(&name, &out, || client::ask(op, state.as_deref()))?;
            }
            Self::List { json, state } => {
                let all = client::ask(Op::Certs, state.as_deref())?;
                if json {
                    println!("{all}");
                    return Ok(ExitCode::SUCCESS);
                }
                let now = crate::store::unix_now();
                for c in all.as_array().into_iter().flatten() {
                    let status = match (c["revoked"].as_u64(), c["not_after"].as_u64()) {
                        (Some(_), _) => "revoked",
                        (None, Some(t)) if t <= now => "expired",
                        _ => "valid",
                    };
                    println!(
                        "{:<24} serial {}  {status}  sha256 {}",
                        text(&c["identity"]),
                        text(&c["serial"]),
                        text(&c["fingerprint"])
                    );
                }
            }
            Self::Revoke { what, state } => {
                let done = client::ask(Op::RevokeCert { what }, state.as_deref())?;
                let done = done.as_array().cloned().unwrap_or_default();
                if done.is_empty() {
                    println!("already revoked");
                }
                for c in done {
                    println!(
                        "revoked certificate {} of {}",
                        text(&c["serial"]),
                        c["identity"]
                    );
                }
            }
            Self::Crl { valid, state } => {
                print!(
                    "{}",
                    text(&client::ask(Op::Crl { valid }, state.as_deref())?["pem"])
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Writes an issued certificate, its key (0600) and the CA's certificate
/// into `out`, never over existing files.
fn issue_files(
    name: &str,
    out: &std::path::Path,
    issue: impl FnOnce() -> Result<Value, String>,
) -> Result<(), String> {
    let cert_path = out.join(format!("{name}.crt"));
    let key_path = out.join(format!("{name}.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(format!(
                "{} exists; it is never overwritten (choose another --out)",
                p.display()
            ));
        }
    }
    let a = issue()?;
    let write = |p: &std::path::Path, field: &str, mode| {
        ca::write_file(p, text(&a[field]).as_bytes(), mode, false).map_err(|e| e.to_string())
    };
    write(&key_path, "key_pem", 0o600)?;
    write(&cert_path, "cert_pem", 0o644)?;
    let ca_copy = out.join("ca.crt");
    if !ca_copy.exists() {
        write(&ca_copy, "ca_pem", 0o644)?;
    }
    println!(
        "issued certificate {} for {name:?} (valid until {} unix)\n  {}\n  {} (secret)\n  {}",
        text(&a["record"]["serial"]),
        a["record"]["not_after"],
        cert_path.display(),
        key_path.display(),
        ca_copy.display()
    );
    Ok(())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn names(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
