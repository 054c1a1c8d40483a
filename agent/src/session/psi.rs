//! PSI in the session: reads the text of client requests and server
//! answers (see [`crate::inspect::scan`]) and, per `[inspect]` policy,
//! records an alert or stops the message. A blocked request gets a JSON-RPC
//! error and never reaches the server; a blocked answer never reaches the
//! client: it gets an error, or the answer with the flagged text replaced.
//! If the model fails on a message, the message is treated as flagged
//! (fail closed).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    inspect::{
        Inspector, Verdict,
        encoder::EncoderError,
        scan::{self, Point},
    },
    policy::inspect::{Action, BlockedResult, InspectPolicy},
    proxy::message::{RequestId, code, error_response},
};

pub(crate) struct Psi {
    pub inspector: Arc<Inspector>,
    pub policy: InspectPolicy,
    pub threshold: f32,
}

impl std::fmt::Debug for Psi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psi")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What PSI decided about one message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing flagged (or not read).
    Clean,
    /// Flagged: record `record`; `replace` is the line the peer gets instead
    /// (None: forward the original, the action is alert).
    Flagged {
        record: Value,
        replace: Option<String>,
    },
}

/// One flagged field.
#[derive(Debug, serde::Serialize)]
struct Hit<'a> {
    path: &'a str,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

/// Loads PSI for a session if its policy wants it.
pub(crate) fn load(policy: &InspectPolicy) -> Result<Option<Psi>, EncoderError> {
    if !policy.enabled || policy.action == Action::Allow {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let (inspector, threshold) = shared(policy.threshold)?;
    tracing::info!(
        "PSI ready in {} ms (threshold {threshold:.3}, action {:?})",
        started.elapsed().as_millis(),
        policy.action
    );
    Ok(Some(Psi {
        inspector,
        policy: policy.clone(),
        threshold,
    }))
}

/// The model, loaded once per process and threshold: the daemon's
/// sessions share it (about 100 MB and 150 ms each otherwise). Sessions
/// then take turns on the encoder, which on two cores costs little.
fn shared(threshold: Option<f32>) -> Result<(Arc<Inspector>, f32), EncoderError> {
    type Loaded = Vec<(Option<u32>, Arc<Inspector>, f32)>;
    static LOADED: std::sync::Mutex<Loaded> = std::sync::Mutex::new(Vec::new());
    let key = threshold.map(f32::to_bits);
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, inspector, t)) = loaded.iter().find(|(k, ..)| *k == key) {
        return Ok((Arc::clone(inspector), *t));
    }
    let inspector = Inspector::load_default(2)?;
    let t = threshold.unwrap_or_else(|| inspector.default_threshold());
    let inspector = Arc::new(inspector.with_threshold(t));
    loaded.push((key, Arc::clone(&inspector), t));
    Ok((inspector, t))
}

impl Psi {
    /// Inspects `body` (one JSON-RPC object) at `point`. `id` is the request
    /// (asked or answered), `method` and `tool` describe it.
    pub fn inspect(
        &self,
        body: &[u8],
        point: Point,
        id: &RequestId,
        method: &str,
        tool: Option<&str>,
    ) -> Outcome {
        if !self.policy.reads(point) {
            return Outcome::Clean;
        }
        let Ok(msg) = serde_json::from_slice::<Value>(body) else {
            return Outcome::Clean; // the proxy already refused what does not parse
        };
        let fields = scan::fields(&msg, point);
        if fields.is_empty() {
            return Outcome::Clean;
        }
        let texts: Vec<&str> = fields.iter().map(|(_, s)| *s).collect();
        let started = std::time::Instant::now();
        let inspected = self.inspector.inspect_many(&texts);
        crate::metrics::PSI_LATENCY.observe(started.elapsed());
        let (verdicts, failure) = match inspected {
            Ok(v) => (v, None),
            Err(e) => {
                tracing::error!("PSI could not inspect {method}: {e}; treating it as flagged");
                (Vec::new(), Some(e.to_string()))
            }
        };
        let hits: Vec<Hit<'_>> = fields
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.flagged)
            .map(|((path, _), verdict)| Hit { path, verdict })
            .collect();
        if hits.is_empty() && failure.is_none() {
            return Outcome::Clean;
        }
        let score = hits.iter().map(|h| h.verdict.score).fold(0.0f32, f32::max);
        let point_name = format!("{point:?}").to_lowercase();
        let block = self.policy.action == Action::Block;
        let record = json!({
            "kind": "psi",
            "action": if block { "blocked" } else { "alert" },
            "point": point_name,
            "method": method,
            "tool": tool,
            "request": id.value,
            "score": score,
            "threshold": self.threshold,
            "fields": hits,
            "error": failure,
        });
        let first = hits.first().map_or("(model failure)", |h| h.path);
        let what = hits
            .first()
            .and_then(|h| h.verdict.findings.first())
            .map_or_else(|| format!("score {score:.3}"), |f| f.detail.clone());
        if !block {
            tracing::warn!("PSI alert on {method} {point_name} at {first}: {what}");
            return Outcome::Flagged {
                record,
                replace: None,
            };
        }
        tracing::warn!("PSI blocked {method} {point_name} at {first}: {what}");
        let replace = if point != Point::Arguments
            && self.policy.blocked_result == BlockedResult::Redact
            && failure.is_none()
        {
            redact(msg.clone(), &hits)
        } else {
            let message = format!(
                "mcpwarden blocked this {}: prompt injection suspected in {first} ({what})",
                if point == Point::Arguments {
                    "call"
                } else {
                    "answer"
                }
            );
            error_response(Some(id), code::BLOCKED, &message, Some(record.clone()))
        };
        Outcome::Flagged {
            record,
            replace: Some(replace),
        }
    }
}

/// The answer with every flagged field replaced by a notice.
fn redact(mut msg: Value, hits: &[Hit<'_>]) -> String {
    for h in hits {
        if let Some(slot) = msg.pointer_mut(h.path) {
            *slot = Value::String(format!(
                "[mcpwarden removed this text: prompt injection suspected (score {:.3})]",
                h.verdict.score
            ));
        }
    }
    msg.to_string()
}
