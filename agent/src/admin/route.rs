//! The API's routes for [`Op`]s, both ways: [`Op::route`] is what the
//! command line sends, [`parse`] what the daemon understands, and a test
//! holds them to each other.
//!
//! | route | op | scope |
//! |---|---|---|
//! | `GET /api/v1/health` | health | read |
//! | `GET /api/v1/identities` | list identities | read |
//! | `POST /api/v1/identities` | register (answers the token, once) | admin |
//! | `POST /api/v1/identities/verify` | check a token | read |
//! | `DELETE /api/v1/identities/{name}` | revoke | admin |
//! | `POST /api/v1/ca` | create the CA | admin |
//! | `POST /api/v1/ca/server` | renew the endpoint certificate | admin |
//! | `GET /api/v1/ca/crl?valid=7d` | a signed CRL | read |
//! | `GET /api/v1/certs` | issued certificates | read |
//! | `POST /api/v1/certs` | issue one (answers its key, once) | admin |
//! | `DELETE /api/v1/certs/{serial, fingerprint or name}` | revoke | admin |
//! | `GET /api/v1/trust[/{agent:NAME or server:NAME}]` | explain trust | read |
//! | `DELETE /api/v1/trust/{subject}` | forget a history | admin |
//! | `GET /api/v1/audit?last=N` | the last records | read |
//! | `GET /api/v1/audit/verify` | check the chain | read |
//! | `GET /api/v1/tools[?server=S]` | pinned tools | read |
//! | `POST /api/v1/tools/approve` | approve pending tools | admin |
//! | `DELETE /api/v1/tools?server=S` | forget a server's pins | admin |
//! | `POST /api/v1/policies/check` | validate a policy's text | read |
//!
//! A POST's body is the op itself as JSON (`{"op": "register", ...}`).
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::Value;

use super::{Op, OpError};

/// Where the API's routes start.
pub const PREFIX: &str = "/api/v1";

/// Characters a path segment or query value keeps as they are.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// An HTTP request for an op.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// Path and query, from [`PREFIX`] on.
    pub target: String,
    pub body: Option<Value>,
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, KEEP).to_string()
}

impl Op {
    /// The request that asks the daemon for this op.
    #[must_use]
    pub fn route(&self) -> Route {
        let get = |path: String| Route {
            method: "GET",
            target: format!("{PREFIX}{path}"),
            body: None,
        };
        let delete = |path: String| Route {
            method: "DELETE",
            target: format!("{PREFIX}{path}"),
            body: None,
        };
        let post = |path: &str| Route {
            method: "POST",
            target: format!("{PREFIX}{path}"),
            body: Some(serde_json::to_value(self).unwrap_or_default()),
        };
        match self {
            Self::Health => get("/health".into()),
            Self::Identities => get("/identities".into()),
            Self::Register { .. } => post("/identities"),
            Self::VerifyToken { .. } => post("/identities/verify"),
            Self::RevokeIdentity { name } => delete(format!("/identities/{}", enc(name))),
            Self::CaInit { .. } => post("/ca"),
            Self::CaServer { .. } => post("/ca/server"),
            Self::Crl { valid } => get(format!("/ca/crl?valid={}", enc(valid))),
            Self::Certs => get("/certs".into()),
            Self::IssueCert { .. } => post("/certs"),
            Self::RevokeCert { what } => delete(format!("/certs/{}", enc(what))),
            Self::Trust { subject: None } => get("/trust".into()),
            Self::Trust { subject: Some(s) } => get(format!("/trust/{}", enc(s))),
            Self::ResetTrust { subject } => delete(format!("/trust/{}", enc(subject))),
            Self::Audit { last } => get(format!("/audit?last={last}")),
            Self::VerifyAudit => get("/audit/verify".into()),
            Self::Sessions { last } => get(format!("/sessions?last={last}")),
            Self::Tools { server: None } => get("/tools".into()),
            Self::Tools { server: Some(s) } => get(format!("/tools?server={}", enc(s))),
            Self::ApproveTools { .. } => post("/tools/approve"),
            Self::ForgetTools { server } => delete(format!("/tools?server={}", enc(server))),
            Self::CheckPolicy { .. } => post("/policies/check"),
        }
    }

    /// The op's name, as its JSON `op` tag.
    fn tag(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v["op"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

fn dec(s: &str) -> Result<String, OpError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| OpError::new(400, "a path segment or query value is not UTF-8"))
}

fn query_value(query: Option<&str>, key: &str) -> Result<Option<String>, OpError> {
    for pair in query.unwrap_or_default().split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k == key
        {
            return dec(v).map(Some);
        }
    }
    Ok(None)
}

/// The count in `key` of the query, `default` when absent.
fn count(query: Option<&str>, key: &str, default: usize) -> Result<usize, OpError> {
    match query_value(query, key)? {
        None => Ok(default),
        Some(n) => n
            .parse()
            .map_err(|_| OpError::new(400, format!("{key}={n:?} is not a count"))),
    }
}

/// The op a request asks for. `body` is read only for POST.
pub fn parse(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Result<Op, OpError> {
    let not_found = || OpError::new(404, format!("no API route {method} {path}"));
    let rest = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let from_body = |expected: &str| -> Result<Op, OpError> {
        let op: Op = serde_json::from_slice(body)
            .map_err(|e| OpError::new(400, format!("the body is not a {expected} request: {e}")))?;
        if op.tag() == expected {
            Ok(op)
        } else {
            Err(OpError::new(
                400,
                format!("this route takes {expected:?}, not {:?}", op.tag()),
            ))
        }
    };
    match (method, segments.as_slice()) {
        ("GET", ["health"]) => Ok(Op::Health),
        ("GET", ["identities"]) => Ok(Op::Identities),
        ("POST", ["identities"]) => from_body("register"),
        ("POST", ["identities", "verify"]) => from_body("verify_token"),
        ("DELETE", ["identities", name]) => Ok(Op::RevokeIdentity { name: dec(name)? }),
        ("POST", ["ca"]) => from_body("ca_init"),
        ("POST", ["ca", "server"]) => from_body("ca_server"),
        ("GET", ["ca", "crl"]) => Ok(Op::Crl {
            valid: query_value(query, "valid")?.unwrap_or_else(|| "7d".into()),
        }),
        ("GET", ["certs"]) => Ok(Op::Certs),
        ("POST", ["certs"]) => from_body("issue_cert"),
        ("DELETE", ["certs", what]) => Ok(Op::RevokeCert { what: dec(what)? }),
        ("GET", ["trust"]) => Ok(Op::Trust { subject: None }),
        ("GET", ["trust", s]) => Ok(Op::Trust {
            subject: Some(dec(s)?),
        }),
        ("DELETE", ["trust", s]) => Ok(Op::ResetTrust { subject: dec(s)? }),
        ("GET", ["audit"]) => Ok(Op::Audit {
            last: count(query, "last", 20)?,
        }),
        ("GET", ["audit", "verify"]) => Ok(Op::VerifyAudit),
        ("GET", ["sessions"]) => Ok(Op::Sessions {
            last: count(query, "last", 50)?,
        }),
        ("GET", ["tools"]) => Ok(Op::Tools {
            server: query_value(query, "server")?,
        }),
        ("POST", ["tools", "approve"]) => from_body("approve_tools"),
        ("DELETE", ["tools"]) => Ok(Op::ForgetTools {
            server: query_value(query, "server")?
                .ok_or_else(|| OpError::new(400, "DELETE /tools needs ?server=NAME"))?,
        }),
        ("POST", ["policies", "check"]) => from_body("check_policy"),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Scope;

    fn every_op() -> Vec<Op> {
        vec![
            Op::Health,
            Op::Identities,
            Op::Register {
                name: "ci-bot".into(),
                roles: vec!["builder".into()],
                expires: "90d".into(),
                api: Some(Scope::Read),
            },
            Op::RevokeIdentity {
                name: "ci-bot".into(),
            },
            Op::VerifyToken {
                token: "mcpw_x".into(),
            },
            Op::CaInit {
                name: "a CA".into(),
                server_names: vec!["localhost".into()],
            },
            Op::CaServer {
                server_names: Vec::new(),
            },
            Op::IssueCert {
                name: "ci-bot".into(),
                expires: "30d".into(),
            },
            Op::Certs,
            Op::RevokeCert {
                what: "0f6a19".into(),
            },
            Op::Crl { valid: "7d".into() },
            Op::Trust { subject: None },
            Op::Trust {
                subject: Some("agent:ci-bot".into()),
            },
            Op::ResetTrust {
                subject: "server:node /srv/x y.js".into(),
            },
            Op::Audit { last: 7 },
            Op::Sessions { last: 3 },
            Op::VerifyAudit,
            Op::Tools { server: None },
            Op::Tools {
                server: Some("a b&c=d/é".into()),
            },
            Op::ApproveTools {
                server: "s".into(),
                tools: vec!["t".into()],
            },
            Op::ForgetTools {
                server: "x/y z".into(),
            },
            Op::CheckPolicy {
                text: "mode = \"enforce\"".into(),
            },
        ]
    }

    #[test]
    fn every_op_survives_its_route() {
        for op in every_op() {
            let r = op.route();
            let (path, query) = match r.target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (r.target.as_str(), None),
            };
            let body = r.body.map(|b| b.to_string()).unwrap_or_default();
            let back = parse(r.method, path, query, body.as_bytes()).expect("parses");
            assert_eq!(back, op, "{} {}", r.method, r.target);
        }
    }

    #[test]
    fn unknown_routes_and_mismatched_bodies_are_refused() {
        let e = parse("GET", "/api/v1/nope", None, b"").expect_err("unknown");
        assert_eq!(e.status, 404);
        let e = parse("GET", "/elsewhere", None, b"").expect_err("outside");
        assert_eq!(e.status, 404);
        // A body asking for another op than the route's.
        let body = serde_json::to_vec(&Op::RevokeIdentity { name: "x".into() }).expect("json");
        let e = parse("POST", "/api/v1/identities", None, &body).expect_err("mismatch");
        assert_eq!(e.status, 400);
        let e = parse("POST", "/api/v1/certs", None, b"{not json").expect_err("bad json");
        assert_eq!(e.status, 400);
        let e = parse("GET", "/api/v1/audit", Some("last=many"), b"").expect_err("count");
        assert_eq!(e.status, 400);
    }
}
