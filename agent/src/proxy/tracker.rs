//! Requests in flight, and recently finished ones, with their times.
//!
//! Kernel events reach user space a little after they happen, so a request
//! that was answered a moment ago must still be found for an event stamped
//! while it was open: finished requests are kept for [`HISTORY_NS`].
use std::collections::{HashMap, VecDeque};

use super::message::RequestId;

/// How long finished requests stay attributable (10 s of monotonic time).
pub const HISTORY_NS: u64 = 10_000_000_000;
/// At most this many finished requests are kept, whatever their age.
pub const HISTORY_MAX: usize = 4096;

/// A request seen by the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its id.
    pub id: RequestId,
    /// Its method.
    pub method: String,
    /// The tool name of a `tools/call`.
    pub tool: Option<String>,
    /// When the proxy passed it to the server (monotonic ns).
    pub opened_ns: u64,
    /// When the proxy read its response (monotonic ns), if it has.
    pub closed_ns: Option<u64>,
}

impl Request {
    fn covers(&self, ts: u64) -> bool {
        self.opened_ns <= ts && self.closed_ns.is_none_or(|closed| ts <= closed)
    }
}

/// Why the tracker refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// The id is already used by a request still in flight.
    #[error("request id {0} is already in flight")]
    DuplicateId(String),
}

/// Client-to-server requests in flight and recently finished.
#[derive(Debug, Default)]
pub struct Tracker {
    open: HashMap<String, Request>,
    history: VecDeque<Request>,
}

impl Tracker {
    /// A new, empty tracker.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a request passed to the server at `now`.
    pub fn open(
        &mut self,
        id: RequestId,
        method: String,
        tool: Option<String>,
        now: u64,
    ) -> Result<(), TrackError> {
        if self.open.contains_key(&id.key) {
            return Err(TrackError::DuplicateId(id.key));
        }
        let key = id.key.clone();
        self.open.insert(
            key,
            Request {
                id,
                method,
                tool,
                opened_ns: now,
                closed_ns: None,
            },
        );
        Ok(())
    }

    /// Records the response to `id` read at `now`; returns the request, or
    /// `None` if no such request is in flight.
    pub fn close(&mut self, id: &RequestId, now: u64) -> Option<Request> {
        self.close_key(&id.key, now)
    }

    /// [`Tracker::close`] by the id's key.
    pub fn close_key(&mut self, key: &str, now: u64) -> Option<Request> {
        let mut request = self.open.remove(key)?;
        request.closed_ns = Some(now);
        self.history.push_back(request.clone());
        self.prune(now);
        Some(request)
    }

    /// Removes and returns every request in flight (oldest first), closed at
    /// `now`: used when the server is gone and mcpwarden answers them itself.
    pub fn fail_all(&mut self, now: u64) -> Vec<Request> {
        let mut failed: Vec<Request> = self.open.drain().map(|(_, r)| r).collect();
        failed.sort_by_key(|r| r.opened_ns);
        for r in &mut failed {
            r.closed_ns = Some(now);
            self.history.push_back(r.clone());
        }
        self.prune(now);
        failed
    }

    /// Whether a request with this id is in flight.
    #[must_use]
    pub fn is_open(&self, id: &RequestId) -> bool {
        self.open.contains_key(&id.key)
    }

    /// Requests in flight now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }

    /// The requests that were open at monotonic time `ts`, latest first.
    #[must_use]
    pub fn at(&self, ts: u64) -> Vec<&Request> {
        let mut found: Vec<&Request> = self
            .open
            .values()
            .chain(self.history.iter())
            .filter(|r| r.covers(ts))
            .collect();
        found.sort_by_key(|r| std::cmp::Reverse(r.opened_ns));
        found
    }

    fn prune(&mut self, now: u64) {
        while let Some(front) = self.history.front() {
            let old = front.closed_ns.is_some_and(|c| c + HISTORY_NS < now);
            if old || self.history.len() > HISTORY_MAX {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::proxy::message::{Message, parse};

    fn id(n: i64) -> RequestId {
        match parse(format!(r#"{{"jsonrpc":"2.0","id":{n},"result":{{}}}}"#).as_bytes()) {
            Ok(Message::Response { id, .. }) => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_are_attributed_to_the_requests_open_at_their_time() {
        let mut t = Tracker::new();
        t.open(id(1), "tools/call".into(), Some("a".into()), 100)
            .expect("open 1");
        t.open(id(2), "tools/call".into(), Some("b".into()), 200)
            .expect("open 2");
        assert_eq!(t.in_flight(), 2);
        assert!(t.at(50).is_empty(), "before any request");
        let at150: Vec<_> = t.at(150).iter().map(|r| r.id.value.clone()).collect();
        assert_eq!(at150, vec![json!(1)]);
        let at250: Vec<_> = t.at(250).iter().map(|r| r.id.value.clone()).collect();
        assert_eq!(at250, vec![json!(2), json!(1)], "latest first");
        let closed = t.close(&id(1), 300).expect("1 in flight");
        assert_eq!(closed.closed_ns, Some(300));
        // An event read late but stamped while 1 was open still finds it.
        assert_eq!(t.at(299).len(), 2);
        let at301: Vec<_> = t.at(301).iter().map(|r| r.id.value.clone()).collect();
        assert_eq!(at301, vec![json!(2)]);
    }

    #[test]
    fn duplicate_and_unknown_ids_are_reported() {
        let mut t = Tracker::new();
        t.open(id(1), "ping".into(), None, 1).expect("open");
        assert_eq!(
            t.open(id(1), "ping".into(), None, 2),
            Err(TrackError::DuplicateId("1".into()))
        );
        assert_eq!(t.close(&id(9), 3), None);
        assert!(t.close(&id(1), 3).is_some());
        assert_eq!(t.close(&id(1), 4), None, "answered twice");
        // Once answered, the id may be used again.
        t.open(id(1), "ping".into(), None, 5)
            .expect("reuse after close");
    }

    #[test]
    fn fail_all_empties_the_flight_oldest_first_and_keeps_history() {
        let mut t = Tracker::new();
        t.open(id(2), "b".into(), None, 20).expect("open");
        t.open(id(1), "a".into(), None, 10).expect("open");
        let failed: Vec<_> = t.fail_all(30).into_iter().map(|r| r.method).collect();
        assert_eq!(failed, vec!["a", "b"]);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.at(25).len(), 2);
    }

    #[test]
    fn history_is_bounded_in_time_and_count() {
        let mut t = Tracker::new();
        t.open(id(1), "a".into(), None, 0).expect("open");
        t.close(&id(1), 1).expect("close");
        t.open(id(2), "b".into(), None, 2 + HISTORY_NS)
            .expect("open");
        t.close(&id(2), 3 + HISTORY_NS).expect("close");
        assert!(t.at(1).is_empty(), "old history pruned");
        for n in 0..(HISTORY_MAX as i64 + 10) {
            t.open(id(n + 10), "c".into(), None, 4 + HISTORY_NS)
                .expect("open");
            t.close(&id(n + 10), 4 + HISTORY_NS).expect("close");
        }
        assert!(t.history.len() <= HISTORY_MAX + 1);
    }
}
