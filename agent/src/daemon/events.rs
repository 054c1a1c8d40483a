//! The daemon's live record of what its sessions see: every kernel event
//! (with the request it is tied to and its verdict) and every policy, PSI
//! and identity record, kept in a ring of the newest [`CAPACITY`] and
//! broadcast to subscribers. Served as
//! `GET /api/v1/events` and `/api/v1/alerts` (filters: `session`,
//! `request`, `kind`, `verdict`, `last`) and as a server-sent event stream,
//! `GET /api/v1/events/stream` (same filters), which the dashboard follows.
//! Verdicts (every record whose action is not `allow`) are also written to
//! the store, so `/api/v1/alerts` answers from there and survives a
//! restart; `[retention]` bounds them like the rest.
use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    http::{StatusCode, header},
    response::{
        IntoResponse as _, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::store::{Db, StoreError, unix_now};

/// Writes a verdict to the store.
fn keep(db: &Db, line: &str) -> Result<(), StoreError> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&unix_now().to_be_bytes());
    key[8..].copy_from_slice(&db.next_id()?.to_be_bytes());
    db.tree(TREE)?
        .insert(key, line.as_bytes())
        .map_err(|e| db.io(&e))?;
    Ok(())
}

/// Removes the verdicts older than `before`, then the oldest beyond
/// `keep`; returns how many.
pub fn prune(db: &Db, before: Option<u64>, keep: Option<u64>) -> Result<u64, StoreError> {
    let tree = db.tree(TREE)?;
    let mut removed = 0;
    if let Some(before) = before {
        for entry in tree.range(..before.to_be_bytes().to_vec()) {
            let (key, _) = entry.map_err(|e| db.io(&e))?;
            tree.remove(key).map_err(|e| db.io(&e))?;
            removed += 1;
        }
    }
    if let Some(keep) = keep {
        let over = (tree.len() as u64).saturating_sub(keep);
        for entry in tree
            .iter()
            .take(usize::try_from(over).unwrap_or(usize::MAX))
        {
            let (key, _) = entry.map_err(|e| db.io(&e))?;
            tree.remove(key).map_err(|e| db.io(&e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// How many records the ring keeps.
pub const CAPACITY: usize = 20_000;

/// One record, with the fields filters look at.
#[derive(Debug)]
pub struct Item {
    pub seq: u64,
    session: String,
    kind: String,
    action: String,
    /// The request id as JSON text (`7`, `"a"`), when the record has one.
    request: Option<String>,
    /// The record's JSON.
    pub line: Arc<str>,
}

impl Item {
    /// A verdict other than allow: an alert, a block, a kill, a denial.
    fn is_alert(&self) -> bool {
        !self.action.is_empty() && self.action != "allow"
    }
}

impl Item {
    fn from_line(seq: u64, line: &str) -> Option<Self> {
        let v = serde_json::from_str::<Value>(line).ok()?;
        let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
        let request = ["request_id", "request"]
            .iter()
            .map(|k| &v[*k])
            .find(|r| !r.is_null())
            .map(Value::to_string);
        Some(Self {
            seq,
            session: text("session"),
            kind: text("kind"),
            action: text("action"),
            request,
            line: Arc::from(line),
        })
    }
}

/// The store's tree of verdicts: key = seconds since the epoch, then a
/// store-wide id (both big-endian, so the tree is in time order).
pub const TREE: &str = "verdicts";

/// The ring, its subscribers, and the store verdicts are kept in.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<(u64, VecDeque<Arc<Item>>)>,
    tx: broadcast::Sender<Arc<Item>>,
    store: Option<Db>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            ring: Mutex::new((0, VecDeque::with_capacity(1024))),
            tx: broadcast::channel(4096).0,
            store: None,
        }
    }
}

impl Feed {
    /// A feed whose verdicts are also kept in `db`.
    #[must_use]
    pub fn durable(db: Db) -> Self {
        Self {
            store: Some(db),
            ..Self::default()
        }
    }

    /// Records one JSON line (it carries its `session`).
    pub fn publish(&self, line: &str) {
        let item = {
            let mut ring = self
                .ring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(item) = Item::from_line(ring.0 + 1, line) else {
                return;
            };
            ring.0 += 1;
            let item = Arc::new(item);
            if ring.1.len() == CAPACITY {
                ring.1.pop_front();
            }
            ring.1.push_back(Arc::clone(&item));
            item
        };
        if item.is_alert()
            && let Some(db) = &self.store
            && let Err(e) = keep(db, line)
        {
            tracing::error!("cannot store a verdict: {e}");
        }
        // No subscriber is no error.
        let _ = self.tx.send(item);
    }

    /// The newest `filter.last` verdicts in the store that pass `filter`,
    /// oldest first (the ring when there is no store).
    pub fn verdicts(&self, filter: &Filter) -> Result<Vec<Arc<Item>>, StoreError> {
        let Some(db) = &self.store else {
            return Ok(self.query(filter));
        };
        let mut out = Vec::new();
        for (i, entry) in db.tree(TREE)?.iter().rev().enumerate() {
            if out.len() == filter.last {
                break;
            }
            let (_, raw) = entry.map_err(|e| db.io(&e))?;
            let Some(item) = Item::from_line(i as u64, &String::from_utf8_lossy(&raw)) else {
                continue;
            };
            if filter.passes(&item) {
                out.push(Arc::new(item));
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The newest `filter.last` records that pass `filter`, oldest first.
    pub fn query(&self, filter: &Filter) -> Vec<Arc<Item>> {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<Arc<Item>> = ring
            .1
            .iter()
            .rev()
            .filter(|i| filter.passes(i))
            .take(filter.last)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// What a caller asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub session: Option<String>,
    pub request: Option<String>,
    pub kind: Option<String>,
    pub verdict: Option<String>,
    pub alerts_only: bool,
    pub last: usize,
}

impl Filter {
    /// From a query string; `alerts_only` for the alerts route.
    pub fn parse(query: Option<&str>, alerts_only: bool) -> Result<Self, String> {
        let mut f = Self {
            session: None,
            request: None,
            kind: None,
            verdict: None,
            alerts_only,
            last: 100,
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| format!("{k}: not UTF-8"))?
                .into_owned();
            match k {
                "session" => f.session = Some(v),
                "request" => f.request = Some(v),
                "kind" => f.kind = Some(v),
                "verdict" => f.verdict = Some(v),
                "last" => {
                    f.last = v
                        .parse::<usize>()
                        .map_err(|_| format!("last={v:?} is not a count"))?
                        .min(CAPACITY);
                }
                other => {
                    return Err(format!(
                        "unknown filter {other:?} (session, request, kind, verdict, last)"
                    ));
                }
            }
        }
        Ok(f)
    }

    fn passes(&self, item: &Item) -> bool {
        let request_matches = |want: &String| {
            item.request
                .as_deref()
                .is_some_and(|r| r == want || r.trim_matches('"') == want.as_str())
        };
        (!self.alerts_only || item.is_alert())
            && self.session.as_ref().is_none_or(|s| *s == item.session)
            && self.kind.as_ref().is_none_or(|k| *k == item.kind)
            && self.verdict.as_ref().is_none_or(|v| *v == item.action)
            && self.request.as_ref().is_none_or(request_matches)
    }
}

fn bad(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// Answers `GET path?query` when it is one of this module's routes.
pub fn route(feed: &Arc<Feed>, path: &str, query: Option<&str>) -> Option<Response> {
    let (alerts, stream) = match path.trim_end_matches('/') {
        "/api/v1/events" => (false, false),
        "/api/v1/alerts" => (true, false),
        "/api/v1/events/stream" => (false, true),
        "/api/v1/alerts/stream" => (true, true),
        _ => return None,
    };
    let filter = match Filter::parse(query, alerts) {
        Ok(f) => f,
        Err(e) => return Some(bad(&e)),
    };
    if stream {
        return Some(follow(feed, filter));
    }
    let items = if alerts {
        match feed.verdicts(&filter) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!("cannot read the verdicts: {e}");
                return Some(
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(header::CONTENT_TYPE, "application/json")],
                        serde_json::json!({"error": "the verdicts cannot be read"}).to_string(),
                    )
                        .into_response(),
                );
            }
        }
    } else {
        feed.query(&filter)
    };
    let mut body = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&item.line);
    }
    body.push(']');
    Some(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
    )
}

/// The server-sent event stream: what passes the filter from now on, each
/// record an event whose id is its place in the feed (`alert` events for
/// verdicts, `record` for the rest), with a keep-alive comment every 15 s.
/// A subscriber that falls more than the channel behind is told how many
/// records it missed.
fn follow(feed: &Arc<Feed>, filter: Filter) -> Response {
    let rx = feed.tx.subscribe();
    let stream = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(item) if filter.passes(&item) => {
                    let event = Event::default()
                        .id(item.seq.to_string())
                        .event(if item.is_alert() { "alert" } else { "record" })
                        .data(&*item.line);
                    return Some((Ok::<_, Infallible>(event), (rx, filter)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let event = Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(event), (rx, filter)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed() -> Feed {
        let feed = Feed::default();
        for line in [
            r#"{"session":"s1","kind":"open","action":"allow","request_id":1,"path":"/a"}"#,
            r#"{"session":"s1","kind":"open","action":"killed","request_id":2,"path":"/secret"}"#,
            r#"{"session":"s2","kind":"psi","action":"alert","request":"x"}"#,
            r#"{"session":"s2","kind":"exec","action":"allow","request_id":null}"#,
        ] {
            feed.publish(line);
        }
        feed
    }

    fn paths(items: &[Arc<Item>]) -> Vec<u64> {
        items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn filters_select_by_session_request_kind_and_verdict() {
        let feed = fed();
        let all = Filter::parse(None, false).expect("filter");
        assert_eq!(paths(&feed.query(&all)), [1, 2, 3, 4]);
        let q = |s: &str, alerts| feed.query(&Filter::parse(Some(s), alerts).expect("filter"));
        assert_eq!(paths(&q("session=s1", false)), [1, 2]);
        assert_eq!(paths(&q("request=2", false)), [2]);
        assert_eq!(paths(&q("request=x", false)), [3]);
        assert_eq!(paths(&q("kind=open&verdict=killed", false)), [2]);
        assert_eq!(
            paths(&q("", true)),
            [2, 3],
            "alerts: every verdict but allow"
        );
        assert_eq!(paths(&q("last=1", false)), [4]);
        assert!(Filter::parse(Some("colour=red"), false).is_err());
        assert!(Filter::parse(Some("last=many"), false).is_err());
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let feed = Feed::default();
        for i in 0..CAPACITY + 5 {
            feed.publish(&format!(
                r#"{{"session":"s","kind":"open","action":"allow","n":{i}}}"#
            ));
        }
        let all = feed.query(&Filter {
            last: CAPACITY,
            ..Filter::parse(None, false).expect("filter")
        });
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 6);
        assert!(all[0].line.contains("\"n\":5"));
    }

    #[test]
    fn verdicts_are_kept_in_the_store_and_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let feed = Feed::durable(db.clone());
        for i in 0..5 {
            feed.publish(&format!(
                r#"{{"session":"s","kind":"open","action":"killed","n":{i}}}"#
            ));
            feed.publish(r#"{"session":"s","kind":"open","action":"allow"}"#);
        }
        // A new feed on the same store (a restarted daemon) has them.
        let again = Feed::durable(db.clone());
        let alerts = Filter::parse(Some("last=3"), true).expect("filter");
        let kept = again.verdicts(&alerts).expect("verdicts");
        assert_eq!(kept.len(), 3);
        assert!(kept[2].line.contains("\"n\":4"), "newest last");
        assert_eq!(prune(&db, None, Some(2)).expect("prune"), 3);
        assert_eq!(prune(&db, Some(unix_now() + 1), None).expect("prune"), 2);
        assert!(again.verdicts(&alerts).expect("verdicts").is_empty());
    }

    #[tokio::test]
    async fn subscribers_get_what_passes_their_filter() {
        let feed = Feed::default();
        let mut rx = feed.tx.subscribe();
        feed.publish(r#"{"session":"s","kind":"open","action":"killed"}"#);
        let item = rx.recv().await.expect("an item");
        assert!(item.is_alert());
        assert_eq!(item.session, "s");
    }
}
