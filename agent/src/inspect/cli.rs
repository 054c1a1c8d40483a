//! `mcpwarden scan`: PSI from the command line. Exit 0 clean, 1 flagged,
//! 2 error; `--json` prints the verdict with its spans.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::{Inspector, eval};

/// `mcpwarden scan`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// File to read; stdin when absent or `-`.
    file: Option<PathBuf>,
    /// Print the verdict as JSON, with the text of each span.
    #[arg(long)]
    json: bool,
    /// Flag at this score (0..1] instead of the trained threshold.
    #[arg(long)]
    threshold: Option<f32>,
    /// Evaluate on a labelled JSON-lines file (models/data/test.jsonl)
    /// and print recall, false-positive rates, AUROC and latency.
    #[arg(long, value_name = "JSONL", conflicts_with = "file")]
    eval: Option<PathBuf>,
    /// With --eval: only the first N records.
    #[arg(long, requires = "eval")]
    limit: Option<usize>,
    /// With --eval: also write each record's verdict to this file, one
    /// JSON line per record (its line number, label, kind and verdict).
    #[arg(long, value_name = "FILE", requires = "eval")]
    scores: Option<PathBuf>,
}

impl ScanArgs {
    /// Runs `mcpwarden scan`.
    #[must_use]
    pub fn run(self) -> ExitCode {
        scan(
            self.file.as_deref(),
            self.json,
            self.threshold,
            self.eval.as_deref(),
            self.limit,
            self.scores.as_deref(),
        )
    }
}

fn scan(
    file: Option<&Path>,
    json: bool,
    threshold: Option<f32>,
    eval_file: Option<&Path>,
    limit: Option<usize>,
    scores: Option<&Path>,
) -> ExitCode {
    if let Some(t) = threshold
        && !(t > 0.0 && t <= 1.0)
    {
        eprintln!("mcpwarden scan: --threshold {t}: must be above 0 and at most 1");
        return ExitCode::from(2);
    }
    let inspector = match Inspector::load_default(2) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("mcpwarden scan: {e}");
            return ExitCode::from(2);
        }
    };
    let inspector = match threshold {
        Some(t) => inspector.with_threshold(t),
        None => inspector,
    };
    if let Some(path) = eval_file {
        return match eval::evaluate(&inspector, path, limit, scores) {
            Ok(report) => {
                out(&serde_json::to_string_pretty(&report).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mcpwarden scan --eval: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut text = String::new();
    let read = match file {
        None => std::io::stdin().read_to_string(&mut text).map(|_| ()),
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_string(&mut text).map(|_| ()),
        Some(p) => {
            std::fs::read(p).map(|bytes| text = String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    if let Err(e) = read {
        eprintln!(
            "mcpwarden scan: cannot read {}: {e}",
            file.map_or("stdin".into(), |p| p.display().to_string())
        );
        return ExitCode::from(2);
    }
    let verdict = match inspector.inspect(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("mcpwarden scan: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        let mut out_json = serde_json::to_value(&verdict).unwrap_or_default();
        out_json["threshold"] = serde_json::json!(inspector.threshold);
        for f in out_json["findings"].as_array_mut().into_iter().flatten() {
            let (a, b) = (
                f["start"].as_u64().unwrap_or(0) as usize,
                f["end"].as_u64().unwrap_or(0) as usize,
            );
            if let Some(s) = text.get(a..b) {
                f["text"] = serde_json::Value::String(s.chars().take(400).collect());
            }
        }
        out(&out_json.to_string());
    } else {
        out(&format!(
            "{} score {:.3} (threshold {:.3}; {} window(s), {} read by the model)",
            if verdict.flagged { "FLAGGED" } else { "clean" },
            verdict.score,
            inspector.threshold,
            verdict.windows,
            verdict.model_windows
        ));
        for f in &verdict.findings {
            let shown: String = text
                .get(f.start..f.end)
                .unwrap_or("")
                .chars()
                .take(100)
                .collect();
            out(&format!(
                "  [{}..{}] {:?} {:.3}: {} {:?}",
                f.start, f.end, f.kind, f.score, f.detail, shown
            ));
        }
    }
    if verdict.flagged {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints a line; a closed stdout (`| head`) is not an error worth a panic.
fn out(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
