//! `mcpwarden policy check` and `mcpwarden policy test`.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{Policy, cases};

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files: exit 0 when all are valid, 1 otherwise. Each
    /// error names the file, line, column and key.
    Check {
        /// Policy files (TOML); a NAME.test.toml is checked with its policy.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run each policy's cases (NAME.test.toml next to NAME.toml): exit 0
    /// when every case passes, 1 when one fails, 2 on an unusable file.
    Test {
        /// Policy files (or their .test.toml files).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

impl PolicyCmd {
    #[must_use]
    pub fn run(self) -> ExitCode {
        match self {
            Self::Check { files } => check(&files),
            Self::Test { files } => test(&files),
        }
    }
}

/// The policy a path names: itself, or for NAME.test.toml, NAME.toml.
fn policy_of(path: &std::path::Path) -> PathBuf {
    if cases::is_cases_file(path) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(name.trim_end_matches(".test.toml").to_owned() + ".toml")
    } else {
        path.to_path_buf()
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for file in files {
        let path = policy_of(file);
        match Policy::load(&path) {
            Ok(p) => {
                let name = p
                    .metadata
                    .as_ref()
                    .map_or("(legacy, no metadata)", |m| m.name.as_str());
                println!(
                    "ok {}: {name}, mode {}, {} tool rule(s), tools.default {}",
                    path.display(),
                    p.mode,
                    p.tools.rules.len(),
                    p.tools.default
                );
                for w in p.warnings() {
                    println!("warning: {w}");
                }
                if cases::is_cases_file(file)
                    && let Err(e) = cases::load(file).and_then(|c| cases::run(&p, &c))
                {
                    eprintln!("error: {e}");
                    bad += 1;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                bad += 1;
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn test(files: &[PathBuf]) -> ExitCode {
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    for file in files {
        let policy_path = policy_of(file);
        let cases_path = cases::cases_path(&policy_path);
        let result = Policy::load(&policy_path)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                let cases = cases::load(&cases_path)?;
                cases::run(&p, &cases)
            });
        match result {
            Ok(outcomes) => {
                for o in outcomes {
                    if o.passed() {
                        passed += 1;
                        println!("ok   {}: {}", cases_path.display(), o.name);
                    } else {
                        failed += 1;
                        println!(
                            "FAIL {}: {}: expected {}, got {} by {}",
                            cases_path.display(),
                            o.name,
                            o.expected,
                            o.got,
                            o.why
                        );
                    }
                }
            }
            Err(e) => {
                broken += 1;
                eprintln!("error: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed, {broken} unusable file(s)");
    if broken > 0 {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
