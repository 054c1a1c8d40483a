//! Classifying JSON-RPC 2.0 messages as MCP uses them.
//!
//! The proxy forwards the original bytes; this module only reads what it
//! needs to track requests (id, method, tool name) and builds the error
//! responses mcpwarden itself sends.
use serde_json::{Value, json};

/// JSON-RPC error codes used by mcpwarden.
pub mod code {
    /// Invalid JSON was received (JSON-RPC 2.0 §5.1).
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object (JSON-RPC 2.0 §5.1).
    pub const INVALID_REQUEST: i64 = -32600;
    /// mcpwarden stopped the call because of a policy rule.
    pub const BLOCKED: i64 = -32001;
    /// The tool server is gone (killed by policy or exited); the session
    /// cannot serve requests any more.
    pub const SERVER_GONE: i64 = -32002;
    /// mcpwarden could not get an answer from an upstream HTTP server.
    pub const UPSTREAM: i64 = -32003;
}

/// A request id: JSON-RPC allows strings and numbers. `key` is its JSON text,
/// so `1` and `"1"` stay different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// The id as it appeared.
    pub value: Value,
    /// Canonical JSON text of `value`, for map keys.
    pub key: String,
}

impl RequestId {
    fn new(value: Value) -> Self {
        let key = value.to_string();
        Self { value, key }
    }

    /// The same id inside `scope` (an MCP session of a transport that carries
    /// many): its key is prefixed, its value unchanged. Scopes are
    /// `Mcp-Session-Id` values, visible ASCII without spaces, so the prefix
    /// cannot be confused with an id.
    #[must_use]
    pub fn in_scope(&self, scope: &str) -> Self {
        if scope.is_empty() {
            return self.clone();
        }
        Self {
            value: self.value.clone(),
            key: format!("{scope} {}", self.key),
        }
    }
}

/// What one line of JSON-RPC is.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Has `method` and `id`: expects a response.
    Request {
        /// Its id.
        id: RequestId,
        /// Its method.
        method: String,
        /// `params.name` of a `tools/call`.
        tool: Option<String>,
    },
    /// Has `method`, no `id`.
    Notification {
        /// Its method.
        method: String,
    },
    /// Has `result` or `error` and an `id`.
    Response {
        /// The id it answers (null when the peer could not read the id).
        id: RequestId,
        /// Whether it carries `error`.
        is_error: bool,
    },
    /// A JSON array of messages (JSON-RPC batch).
    Batch(Vec<Message>),
}

/// Why a line is not a JSON-RPC message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not valid JSON (or not UTF-8).
    #[error("parse error: {0}")]
    Parse(String),
    /// Valid JSON that is not a JSON-RPC message.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

impl MessageError {
    /// The JSON-RPC error code for this error.
    #[must_use]
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) => code::PARSE_ERROR,
            Self::Invalid(_) => code::INVALID_REQUEST,
        }
    }
}

/// Classifies one line (without its newline).
pub fn parse(line: &[u8]) -> Result<Message, MessageError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| MessageError::Parse(e.to_string()))?;
    classify(value)
}

fn classify(value: Value) -> Result<Message, MessageError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(MessageError::Invalid("empty batch"));
            }
            items
                .into_iter()
                .map(classify)
                .collect::<Result<_, _>>()
                .map(Message::Batch)
        }
        Value::Object(mut obj) => {
            if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
                return Err(MessageError::Invalid("\"jsonrpc\" must be \"2.0\""));
            }
            let id = match obj.remove("id") {
                None => None,
                Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => {
                    Some(RequestId::new(v))
                }
                Some(_) => {
                    return Err(MessageError::Invalid("\"id\" must be a string or a number"));
                }
            };
            match (obj.remove("method"), id) {
                (Some(Value::String(method)), Some(id)) => {
                    if id.value.is_null() {
                        return Err(MessageError::Invalid("a request id must not be null"));
                    }
                    let tool = (method == "tools/call")
                        .then(|| obj.get("params")?.get("name")?.as_str().map(str::to_owned))
                        .flatten();
                    Ok(Message::Request { id, method, tool })
                }
                (Some(Value::String(method)), None) => Ok(Message::Notification { method }),
                (Some(_), _) => Err(MessageError::Invalid("\"method\" must be a string")),
                (None, Some(id)) => {
                    let is_error = obj.contains_key("error");
                    if !is_error && !obj.contains_key("result") {
                        return Err(MessageError::Invalid(
                            "a response needs \"result\" or \"error\"",
                        ));
                    }
                    Ok(Message::Response { id, is_error })
                }
                (None, None) => Err(MessageError::Invalid(
                    "neither a request, a notification nor a response",
                )),
            }
        }
        _ => Err(MessageError::Invalid(
            "a message must be an object or an array",
        )),
    }
}

/// A JSON-RPC error response line (no newline). `id` is null when unknown.
#[must_use]
pub fn error_response(
    id: Option<&RequestId>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> String {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({
        "jsonrpc": "2.0",
        "id": id.map_or(Value::Null, |id| id.value.clone()),
        "error": error,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: Value) -> RequestId {
        RequestId::new(v)
    }

    #[test]
    fn classifies_requests_notifications_and_responses() {
        let m = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{}}}"#);
        assert_eq!(
            m,
            Ok(Message::Request {
                id: id(json!(7)),
                method: "tools/call".into(),
                tool: Some("read_file".into())
            })
        );
        let m = parse(br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#);
        assert_eq!(
            m,
            Ok(Message::Request {
                id: id(json!("a")),
                method: "tools/list".into(),
                tool: None
            })
        );
        let m = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(
            m,
            Ok(Message::Notification {
                method: "notifications/initialized".into()
            })
        );
        let m = parse(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
        assert_eq!(
            m,
            Ok(Message::Response {
                id: id(json!(7)),
                is_error: false
            })
        );
        let m = parse(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#);
        assert_eq!(
            m,
            Ok(Message::Response {
                id: id(Value::Null),
                is_error: true
            })
        );
    }

    #[test]
    fn string_and_number_ids_differ() {
        assert_ne!(id(json!(1)).key, id(json!("1")).key);
    }

    #[test]
    fn batches_are_classified_item_by_item() {
        let m =
            parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"}]"#)
                .expect("batch");
        let Message::Batch(items) = m else {
            panic!("not a batch: {m:?}")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(parse(b"[]"), Err(MessageError::Invalid("empty batch")));
    }

    #[test]
    fn bad_input_is_an_error_with_the_right_code() {
        let cases: &[(&[u8], i64)] = &[
            (b"{not json", code::PARSE_ERROR),
            (b"\xff\xfe", code::PARSE_ERROR),
            (b"", code::PARSE_ERROR),
            (b"42", code::INVALID_REQUEST),
            (br#"{"id":1,"method":"x"}"#, code::INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                code::INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
                code::INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":5}"#,
                code::INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"2.0","id":1}"#, code::INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0"}"#, code::INVALID_REQUEST),
        ];
        for (line, want) in cases {
            let err = parse(line).expect_err(&String::from_utf8_lossy(line));
            assert_eq!(
                err.code(),
                *want,
                "{}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn error_responses_are_valid_json_rpc() {
        let line = error_response(
            Some(&id(json!("x"))),
            code::BLOCKED,
            "no",
            Some(json!({"rule": "r"})),
        );
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":"x","error":{"code":-32001,"message":"no","data":{"rule":"r"}}})
        );
        let v: Value = serde_json::from_str(&error_response(None, code::PARSE_ERROR, "bad", None))
            .expect("json");
        assert_eq!(v["id"], Value::Null);
        assert_eq!(
            parse(line.as_bytes()),
            Ok(Message::Response {
                id: id(json!("x")),
                is_error: true
            })
        );
    }
}
