//! Where messages for an HTTP client go.
//!
//! On Streamable HTTP a client gets messages on several streams at once: the
//! answer to each POST (a JSON body or an SSE stream), and the GET stream for
//! what the server sends on its own. The [`Router`] knows which stream waits
//! for which request and where the rest goes, numbers the events it sends so
//! that a client whose connection broke can resume with `Last-Event-ID`, and
//! keeps a bounded log of them for that.
//!
//! Delivery is split in two so that no lock is held while a slow client
//! makes us wait: [`Router::route`] decides under the lock, and
//! [`Router::deliver`] awaits the stream's bounded channel outside it. That
//! await is the back-pressure: a client that does not read stops the reader
//! of the server, not the memory of mcpwarden.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Mutex, MutexGuard},
};

use bytes::Bytes;
use tokio::sync::mpsc;

/// A stream's number.
pub type StreamId = u64;

/// One JSON-RPC message for a client, with its SSE event id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Event id: ours when the router numbers events, the upstream's when it
    /// relays them.
    pub id: Option<String>,
    /// SSE `retry:` to pass on (relayed priming events).
    pub retry: Option<u64>,
    /// The message's JSON text.
    pub data: Bytes,
}

/// Frames a stream may have in its channel before the sender waits.
pub const STREAM_QUEUE: usize = 64;
/// Events kept for resumption, at most...
pub const LOG_EVENTS: usize = 1024;
/// ...and at most this many bytes of them.
pub const LOG_BYTES: usize = 8 << 20;
/// Messages kept for a GET stream nobody has opened yet.
pub const GET_BACKLOG: usize = 64;

/// A second GET stream was asked for while one is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a GET stream is already open for this session")]
pub struct Conflict;

#[derive(Debug)]
struct Stream {
    tx: Option<mpsc::Sender<Frame>>,
    /// Requests whose answers this stream carries and has not carried yet.
    pending: HashSet<String>,
    /// Opened by GET (lives until the client closes it).
    get: bool,
}

#[derive(Debug)]
struct Logged {
    event: u64,
    stream: StreamId,
    frame: Frame,
}

#[derive(Debug, Default)]
struct Inner {
    next_stream: StreamId,
    next_event: u64,
    streams: HashMap<StreamId, Stream>,
    /// Request key -> the stream that carries its answer.
    requests: HashMap<String, StreamId>,
    /// POST streams in the order they were opened (latest last).
    order: Vec<StreamId>,
    get: Option<StreamId>,
    log: VecDeque<Logged>,
    log_bytes: usize,
    /// Server messages for a GET stream not opened yet.
    backlog: VecDeque<Frame>,
    /// How many of those were dropped because the queue was full.
    backlog_dropped: u64,
}

/// A message on its way to one stream: send it with [`Router::deliver`].
#[derive(Debug)]
pub struct Delivery {
    stream: StreamId,
    tx: Option<mpsc::Sender<Frame>>,
    frame: Frame,
}

/// The streams of one HTTP client session (or of all sessions relayed to an
/// HTTP upstream: request keys are scoped, so they never collide).
#[derive(Debug)]
pub struct Router {
    inner: Mutex<Inner>,
    /// Number and log events (mcpwarden is the HTTP server of record), or
    /// pass the upstream's ids through (it is).
    numbered: bool,
}

impl Router {
    /// A router that numbers its events (`numbered`) or relays ids.
    #[must_use]
    pub fn new(numbered: bool) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            numbered,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a stream that carries the answers to `keys`: a POST stream
    /// closes once each has been sent; a relayed GET stream (`get`) lives
    /// until [`Router::close`].
    pub fn open(&self, keys: &[String], tx: mpsc::Sender<Frame>, get: bool) -> StreamId {
        let mut inner = self.lock();
        let id = inner.next_stream;
        inner.next_stream += 1;
        for key in keys {
            inner.requests.insert(key.clone(), id);
        }
        inner.streams.insert(
            id,
            Stream {
                tx: Some(tx),
                pending: keys.iter().cloned().collect(),
                get,
            },
        );
        if !get {
            inner.order.push(id);
        }
        id
    }

    /// The first event of a numbered stream: an id and no data, so a client
    /// whose connection breaks before the answer can resume from it (the
    /// spec's priming event). `None` when relaying.
    pub fn prime(&self, stream: StreamId) -> Option<Frame> {
        if !self.numbered {
            return None;
        }
        let mut inner = self.lock();
        let frame = inner.log_frame(stream, Bytes::new());
        Some(frame)
    }

    /// Opens the GET stream. With `last_event` (a `Last-Event-ID`), resumes
    /// the stream that event was sent on instead: returns the events sent
    /// on it after that one, and attaches `tx` to it for what follows (no
    /// stream when it has ended: send the replay and close).
    pub fn attach_get(
        &self,
        tx: mpsc::Sender<Frame>,
        last_event: Option<&str>,
    ) -> Result<(Option<StreamId>, Vec<Frame>), Conflict> {
        let mut inner = self.lock();
        if let Some(last) = last_event.and_then(|s| s.parse::<u64>().ok())
            && let Some(stream) = inner.log.iter().find(|l| l.event == last).map(|l| l.stream)
        {
            let replay = inner
                .log
                .iter()
                .filter(|l| l.stream == stream && l.event > last)
                .map(|l| l.frame.clone())
                .collect();
            let Some(s) = inner.streams.get_mut(&stream) else {
                return Ok((None, replay));
            };
            // The client says the old connection broke, even if we have not
            // noticed yet: the new one takes the stream over (the old one's
            // channel is dropped, which ends its body).
            s.tx = Some(tx);
            return Ok((Some(stream), replay));
        }
        if let Some(last) = last_event {
            tracing::warn!(
                last,
                "cannot resume from an event that is not in the log (too old or unknown); opening a fresh stream"
            );
        }
        if let Some(get) = inner.get
            && let Some(s) = inner.streams.get_mut(&get)
        {
            if s.tx.as_ref().is_some_and(|t| !t.is_closed()) {
                return Err(Conflict);
            }
            s.tx = Some(tx);
            return Ok((Some(get), inner.backlog.drain(..).collect()));
        }
        let id = inner.next_stream;
        inner.next_stream += 1;
        inner.streams.insert(
            id,
            Stream {
                tx: Some(tx),
                pending: HashSet::new(),
                get: true,
            },
        );
        inner.get = Some(id);
        let backlog = inner.backlog.drain(..).collect();
        Ok((Some(id), backlog))
    }

    /// Decides where a message goes. `key` is the scoped key of the request
    /// a response answers; `via` the stream it arrived for (relaying);
    /// `id` the upstream's event id. Returns `None` when nobody waits.
    pub fn route(
        &self,
        data: Bytes,
        key: Option<&str>,
        id: Option<String>,
        via: Option<StreamId>,
    ) -> Option<Delivery> {
        let mut inner = self.lock();
        let by_key = key.and_then(|k| inner.requests.remove(k).map(|s| (k, s)));
        let stream = match (by_key, via) {
            (Some((key, stream)), _) => {
                if let Some(s) = inner.streams.get_mut(&stream) {
                    s.pending.remove(key);
                }
                Some(stream)
            }
            (None, Some(via)) => inner.streams.contains_key(&via).then_some(via),
            // A response nobody waits for.
            (None, None) if key.is_some() => None,
            // A request or notification of the server's own: the latest
            // POST stream still open takes it (stdio servers send them while
            // a call runs, about that call), else the GET stream.
            (None, None) => inner
                .order
                .iter()
                .rev()
                .find(|s| {
                    inner
                        .streams
                        .get(s)
                        .is_some_and(|s| !s.pending.is_empty() && s.tx.is_some())
                })
                .copied()
                .or(inner.get),
        };
        let Some(stream) = stream else {
            if key.is_none() && via.is_none() {
                if inner.backlog.len() >= GET_BACKLOG {
                    inner.backlog.pop_front();
                    inner.backlog_dropped += 1;
                    // Logged at 1, 2, 4, 8...: a flood must not flood the log.
                    if inner.backlog_dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped = inner.backlog_dropped,
                            "no GET stream open: dropped the oldest queued server messages (the queue holds {GET_BACKLOG})"
                        );
                    }
                }
                inner.backlog.push_back(Frame {
                    id,
                    retry: None,
                    data,
                });
                return None;
            }
            tracing::warn!("dropping a message for a stream that is gone");
            return None;
        };
        let frame = if self.numbered {
            inner.log_frame(stream, data)
        } else {
            Frame {
                id,
                retry: None,
                data,
            }
        };
        let s = inner.streams.get_mut(&stream)?;
        let tx = s.tx.clone();
        // The last answer a POST stream waited for: the stream ends after it.
        if !s.get && s.pending.is_empty() && key.is_some() {
            inner.finish(stream);
        }
        Some(Delivery { stream, tx, frame })
    }

    /// A relayed event that carries no message (the upstream's priming
    /// event): goes to `stream` as it is.
    pub fn route_frame(
        &self,
        data: Bytes,
        id: Option<String>,
        retry: Option<u64>,
        stream: StreamId,
    ) -> Option<Delivery> {
        let inner = self.lock();
        let tx = inner.streams.get(&stream)?.tx.clone();
        Some(Delivery {
            stream,
            tx,
            frame: Frame { id, retry, data },
        })
    }

    /// Sends a routed message. A client that went away loses its channel;
    /// numbered events stay in the log for it to resume.
    pub async fn deliver(&self, delivery: Delivery) {
        let Delivery { stream, tx, frame } = delivery;
        let Some(tx) = tx else { return };
        if tx.send(frame).await.is_err() {
            tracing::debug!(stream, "the client closed the stream");
            if let Some(s) = self.lock().streams.get_mut(&stream)
                && s.tx.as_ref().is_some_and(|t| t.same_channel(&tx))
            {
                s.tx = None;
            }
        }
    }

    /// The client or the upstream ended a stream. Returns the requests it
    /// still waited for.
    pub fn close(&self, stream: StreamId) -> Vec<String> {
        let mut inner = self.lock();
        let pending = inner
            .streams
            .get(&stream)
            .map(|s| s.pending.iter().cloned().collect())
            .unwrap_or_default();
        inner.finish(stream);
        pending
    }

    /// Detaches the client's channel from a stream that stays alive (its
    /// connection broke; it may resume).
    pub fn detach(&self, stream: StreamId) {
        if let Some(s) = self.lock().streams.get_mut(&stream) {
            s.tx = None;
        }
    }

    /// Resolves once the client of `stream` has gone (its channel closed),
    /// or at once when the stream has ended or has no client.
    pub async fn client_gone(&self, stream: StreamId) {
        let tx = self.lock().streams.get(&stream).and_then(|s| s.tx.clone());
        if let Some(tx) = tx {
            tx.closed().await;
        }
    }

    /// Whether `stream` is still open.
    #[must_use]
    pub fn is_open(&self, stream: StreamId) -> bool {
        self.lock().streams.contains_key(&stream)
    }

    /// Streams open now (for tests and metrics).
    #[must_use]
    pub fn open_streams(&self) -> usize {
        self.lock().streams.len()
    }
}

impl Inner {
    /// Numbers a frame for `stream` and keeps it for resumption.
    fn log_frame(&mut self, stream: StreamId, data: Bytes) -> Frame {
        self.next_event += 1;
        let event = self.next_event;
        let frame = Frame {
            id: Some(event.to_string()),
            retry: None,
            data,
        };
        self.log_bytes += frame.data.len();
        self.log.push_back(Logged {
            event,
            stream,
            frame: frame.clone(),
        });
        while self.log.len() > LOG_EVENTS || self.log_bytes > LOG_BYTES {
            if let Some(old) = self.log.pop_front() {
                self.log_bytes -= old.frame.data.len();
            }
        }
        frame
    }

    fn finish(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.remove(&stream) {
            for key in s.pending {
                self.requests.remove(&key);
            }
        }
        self.order.retain(|&s| s != stream);
        if self.get == Some(stream) {
            self.get = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    async fn send(router: &Router, d: &str, key: Option<&str>) {
        if let Some(delivery) = router.route(data(d), key, None, None) {
            router.deliver(delivery).await;
        }
    }

    #[tokio::test]
    async fn answers_go_to_their_stream_which_ends_after_the_last() {
        let router = Router::new(true);
        let (tx, mut rx) = mpsc::channel(8);
        let stream = router.open(&["1".into(), "2".into()], tx, false);
        let prime = router.prime(stream).expect("numbered");
        assert!(prime.data.is_empty());
        // A notification while the call runs goes to the call's stream.
        send(&router, "progress", None).await;
        send(&router, "answer 2", Some("2")).await;
        send(&router, "answer 1", Some("1")).await;
        let mut got = Vec::new();
        while let Some(f) = rx.recv().await {
            got.push(f);
        }
        let texts: Vec<&[u8]> = got.iter().map(|f| &f.data[..]).collect();
        assert_eq!(texts, [&b"progress"[..], b"answer 2", b"answer 1"]);
        let ids: Vec<u64> = got
            .iter()
            .map(|f| f.id.as_deref().unwrap().parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(router.open_streams(), 0);
        // An answer nobody waits for is dropped.
        assert!(router.route(data("late"), Some("1"), None, None).is_none());
    }

    #[tokio::test]
    async fn a_broken_stream_resumes_from_its_last_event() {
        let router = Router::new(true);
        let (tx, rx) = mpsc::channel(8);
        let stream = router.open(&["7".into()], tx, false);
        let prime = router.prime(stream).expect("numbered");
        drop(rx); // the client's connection broke
        send(&router, "log line", None).await;
        send(&router, "answer 7", Some("7")).await;
        let (tx2, _rx2) = mpsc::channel(8);
        let (resumed, replay) = router
            .attach_get(tx2, prime.id.as_deref())
            .expect("no conflict");
        assert_eq!(resumed, None, "the stream had ended: replay, then close");
        let texts: Vec<&[u8]> = replay.iter().map(|f| &f.data[..]).collect();
        assert_eq!(texts, [&b"log line"[..], b"answer 7"]);
    }

    #[tokio::test]
    async fn one_get_stream_at_a_time_and_a_backlog_before_it() {
        let router = Router::new(true);
        send(&router, "early", None).await;
        let (tx, _rx) = mpsc::channel(8);
        let (_, backlog) = router.attach_get(tx, None).expect("first GET");
        assert_eq!(backlog.len(), 1);
        let (tx2, _rx2) = mpsc::channel(8);
        assert_eq!(router.attach_get(tx2, None), Err(Conflict));
    }

    #[tokio::test]
    async fn relayed_streams_keep_the_upstream_ids_and_route_by_arrival() {
        let router = Router::new(false);
        let (tx, mut rx) = mpsc::channel(8);
        let stream = router.open(&["s 1".into()], tx, false);
        assert!(router.prime(stream).is_none());
        let d = router
            .route(data("request"), None, Some("up-3".into()), Some(stream))
            .expect("routed");
        router.deliver(d).await;
        let d = router
            .route(
                data("answer"),
                Some("s 1"),
                Some("up-4".into()),
                Some(stream),
            )
            .expect("routed");
        router.deliver(d).await;
        assert_eq!(rx.recv().await.unwrap().id.as_deref(), Some("up-3"));
        assert_eq!(rx.recv().await.unwrap().id.as_deref(), Some("up-4"));
        assert!(rx.recv().await.is_none(), "closed after its answer");
    }
}
