//! `mcpwarden audit`: read and verify the hash-chained audit log.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use crate::admin::{Op, client};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check every record's hash and link: exit 1 at the first that does
    /// not fit.
    Verify {
        /// State directory (default: $MCPWARDEN_STATE_DIR, else /var/lib/mcpwarden).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Print the last records (JSON lines).
    Show {
        #[arg(long, short = 'n', default_value_t = 20)]
        last: usize,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

impl AuditCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        crate::exit_code(self.go())
    }

    fn go(self) -> Result<ExitCode, String> {
        match self {
            Self::Verify { state } => {
                let v = client::ask(Op::VerifyAudit, state.as_deref())?;
                if v["intact"] == true {
                    println!(
                        "audit log intact: {} records, every hash and link checked",
                        v["records"]
                    );
                    Ok(ExitCode::SUCCESS)
                } else {
                    println!(
                        "audit log BROKEN at record {}: {}",
                        v["seq"],
                        v["why"].as_str().unwrap_or_default()
                    );
                    Ok(ExitCode::from(1))
                }
            }
            Self::Show { last, state } => {
                let records = client::ask(Op::Audit { last }, state.as_deref())?;
                for r in records.as_array().into_iter().flatten() {
                    println!("{r}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
