//! `mcpwarden scan --eval FILE`: PSI's numbers on a labelled JSON-lines
//! file (`text`, `label` 0/1, `kind` prompt/doc/indirect/word/description),
//! as written by `models/build_data.py`. Runs the same code as the proxy,
//! message by message, and reports recall, false-positive rates, AUROC and
//! latency.

use std::{
    io::{BufRead, Write},
    path::Path,
    time::Instant,
};

use serde::Deserialize;
use serde_json::json;

use super::Inspector;

#[derive(Debug, Deserialize)]
struct Record {
    text: String,
    label: u8,
    kind: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Record {
        path: String,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Model(#[from] super::encoder::EncoderError),
}

struct Scored {
    label: u8,
    kind: String,
    score: f32,
    flagged: bool,
    micros: f64,
    tokens: usize,
}

/// Area under the ROC curve (ties count half), from scores of positives
/// and negatives.
#[must_use]
pub fn auroc(pos: &[f32], neg: &[f32]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f32, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // ranks i+1..=j
        rank_sum += avg * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (p, n) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// Recall of `pos` at the strictest score that lets at most `fpr` of `neg`
/// reach it: one point of the ROC curve. This is the file's own operating
/// point, for comparing models; the deployed threshold is set on
/// validation and may sit elsewhere.
#[must_use]
pub fn recall_at_fpr(pos: &[f32], neg: &[f32], fpr: f64) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut neg = neg.to_vec();
    neg.sort_by(|a, b| b.total_cmp(a)); // highest first
    let allowed = (fpr * neg.len() as f64).floor() as usize;
    // Scores above the allowed-th highest benign score: ties with a benign
    // score beyond the allowance are not counted as caught.
    let bar = neg.get(allowed).copied().unwrap_or(f32::NEG_INFINITY);
    pos.iter().filter(|&&s| s > bar).count() as f64 / pos.len() as f64
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs the evaluation; returns the report as JSON (also printed as text
/// by the caller). With `verdicts_to`, each record's verdict is written there
/// as a JSON line, for comparing runs record by record.
///
/// # Errors
/// Unreadable file, malformed record, unwritable scores file, or a model
/// failure.
pub fn evaluate(
    inspector: &Inspector,
    path: &Path,
    limit: Option<usize>,
    verdicts_to: Option<&Path>,
) -> Result<serde_json::Value, EvalError> {
    let name = path.display().to_string();
    let write_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| EvalError::Write { path, source }
    };
    let mut sink = match verdicts_to {
        Some(p) => Some((
            std::io::BufWriter::new(std::fs::File::create(p).map_err(write_err(p))?),
            p,
        )),
        None => None,
    };
    let file = std::fs::File::open(path).map_err(|source| EvalError::Read {
        path: name.clone(),
        source,
    })?;
    let mut scored = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|l| scored.len() >= l) {
            break;
        }
        let line = line.map_err(|source| EvalError::Read {
            path: name.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(&line).map_err(|e| EvalError::Record {
            path: name.clone(),
            line: n + 1,
            message: e.to_string(),
        })?;
        let started = Instant::now();
        let v = inspector.inspect(&r.text)?;
        let micros = started.elapsed().as_secs_f64() * 1e6;
        if let Some((w, p)) = sink.as_mut() {
            let row = json!({"line": n + 1, "label": r.label, "kind": r.kind, "verdict": v});
            writeln!(w, "{row}").map_err(write_err(p))?;
        }
        let tokens = inspector
            .windows(&r.text)?
            .iter()
            .map(|w| w.ids.len())
            .sum::<usize>();
        scored.push(Scored {
            label: r.label,
            kind: r.kind,
            score: v.score,
            flagged: v.flagged,
            micros,
            tokens,
        });
    }
    if let Some((mut w, p)) = sink {
        w.flush().map_err(write_err(p))?;
    }
    Ok(report(&scored))
}

fn group(scored: &[Scored], kind: &str, label: u8) -> (usize, usize, Vec<f32>) {
    let rows: Vec<&Scored> = scored
        .iter()
        .filter(|s| s.kind == kind && s.label == label)
        .collect();
    let flagged = rows.iter().filter(|s| s.flagged).count();
    (rows.len(), flagged, rows.iter().map(|s| s.score).collect())
}

fn report(scored: &[Scored]) -> serde_json::Value {
    let rate = |(n, k, _): &(usize, usize, Vec<f32>)| {
        if *n == 0 {
            f64::NAN
        } else {
            *k as f64 / *n as f64
        }
    };
    let direct = group(scored, "prompt", 1);
    let indirect = group(scored, "indirect", 1);
    let benign_docs = group(scored, "doc", 0);
    let benign_prompts = group(scored, "prompt", 0);
    // One- and two-word strings (names, paths, values): reported apart,
    // the threshold being set on tool outputs.
    let benign_words = group(scored, "word", 0);
    // Tool and field descriptions (SDK docstrings, written gateway
    // fields), also apart.
    let benign_descriptions = group(scored, "description", 0);
    let pos_all: Vec<f32> = scored
        .iter()
        .filter(|s| s.label == 1)
        .map(|s| s.score)
        .collect();
    let neg_all: Vec<f32> = scored
        .iter()
        .filter(|s| s.label == 0)
        .map(|s| s.score)
        .collect();
    let all_recall = pos_all.len() as f64;
    let all_flagged = scored.iter().filter(|s| s.label == 1 && s.flagged).count() as f64;
    // Latency of messages up to 512 tokens, and the cost of each further
    // 1k tokens (least squares over the longer ones).
    let mut short: Vec<f64> = scored
        .iter()
        .filter(|s| s.tokens <= 512)
        .map(|s| s.micros / 1e3)
        .collect();
    short.sort_by(f64::total_cmp);
    let mut all_ms: Vec<f64> = scored.iter().map(|s| s.micros / 1e3).collect();
    all_ms.sort_by(f64::total_cmp);
    let (sx, sy, sxx, sxy, n) =
        scored
            .iter()
            .fold((0.0, 0.0, 0.0, 0.0, 0.0), |(a, b, c, d, n), s| {
                let (x, y) = (s.tokens as f64 / 1e3, s.micros / 1e3);
                (a + x, b + y, c + x * x, d + x * y, n + 1.0)
            });
    let per_1k = if n * sxx - sx * sx > 0.0 {
        (n * sxy - sx * sy) / (n * sxx - sx * sx)
    } else {
        f64::NAN
    };
    json!({
        "messages": scored.len(),
        "recall": {
            "all_injections": all_flagged / all_recall,
            "direct_prompts": rate(&direct),
            "indirect_in_tool_outputs": rate(&indirect),
            "counts": {"direct": direct.0, "indirect": indirect.0},
        },
        "false_positive_rate": {
            "benign_tool_outputs": rate(&benign_docs),
            "benign_prompts": rate(&benign_prompts),
            "benign_words": rate(&benign_words),
            "benign_descriptions": rate(&benign_descriptions),
            "counts": {
                "tool_outputs": benign_docs.0,
                "prompts": benign_prompts.0,
                "words": benign_words.0,
                "descriptions": benign_descriptions.0,
            },
        },
        "auroc": {
            "all": auroc(&pos_all, &neg_all),
            "indirect_vs_benign_tool_outputs": auroc(&indirect.2, &benign_docs.2),
            "direct_vs_benign_prompts": auroc(&direct.2, &benign_prompts.2),
            "indirect_vs_benign_descriptions": auroc(&indirect.2, &benign_descriptions.2),
        },
        // The ROC curve at 1 % and 2 % of this file's benign tool outputs
        // (not the deployed threshold, which validation sets).
        "recall_at_tool_output_fpr": {
            "0.01": recall_at_fpr(&pos_all, &benign_docs.2, 0.01),
            "0.02": recall_at_fpr(&pos_all, &benign_docs.2, 0.02),
        },
        "latency_ms": {
            "up_to_512_tokens": {"n": short.len(), "p50": percentile(&short, 0.5), "p99": percentile(&short, 0.99), "max": short.last()},
            "all": {"p50": percentile(&all_ms, 0.5), "p99": percentile(&all_ms, 0.99)},
            "per_extra_1k_tokens": per_1k,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_of_known_cases() {
        assert!((auroc(&[0.9, 0.8], &[0.1, 0.2]) - 1.0).abs() < 1e-12);
        assert!((auroc(&[0.1, 0.2], &[0.9, 0.8])).abs() < 1e-12);
        assert!((auroc(&[0.5], &[0.5]) - 0.5).abs() < 1e-12);
        // One of four pairs misordered.
        assert!((auroc(&[0.9, 0.3], &[0.1, 0.4]) - 0.75).abs() < 1e-12);
        assert!(auroc(&[], &[0.1]).is_nan());
    }

    #[test]
    fn recall_at_fpr_is_a_point_of_the_roc_curve() {
        let neg: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect(); // 0.00..0.99
        let pos = [0.995, 0.985, 0.975, 0.5];
        // 1 % of 100 benign: one may pass, the bar is the second highest (0.98).
        assert!((recall_at_fpr(&pos, &neg, 0.01) - 0.5).abs() < 1e-12);
        // 2 %: the bar is 0.97.
        assert!((recall_at_fpr(&pos, &neg, 0.02) - 0.75).abs() < 1e-12);
        // A tie with the bar is not caught.
        assert!((recall_at_fpr(&[0.98], &neg, 0.01)).abs() < 1e-12);
        // No benign may pass: the bar is the highest benign score (0.99).
        assert!((recall_at_fpr(&pos, &neg, 0.0) - 0.25).abs() < 1e-12);
        assert!(recall_at_fpr(&[], &neg, 0.01).is_nan());
    }
}
