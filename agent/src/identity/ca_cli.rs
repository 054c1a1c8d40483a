//! `mcpwarden ca`: the host's CA for agents' client certificates.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{
    ca::{self, Paths},
    cli::parse_ttl,
};
use crate::store::{Db, audit::Actor, state_dir};

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
        let open = |state: Option<PathBuf>| {
            let dir = state_dir(state.as_deref());
            let db = Db::open(&dir).map_err(|e| e.to_string())?;
            Ok::<_, String>((db, Paths::new(&dir)))
        };
        let names = |given: Vec<String>| {
            if given.is_empty() {
                ca::default_server_names()
            } else {
                given
            }
        };
        let err = |e: ca::CaError| e.to_string();
        match self {
            Self::Init {
                name,
                server_names,
                state,
            } => {
                let (db, paths) = open(state)?;
                let server_names = names(server_names);
                ca::init(&db, &Actor::current(), &paths, &name, &server_names).map_err(err)?;
                println!(
                    "CA {name:?} created in {}\n  CA certificate (give it to clients): {}\n  endpoint certificate for {}: {}",
                    paths.dir.display(),
                    paths.ca_cert().display(),
                    server_names.join(", "),
                    paths.server_cert().display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Self::Server {
                server_names,
                state,
            } => {
                let (db, paths) = open(state)?;
                let server_names = names(server_names);
                ca::issue_server(&db, &Actor::current(), &paths, &server_names).map_err(err)?;
                println!(
                    "endpoint certificate for {} renewed: {}",
                    server_names.join(", "),
                    paths.server_cert().display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Self::Issue {
                name,
                out,
                expires,
                state,
            } => {
                let ttl = parse_ttl(&expires)?;
                let (db, paths) = open(state)?;
                issue_files(&db, &paths, &name, &out, ttl)
            }
            Self::List { json, state } => {
                let (db, _) = open(state)?;
                list(&db, json)
            }
            Self::Revoke { what, state } => {
                let (db, _) = open(state)?;
                let done = ca::revoke(&db, &Actor::current(), &what).map_err(err)?;
                if done.is_empty() {
                    println!("already revoked");
                }
                for c in done {
                    println!("revoked certificate {} of {:?}", c.serial, c.identity);
                }
                Ok(ExitCode::SUCCESS)
            }
            Self::Crl { valid, state } => {
                let valid = parse_ttl(&valid)?
                    .ok_or_else(|| "a CRL's validity cannot be `never`".to_owned())?;
                let (db, paths) = open(state)?;
                print!("{}", ca::crl(&db, &paths, valid).map_err(err)?);
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Issues a client certificate for `name` and writes it, its key (0600)
/// and the CA's certificate into `out`, never over existing files.
fn issue_files(
    db: &Db,
    paths: &Paths,
    name: &str,
    out: &std::path::Path,
    ttl: Option<u64>,
) -> Result<ExitCode, String> {
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
    let issued = ca::issue(db, &Actor::current(), paths, name, ttl).map_err(|e| e.to_string())?;
    ca::write_file(&key_path, issued.key_pem.as_bytes(), 0o600, false)
        .map_err(|e| e.to_string())?;
    ca::write_file(&cert_path, issued.cert_pem.as_bytes(), 0o644, false)
        .map_err(|e| e.to_string())?;
    let ca_copy = out.join("ca.crt");
    if !ca_copy.exists() {
        let pem = std::fs::read(paths.ca_cert())
            .map_err(|e| format!("{}: {e}", paths.ca_cert().display()))?;
        ca::write_file(&ca_copy, &pem, 0o644, false).map_err(|e| e.to_string())?;
    }
    println!(
        "issued certificate {} for {name:?} (valid until {} unix)\n  {}\n  {} (secret)\n  {}",
        issued.record.serial,
        issued.record.not_after,
        cert_path.display(),
        key_path.display(),
        ca_copy.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(db: &Db, json: bool) -> Result<ExitCode, String> {
    let all = ca::list(db).map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&all).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = crate::store::unix_now();
    for c in &all {
        let status = match c.revoked {
            Some(_) => "revoked",
            None if c.not_after <= now => "expired",
            None => "valid",
        };
        println!(
            "{:<24} serial {}  {status}  sha256 {}",
            c.identity, c.serial, c.fingerprint
        );
    }
    Ok(ExitCode::SUCCESS)
}
