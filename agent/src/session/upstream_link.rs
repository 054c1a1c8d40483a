//! A stdio client's session with an upstream Streamable HTTP server:
//! mcpwarden is the HTTP client. Each message is POSTed; answers (JSON or
//! SSE) are judged by the core like a stdio server's lines; the
//! `Mcp-Session-Id` and protocol version learnt at `initialize` go on every
//! later request; after `notifications/initialized` a GET stream carries
//! what the server sends on its own, and is resumed when it breaks.
use std::{
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use bytes::Bytes;
use reqwest::{Method, StatusCode, header};

use super::{
    core::{Shared, lock, request_ids},
    route::ToClient,
};
use crate::{
    monotonic_ns,
    proxy::{
        message::{Message, RequestId, code},
        upstream::{Answer, LAST_EVENT_ID, SESSION_ID, Upstream, UpstreamError, mcp_headers},
    },
};

/// Times the GET stream is reopened in a row before mcpwarden gives up on it.
const GET_RETRIES: u32 = 5;

/// The link.
#[derive(Debug)]
pub(crate) struct UpstreamLink {
    upstream: Upstream,
    core: Shared,
    to_client: ToClient,
    session: Mutex<Option<String>>,
    protocol: Mutex<Option<String>>,
    get_started: AtomicBool,
    /// The exchanges in flight, awaited (briefly) by [`UpstreamLink::close`].
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// The GET stream's task, which never ends on its own.
    get_task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl UpstreamLink {
    pub fn new(upstream: Upstream, core: Shared, to_client: ToClient) -> Self {
        Self {
            upstream,
            core,
            to_client,
            session: Mutex::new(None),
            protocol: Mutex::new(None),
            get_started: AtomicBool::new(false),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            get_task: Mutex::new(None),
        }
    }

    fn ids(&self) -> (Option<String>, Option<String>) {
        let get = |m: &Mutex<Option<String>>| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        (get(&self.session), get(&self.protocol))
    }

    /// Sends an admitted client message. `initialize` is awaited to its
    /// answer, so every later message carries the session id; notifications
    /// and responses are awaited to their `202` (at once), so they reach
    /// the server in order with what follows (`initialized` before the
    /// first request); requests go out on their own tasks, so a long call
    /// does not hold up the next.
    pub async fn send(self: &Arc<Self>, line: Vec<u8>, msg: &Message) {
        let ids = request_ids(msg, "");
        let initialize = matches!(msg, Message::Request { method, .. } if method == "initialize");
        let initialized = matches!(msg, Message::Notification { method } if method == "notifications/initialized");
        if initialize {
            self.exchange(line, ids).await;
            return;
        }
        if ids.is_empty() {
            let accepted = self.exchange(line, ids).await;
            if initialized
                && accepted
                && !self
                    .get_started
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let get = tokio::spawn(Arc::clone(self).get_stream());
                *self
                    .get_task
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(get.abort_handle());
            }
            return;
        }
        let this = Arc::clone(self);
        self.spawn(async move {
            this.exchange(line, ids).await;
        });
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Reap finished ones so the set stays small.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// One POST and its answer. Returns whether the upstream accepted it.
    async fn exchange(&self, line: Vec<u8>, ids: Vec<RequestId>) -> bool {
        let (session, protocol) = self.ids();
        let response = match self
            .upstream
            .post(Bytes::from(line), session.as_deref(), protocol.as_deref())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}");
                self.fail(
                    &ids,
                    &format!("mcpwarden could not reach the upstream server: {e}"),
                )
                .await;
                return false;
            }
        };
        let status = response.status();
        if let Some(id) = response
            .headers()
            .get(SESSION_ID)
            .and_then(|v| v.to_str().ok())
        {
            *self
                .session
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_owned());
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            let why = if status == StatusCode::NOT_FOUND && session.is_some() {
                "the upstream no longer knows this MCP session (it expired or restarted); start a new session".to_owned()
            } else {
                format!("the upstream server answered HTTP {status}: {body}")
            };
            tracing::warn!("{why}");
            self.fail(&ids, &format!("mcpwarden: {why}")).await;
            return false;
        }
        let mut answer = self.upstream.answer(response);
        let mut waiting = ids.clone();
        if let Err(e) = self.pump(&mut answer, &mut waiting).await {
            tracing::warn!("{e}");
        }
        // An SSE stream closed before its answers: the spec's way to resume
        // is a GET with the last event id.
        if !waiting.is_empty()
            && answer.is_sse()
            && let Some(last) = answer.last_event_id().map(str::to_owned)
            && let Err(e) = self.resume(&last, &mut waiting).await
        {
            tracing::warn!("{e}");
        }
        if !waiting.is_empty() {
            self.fail(
                &waiting,
                "mcpwarden: the upstream server closed the stream without answering",
            )
            .await;
        }
        true
    }

    async fn resume(&self, last: &str, waiting: &mut Vec<RequestId>) -> Result<(), UpstreamError> {
        let (session, protocol) = self.ids();
        let mut headers = mcp_headers(session.as_deref(), protocol.as_deref());
        headers.insert(
            header::ACCEPT,
            header::HeaderValue::from_static("text/event-stream"),
        );
        if let Ok(v) = header::HeaderValue::from_str(last) {
            headers.insert(LAST_EVENT_ID, v);
        }
        let response = self.upstream.send(Method::GET, headers, None).await?;
        if !response.status().is_success() {
            return Ok(());
        }
        let mut answer = self.upstream.answer(response);
        self.pump(&mut answer, waiting).await
    }

    /// Reads an answer's messages into the core; removes from `waiting`
    /// each request answered. Stops early once nothing is waiting on a POST
    /// answer (the server may keep its SSE stream open).
    async fn pump(
        &self,
        answer: &mut Answer,
        waiting: &mut Vec<RequestId>,
    ) -> Result<(), UpstreamError> {
        let was_waiting = !waiting.is_empty();
        while let Some(incoming) = answer.next().await? {
            if incoming.data.is_empty() {
                // A priming event: its id is kept by the answer for resuming.
                continue;
            }
            let Some(msg) = incoming.message() else {
                continue;
            };
            answered(&msg, waiting);
            self.learn_protocol(&msg, &incoming.data);
            let (forward, replies) =
                lock(&self.core).on_server_message(&msg, &incoming.data, "", monotonic_ns());
            self.to_client.replies(replies).await;
            if forward {
                self.to_client
                    .server_message(incoming.data.to_vec(), &msg, "")
                    .await;
            }
            if was_waiting && waiting.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// The protocol version the server chose, from its `initialize` result.
    fn learn_protocol(&self, msg: &Message, data: &[u8]) {
        if !matches!(
            msg,
            Message::Response {
                is_error: false,
                ..
            }
        ) {
            return;
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        let version = value
            .pointer("/result/protocolVersion")
            .and_then(serde_json::Value::as_str);
        let has_server_info = value.pointer("/result/serverInfo").is_some();
        if let (Some(v), true) = (version, has_server_info) {
            *self
                .protocol
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v.to_owned());
        }
    }

    async fn fail(&self, ids: &[RequestId], why: &str) {
        let replies = lock(&self.core).fail(ids, code::UPSTREAM, why);
        self.to_client.replies(replies).await;
    }

    /// The server's own stream, reopened (with `Last-Event-ID`) when it
    /// breaks; a server without one answers 405 and is left alone.
    async fn get_stream(self: Arc<Self>) {
        let mut last: Option<String> = None;
        let mut failures = 0;
        while failures < GET_RETRIES {
            let (session, protocol) = self.ids();
            let mut headers = mcp_headers(session.as_deref(), protocol.as_deref());
            headers.insert(
                header::ACCEPT,
                header::HeaderValue::from_static("text/event-stream"),
            );
            if let Some(v) = last
                .as_deref()
                .and_then(|l| header::HeaderValue::from_str(l).ok())
            {
                headers.insert(LAST_EVENT_ID, v);
            }
            match self.upstream.send(Method::GET, headers, None).await {
                Ok(r) if r.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                Ok(r) if r.status().is_success() => {
                    failures = 0;
                    let mut answer = self.upstream.answer(r);
                    if let Err(e) = self.pump(&mut answer, &mut Vec::new()).await {
                        tracing::debug!("upstream GET stream: {e}");
                    }
                    last = answer.last_event_id().map(str::to_owned).or(last);
                }
                Ok(r) => {
                    tracing::warn!("the upstream refused its GET stream: HTTP {}", r.status());
                    return;
                }
                Err(e) => {
                    failures += 1;
                    tracing::debug!("upstream GET stream: {e}");
                }
            }
            tokio::time::sleep(Duration::from_millis(250 << failures.min(4))).await;
        }
        tracing::warn!("giving up on the upstream's GET stream after {GET_RETRIES} failures");
    }

    /// The client is done: lets the exchanges in flight deliver their
    /// answers (3 s at most), stops the GET stream, and ends the upstream
    /// session (DELETE), best effort.
    pub async fn close(&self) {
        if let Some(get) = self
            .get_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            get.abort();
        }
        let mut tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let drained = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(3), drained)
            .await
            .is_err()
        {
            tracing::warn!("upstream answers still in flight 3 s after the client closed: dropped");
            tasks.abort_all();
        }
        let (Some(session), protocol) = self.ids() else {
            return;
        };
        let headers = mcp_headers(Some(&session), protocol.as_deref());
        let delete = self.upstream.send(Method::DELETE, headers, None);
        match tokio::time::timeout(Duration::from_secs(2), delete).await {
            Ok(Ok(r))
                if r.status().is_success() || r.status() == StatusCode::METHOD_NOT_ALLOWED => {}
            Ok(Ok(r)) => tracing::debug!("upstream DELETE answered HTTP {}", r.status()),
            Ok(Err(e)) => tracing::debug!("upstream DELETE: {e}"),
            Err(_) => tracing::debug!("upstream DELETE timed out"),
        }
    }
}

/// Removes from `waiting` the requests `msg` answers.
fn answered(msg: &Message, waiting: &mut Vec<RequestId>) {
    match msg {
        Message::Response { id, .. } => waiting.retain(|w| w.key != id.key),
        Message::Batch(items) => {
            for item in items {
                answered(item, waiting);
            }
        }
        _ => {}
    }
}
