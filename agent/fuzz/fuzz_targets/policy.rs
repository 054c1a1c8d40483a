//! Any text as a policy: the daemon parses policy text sent by any local
//! user, so a bad document must be an error, never a panic.
//!
//! The first byte chooses what the rest is:
//! - even: a whole policy document. It parses or is refused; the error
//!   renders (with its line and column). A policy that parses answers the
//!   questions a session asks of it: warnings, deny matches, its server's
//!   name, and a decision on a call (explained), the same one twice.
//! - odd: a tool rule's condition, then a newline, then the call's
//!   arguments as JSON. The condition compiles or is refused with an
//!   offset inside it; one that compiles evaluates the same way twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpwarden::policy::{
    Policy,
    expr::{Agent, Context, Expr, SessionStats, TrustScores},
    tools::Buckets,
};
use serde_json::Value;

fn agent() -> Agent {
    Agent {
        name: "fuzz".into(),
        uid: 1000,
        gid: 1000,
        exe: "/usr/bin/agent".into(),
        identity: String::new(),
        roles: vec!["dev".into()],
        attrs: [("team".to_owned(), "infra".to_owned())].into(),
    }
}

fn context<'a>(tool: &'a str, args: &'a Value, agent: &'a Agent) -> Context<'a> {
    Context {
        tool,
        args,
        agent,
        server: "fuzz",
        session: SessionStats {
            calls: 3,
            blocked: 1,
            alerts: 0,
            flagged: 0,
        },
        trust: TrustScores::default(),
        unix_time: 1_795_012_200,
    }
}

fn document(text: &str) {
    let policy = match Policy::parse(text, "fuzz.toml") {
        Ok(policy) => policy,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error with no words");
            return;
        }
    };
    let _ = policy.warnings();
    for path in ["/etc/shadow", "/", "relative", "/tmp/../etc/passwd", ""] {
        if let Some(i) = policy.deny_match(path) {
            assert!(i < policy.deny.len(), "deny index {i} out of range");
        }
    }
    let _ = policy.server_name("fallback");
    let agent = agent();
    let args = serde_json::json!({"path": "/etc/passwd", "url": "https://example.com/x", "n": 3});
    for tool in ["read_file", "run", ""] {
        let ctx = context(tool, &args, &agent);
        let first = policy.tools.decide(&ctx, &mut Buckets::default(), 1);
        let again = policy.tools.decide(&ctx, &mut Buckets::default(), 1);
        assert_eq!(first.action, again.action, "two decisions on one call");
        let _ = policy.tools.explain(&first);
        let _ = policy.tools.rule_key(&first);
    }
}

fn condition(text: &str) {
    let (source, args) = text.split_once('\n').unwrap_or((text, ""));
    let expr = match Expr::compile(source) {
        Ok(expr) => expr,
        Err(e) => {
            assert!(e.offset <= source.len(), "error offset past the condition");
            return;
        }
    };
    let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
    let agent = agent();
    let ctx = context("read_file", &args, &agent);
    assert_eq!(expr.eval(&ctx), expr.eval(&ctx), "two evaluations differ");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        document(text);
    } else {
        condition(text);
    }
});
