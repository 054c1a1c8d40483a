use serde_json::json;

use super::*;

fn ctx<'a>(tool: &'a str, args: &'a Value, agent: &'a Agent) -> Context<'a> {
    Context {
        tool,
        args,
        agent,
        server: "files",
        session: SessionStats {
            calls: 4,
            blocked: 1,
            alerts: 0,
            flagged: 0,
        },
        trust: TrustScores::default(),
        // Wednesday 2026-11-18 14:30 UTC.
        unix_time: 1_795_012_200,
    }
}

fn agent() -> Agent {
    Agent {
        name: "claude".into(),
        uid: 1000,
        gid: 1000,
        exe: "/usr/bin/claude".into(),
        identity: "claude-prod".into(),
        roles: vec!["dev".into(), "reader".into()],
        attrs: [("team".to_owned(), "infra".to_owned())].into(),
    }
}

fn run(src: &str, tool: &str, args: &Value) -> Result<bool, Undetermined> {
    let a = agent();
    Expr::compile(src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .eval(&ctx(tool, args, &a))
}

#[test]
fn evaluates_the_documented_examples() {
    let args = json!({"path": "/srv/data/a.txt", "url": "https://API.Example.org/x", "body": "hi", "opts": {"depth": 2}, "list": ["a", 3]});
    let cases = [
        (
            r#"tool == "write_file" && !path_under(args.path, "/srv/data")"#,
            false,
        ),
        (
            r#"tool == "read_file" && path_under(args.path, "/srv/data")"#,
            true,
        ),
        (r#""admin" in agent.roles || agent.uid == 0"#, false),
        (r#""dev" in agent.roles && agent.name == 'claude'"#, true),
        (r#"agent.identity == "claude-prod""#, true),
        (
            r#"host_in(args.url, ["example.com", "*.example.org"]) && size(args.body) < 65536"#,
            true,
        ),
        (
            "session.blocked < 3 && time.hour >= 8 && time.hour < 20",
            true,
        ),
        ("time.weekday == 3", true),
        ("args.opts.depth >= 2 && args.opts.depth < 2.5", true),
        (
            r#"args["opts"]["depth"] == 2 && args.list.1 == 3 && "a" in args.list"#,
            true,
        ),
        (
            r#"agent.attrs.team == "infra" && has(args.path) && !has(args.nope)"#,
            true,
        ),
        (
            r#"args.path.starts_with("/srv/") && args.path.ends_with(".txt") && args.path.contains("data")"#,
            true,
        ),
        (r#"matches(tool, "read_*") && tool.matches("*_file")"#, true),
        (
            r#"imatches("SELECT PG_READ_FILE(1)", "*pg_read*") && !matches("PG_READ", "*pg_read*")"#,
            true,
        ),
        (r#"url_host(args.url) == "API.Example.org""#, true),
        ("trust.server >= 0.5 && trust.agent < 1", true),
        ("session.calls == 4 && -1 < 0", true),
        (r#"server in ["files", "git"]"#, true),
    ];
    for (src, want) in cases {
        assert_eq!(run(src, "read_file", &args), Ok(want), "{src}");
    }
}

#[test]
fn undecidable_conditions_say_so() {
    let args = json!({"path": "relative/x", "n": "3", "url": "not a url"});
    for src in [
        "args.missing == 1",
        r#"path_under(args.path, "/srv")"#,
        "args.n > 2",
        r#"host_in(args.url, ["x"])"#,
        "agent.attrs.nope == \"x\"",
        "size(args.n) > 0 && args.n.starts_with(args.missing)",
    ] {
        assert_eq!(run(src, "t", &args), Err(Undetermined), "{src}");
    }
    // A side that decides wins over an undetermined one.
    assert_eq!(run("args.missing == 1 && false", "t", &args), Ok(false));
    assert_eq!(run("args.missing == 1 || true", "t", &args), Ok(true));
}

#[test]
fn compile_errors_point_at_the_column() {
    let cases = [
        ("", 0, "empty condition"),
        ("tool ==", 7, "expected a value"),
        ("tool == 1", 8, "cannot compare a string with an integer"),
        ("agent.uidd == 1", 6, "unknown field `uidd`"),
        ("nope == 1", 0, "unknown name `nope`"),
        ("tool", 0, "expected a boolean, found a string"),
        ("starts_with(tool)", 0, "takes 2 argument(s), 1 given"),
        ("frob(tool, 1)", 0, "unknown function `frob`"),
        ("agent == \"x\"", 0, "expected a value, found a namespace"),
        ("\"x\" in tool", 7, "expected a list, found a string"),
        ("tool == \"a", 8, "unterminated string"),
        ("tool == \"a\" &", 12, "unexpected character"),
        ("[tool] == 1", 1, "list items must be literals"),
        ("(tool == \"x\"", 12, "expected `)`"),
        ("has(\"x\")", 4, "expected a name"),
    ];
    for (src, offset, msg) in cases {
        let err = Expr::compile(src).expect_err(src);
        assert!(err.message.contains(msg), "{src}: {err}");
        assert_eq!(err.offset, offset, "{src}: {err}");
    }
    let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
    assert!(
        Expr::compile(&deep)
            .unwrap_err()
            .message
            .contains("nested deeper")
    );
    let nots = format!("{}true", "!".repeat(200));
    assert!(
        Expr::compile(&nots)
            .unwrap_err()
            .message
            .contains("nested deeper")
    );
}

#[test]
fn paths_resolve_dots_before_matching() {
    assert_eq!(path_under("/srv/data/a", "/srv/data"), Some(true));
    assert_eq!(path_under("/srv/data", "/srv/data/"), Some(true));
    assert_eq!(
        path_under("/srv/data/../../etc/passwd", "/srv/data"),
        Some(false)
    );
    assert_eq!(path_under("/srv/datax/a", "/srv/data"), Some(false));
    assert_eq!(path_under("//srv/./data//a", "/srv/data"), Some(true));
    assert_eq!(path_under("/../srv/data", "/srv"), Some(true));
    assert_eq!(path_under("srv/data", "/srv"), None);
    assert_eq!(path_under(&"/a".repeat(65), "/a"), None);
    assert_eq!(path_under("/anything", "/"), Some(true));
    let args = json!({"paths": ["/srv/a", "/srv/b/../c"], "bad": ["/srv/a", "/etc/x"], "mixed": ["/srv/a", 3]});
    assert_eq!(
        run(r#"path_under(args.paths, "/srv")"#, "t", &args),
        Ok(true)
    );
    assert_eq!(
        run(r#"path_under(args.bad, "/srv")"#, "t", &args),
        Ok(false)
    );
    assert_eq!(
        run(r#"path_under(args.mixed, "/srv")"#, "t", &args),
        Err(Undetermined)
    );
    assert!(Expr::compile(r#"path_under(agent.uid, "/srv")"#).is_err());
}

#[test]
fn url_hosts_are_the_real_authority() {
    assert_eq!(url_host("https://example.com/a"), Some("example.com"));
    assert_eq!(url_host("https://good.com@evil.com/"), Some("evil.com"));
    assert_eq!(url_host("https://evil.com\\@good.com/"), Some("evil.com"));
    assert_eq!(url_host("http://[::1]:8080/x"), Some("::1"));
    assert_eq!(url_host("http://example.com.:80"), Some("example.com"));
    assert_eq!(url_host("http://evil%2ecom/"), None);
    assert_eq!(url_host("example.com/a"), None);
    assert_eq!(url_host("http:///a"), None);
    let args = json!({"u": "https://a.EXAMPLE.com/", "v": "https://example.com.evil.net/", "w": "https://xexample.com/"});
    assert_eq!(
        run(r#"host_in(args.u, ["*.example.com"])"#, "t", &args),
        Ok(true)
    );
    assert_eq!(
        run(
            r#"host_in(args.v, ["*.example.com", "example.com"])"#,
            "t",
            &args
        ),
        Ok(false)
    );
    assert_eq!(
        run(r#"host_in(args.w, ["*.example.com"])"#, "t", &args),
        Ok(false)
    );
    assert_eq!(
        run(
            r#"host_in(args.u, ["*.é.com"])"#,
            "t",
            &json!({"u": "https://xé.com"})
        ),
        Ok(false)
    );
}

#[test]
fn globs_match_whole_names() {
    assert!(glob_match(b"read_*", b"read_file"));
    assert!(glob_match(b"*", b""));
    assert!(glob_match(b"a*b*c", b"aXbYbZc"));
    assert!(!glob_match(b"a*b*c", b"aXbYbZ"));
    assert!(glob_match(b"?ead", b"read"));
    assert!(!glob_match(b"read", b"read_file"));
    // Pathological patterns stay fast (one backtrack point).
    let text = "a".repeat(10_000);
    assert!(!glob_match(b"*a*a*a*a*a*b", text.as_bytes()));
}
