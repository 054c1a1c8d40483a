//! `[inspect]`: what PSI reads and what a flagged text does.
//!
//! ```toml
//! [inspect]
//! enabled = true        # default
//! action = "alert"      # allow | alert (default) | block
//! threshold = 0.9       # default: the trained threshold
//! blocked_result = "error"   # or "redact": the client gets the result
//!                            # with flagged text replaced
//! points = ["arguments", "results", "descriptions", "prompts", "resources"]
//! ```
use serde::Deserialize;

use crate::inspect::scan::{ALL_POINTS, Point};

/// What a flagged message does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Record nothing but the score.
    Allow,
    /// Record an alert and forward the message. The default while the
    /// model's false-positive rate on short texts (schema descriptions,
    /// one-line results) is what BENCHMARKS.md reports: blocking is a
    /// policy's explicit choice.
    #[default]
    Alert,
    /// Stop the message: the client gets an error (or a redacted result).
    Block,
}

/// How a blocked server answer reaches the client.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BlockedResult {
    /// A JSON-RPC error naming the finding.
    #[default]
    Error,
    /// The answer with each flagged text replaced by a notice.
    Redact,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInspect {
    enabled: Option<bool>,
    action: Option<Action>,
    threshold: Option<f32>,
    blocked_result: Option<BlockedResult>,
    points: Option<Vec<Point>>,
}

/// The validated `[inspect]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct InspectPolicy {
    pub enabled: bool,
    pub action: Action,
    /// `None`: the trained threshold.
    pub threshold: Option<f32>,
    pub blocked_result: BlockedResult,
    pub points: Vec<Point>,
}

impl Default for InspectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            action: Action::Alert,
            threshold: None,
            blocked_result: BlockedResult::Error,
            points: ALL_POINTS.to_vec(),
        }
    }
}

impl RawInspect {
    /// Validates; the error is (key, message).
    pub(super) fn resolve(self, enforce: bool) -> Result<InspectPolicy, (String, String)> {
        if let Some(t) = self.threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err((
                "inspect.threshold".into(),
                format!("{t}: must be above 0 and at most 1"),
            ));
        }
        let mut action = self.action.unwrap_or_default();
        // Monitor mode never stops anything.
        if !enforce && action == Action::Block {
            action = Action::Alert;
        }
        Ok(InspectPolicy {
            enabled: self.enabled.unwrap_or(true),
            action,
            threshold: self.threshold,
            blocked_result: self.blocked_result.unwrap_or_default(),
            points: self.points.unwrap_or_else(|| ALL_POINTS.to_vec()),
        })
    }
}

impl InspectPolicy {
    #[must_use]
    pub fn reads(&self, point: Point) -> bool {
        self.enabled && self.action != Action::Allow && self.points.contains(&point)
    }
}
