//! The client side of Streamable HTTP: mcpwarden talking to an upstream MCP
//! server at a URL. Each message is a POST; the answer is a JSON body or an
//! SSE stream of messages ([`Answer`]); a GET opens the server's own stream.
use std::collections::VecDeque;

use bytes::Bytes;
use reqwest::{
    Method, StatusCode,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};

use super::sse::{Decoder, Item};

/// The MCP session header.
pub const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// The negotiated protocol version header.
pub const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// SSE resumption header.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// Request headers a relay passes from the client to the upstream (the
/// Origin and CORS ones too: the upstream may have its own rules).
pub static FORWARD_REQUEST: [HeaderName; 9] = [
    header::ACCEPT,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::ORIGIN,
    header::ACCESS_CONTROL_REQUEST_METHOD,
    header::ACCESS_CONTROL_REQUEST_HEADERS,
    SESSION_ID,
    PROTOCOL_VERSION,
    LAST_EVENT_ID,
];
/// Response headers a relay passes from the upstream to the client.
pub static FORWARD_RESPONSE: [HeaderName; 12] = [
    header::CONTENT_TYPE,
    header::WWW_AUTHENTICATE,
    header::RETRY_AFTER,
    header::ALLOW,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    header::VARY,
    SESSION_ID,
    PROTOCOL_VERSION,
];

/// Why the upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL is not one mcpwarden can use.
    #[error("upstream URL {url:?}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The request could not be sent or its answer not read.
    #[error("upstream {url}: {why}")]
    Transport {
        /// The upstream URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// One message of the answer exceeds the limit.
    #[error("upstream {url} sent a message of {len} bytes, over the limit of {max}")]
    TooLong {
        /// The upstream URL.
        url: String,
        /// Its size (at least).
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// An upstream MCP server reached over Streamable HTTP.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    url: reqwest::Url,
    max: usize,
}

impl Upstream {
    /// An upstream at `url` (`http://`; TLS upstreams are refused until
    /// mcpwarden carries a TLS stack), with messages up to `max` bytes.
    pub fn new(url: &str, max: usize) -> Result<Self, UpstreamError> {
        let bad = |why: &str| UpstreamError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(bad(
                    "https upstreams are not supported yet: reach it through a local TLS terminator, or run the server under mcpwarden",
                ));
            }
            other => return Err(bad(&format!("scheme {other:?} is not http"))),
        }
        if parsed.host().is_none() {
            return Err(bad("no host"));
        }
        let client = reqwest::Client::builder()
            // Never route tool traffic through whatever proxy the
            // environment names.
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            client,
            url: parsed,
            max,
        })
    }

    /// The URL.
    #[must_use]
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Sends one HTTP request to the MCP endpoint.
    pub async fn send(
        &self,
        method: Method,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self
            .client
            .request(method, self.url.clone())
            .headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        request.send().await.map_err(|e| self.transport(&e))
    }

    /// POSTs one message (or batch), with the headers of a client that
    /// accepts both JSON and SSE answers.
    pub async fn post(
        &self,
        body: Bytes,
        session: Option<&str>,
        protocol: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = mcp_headers(session, protocol);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.send(Method::POST, headers, Some(body)).await
    }

    /// Reads the messages of an answer.
    #[must_use]
    pub fn answer(&self, response: reqwest::Response) -> Answer {
        Answer::new(response, self.max, self.url.to_string())
    }

    fn transport(&self, e: &reqwest::Error) -> UpstreamError {
        // reqwest's Display leaves out the cause ("connection refused").
        let mut why = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        UpstreamError::Transport {
            url: self.url.to_string(),
            why,
        }
    }
}

/// `Mcp-Session-Id` and `MCP-Protocol-Version` headers, where known.
#[must_use]
pub fn mcp_headers(session: Option<&str>, protocol: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [(SESSION_ID, session), (PROTOCOL_VERSION, protocol)] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    headers
}

/// One message read from an upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Its SSE event id.
    pub id: Option<String>,
    /// The SSE `retry:` the server asked for (ms).
    pub retry: Option<u64>,
    /// The message's JSON text.
    pub data: Bytes,
}

impl Incoming {
    /// The JSON-RPC message it carries; `None` (logged) when it is not one.
    #[must_use]
    pub fn message(&self) -> Option<super::message::Message> {
        super::message::parse(&self.data)
            .map_err(|e| tracing::warn!("dropping an upstream message that is not JSON-RPC ({e})"))
            .ok()
    }
}

/// The messages of one upstream HTTP answer, as they arrive.
#[derive(Debug)]
pub struct Answer {
    response: reqwest::Response,
    /// Decoding an SSE stream (else a JSON body).
    sse: Option<Decoder>,
    body: Vec<u8>,
    queue: VecDeque<Incoming>,
    max: usize,
    url: String,
    done: bool,
}

impl Answer {
    fn new(response: reqwest::Response, max: usize, url: String) -> Self {
        let sse = is_sse(response.headers()).then(|| Decoder::new(max));
        Self {
            response,
            sse,
            body: Vec::new(),
            queue: VecDeque::new(),
            max,
            url,
            done: false,
        }
    }

    /// Its HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// Its headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// Whether it is an SSE stream.
    #[must_use]
    pub fn is_sse(&self) -> bool {
        self.sse.is_some()
    }

    /// The id of the last SSE event read, for resuming.
    #[must_use]
    pub fn last_event_id(&self) -> Option<&str> {
        self.sse.as_ref().and_then(Decoder::last_id)
    }

    /// The next message; `None` at the end. A JSON body is one message (or
    /// batch); an SSE event without data comes with empty `data` if it has
    /// an id or retry (a priming event), else is skipped; an oversized SSE
    /// event is dropped and logged; an oversized JSON body is an error.
    pub async fn next(&mut self) -> Result<Option<Incoming>, UpstreamError> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Some(m));
            }
            if self.done {
                return Ok(None);
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|e| UpstreamError::Transport {
                    url: self.url.clone(),
                    why: e.to_string(),
                })?;
            match (chunk, &mut self.sse) {
                (Some(bytes), Some(decoder)) => {
                    for item in decoder.feed(&bytes) {
                        match item {
                            // Data-less events matter only for their id
                            // (priming) or retry.
                            Item::Event(e)
                                if e.data.trim().is_empty()
                                    && e.id.is_none()
                                    && e.retry.is_none() => {}
                            Item::Event(e) => self.queue.push_back(Incoming {
                                id: e.id,
                                retry: e.retry,
                                data: if e.data.trim().is_empty() {
                                    Bytes::new()
                                } else {
                                    Bytes::from(e.data)
                                },
                            }),
                            Item::TooLong { len } => tracing::warn!(
                                "dropping an upstream SSE event of {len} bytes (limit {})",
                                self.max
                            ),
                        }
                    }
                }
                (Some(bytes), None) => {
                    if self.body.len() + bytes.len() > self.max {
                        return Err(UpstreamError::TooLong {
                            url: self.url.clone(),
                            len: self.body.len() + bytes.len(),
                            max: self.max,
                        });
                    }
                    self.body.extend_from_slice(&bytes);
                }
                (None, sse) => {
                    self.done = true;
                    let body = std::mem::take(&mut self.body);
                    if sse.is_none() && !body.iter().all(u8::is_ascii_whitespace) {
                        self.queue.push_back(Incoming {
                            id: None,
                            retry: None,
                            data: Bytes::from(body),
                        });
                    }
                }
            }
        }
    }
}

/// Whether headers announce an SSE body.
#[must_use]
pub fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}
