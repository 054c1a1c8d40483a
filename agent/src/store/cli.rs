//! `mcpwarden audit`: read and verify the hash-chained audit log.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{Db, audit, state_dir};

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
        let (state, verify_only, last) = match &self {
            Self::Verify { state } => (state.clone(), true, 0),
            Self::Show { state, last } => (state.clone(), false, *last),
        };
        let result = Db::open(&state_dir(state.as_deref())).and_then(|db| {
            if verify_only {
                audit::verify(&db).map(|v| match v {
                    audit::Verdict::Intact { records } => {
                        println!(
                            "audit log intact: {records} records, every hash and link checked"
                        );
                        ExitCode::SUCCESS
                    }
                    audit::Verdict::Broken { seq, why } => {
                        println!("audit log BROKEN at record {seq}: {why}");
                        ExitCode::from(1)
                    }
                })
            } else {
                audit::tail(&db, last).map(|records| {
                    for r in records {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    }
                    ExitCode::SUCCESS
                })
            }
        });
        result.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })
    }
}
