//! Where a session's messages go: to the client (stdout, or the streams of
//! an HTTP client) and to the server (its stdin, or an HTTP upstream).
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    core::{Reply, response_key},
    upstream_link::UpstreamLink,
};
use crate::proxy::{message::Message, streams::Router};

/// The client's side.
#[derive(Debug, Clone)]
pub(crate) enum ToClient {
    /// Lines for our stdout (the writer task adds the newline).
    Stdio(mpsc::Sender<Vec<u8>>),
    /// The streams of an HTTP client.
    Http(Arc<Router>),
}

impl ToClient {
    /// mcpwarden's answers to requests that will not get the server's.
    pub async fn replies(&self, replies: Vec<Reply>) {
        for reply in replies {
            match self {
                Self::Stdio(tx) => {
                    let _ = tx.send(reply.line.into_bytes()).await;
                }
                Self::Http(router) => {
                    if let Some(d) =
                        router.route(Bytes::from(reply.line), Some(&reply.key), None, None)
                    {
                        router.deliver(d).await;
                    }
                }
            }
        }
    }

    /// A server message the core let through. Returns false when the
    /// client is gone for good.
    pub async fn server_message(&self, line: Vec<u8>, msg: &Message, scope: &str) -> bool {
        match self {
            Self::Stdio(tx) => tx.send(line).await.is_ok(),
            Self::Http(router) => {
                let key = response_key(msg, scope);
                if let Some(d) = router.route(Bytes::from(line), key.as_deref(), None, None) {
                    router.deliver(d).await;
                }
                true
            }
        }
    }
}

/// The server's side.
#[derive(Debug, Clone)]
pub(crate) enum ToServer {
    /// Lines for the server's stdin (the writer task adds the newline).
    Stdio(mpsc::Sender<Vec<u8>>),
    /// An upstream reached over Streamable HTTP.
    Http(Arc<UpstreamLink>),
}

impl ToServer {
    /// Passes an admitted client message on. Returns false when the server
    /// side is closed.
    pub async fn send(&self, line: Vec<u8>, msg: &Message) -> bool {
        match self {
            Self::Stdio(tx) => tx.send(line).await.is_ok(),
            Self::Http(upstream) => {
                upstream.send(line, msg).await;
                true
            }
        }
    }
}
