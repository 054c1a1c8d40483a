//! Evaluation: a walk over the compiled tree that borrows every string from
//! the policy or the call, so it never allocates.
use serde_json::Value;

use super::{CmpOp, Context, Field, Func, Lit, Node};

/// The condition could not be decided for this call (a missing argument,
/// a value of the wrong type, an invalid URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("condition undetermined for this call")]
pub struct Undetermined;

#[derive(Clone, Copy, Debug)]
pub(super) enum Val<'a> {
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(&'a str),
    Lits(&'a [Lit]),
    Strs(&'a [String]),
    /// A JSON array, object or null from the arguments.
    Json(&'a Value),
}

fn from_json(v: &Value) -> Val<'_> {
    match v {
        Value::Bool(b) => Val::Bool(*b),
        Value::String(s) => Val::Str(s),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Val::Num(n.as_f64().unwrap_or(f64::NAN)), Val::Int),
        other => Val::Json(other),
    }
}

fn lit(l: &Lit) -> Val<'_> {
    match l {
        Lit::Bool(b) => Val::Bool(*b),
        Lit::Int(i) => Val::Int(*i),
        Lit::Num(n) => Val::Num(*n),
        Lit::Str(s) => Val::Str(s),
    }
}

/// Looks up `args.a.b`; arrays take decimal indexes.
fn args_path<'a>(mut v: &'a Value, keys: &[Box<str>]) -> Option<&'a Value> {
    for k in keys {
        v = match v {
            Value::Object(m) => m.get(&**k)?,
            Value::Array(a) => a.get(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn field<'a>(f: &'a Field, ctx: &Context<'a>) -> Result<Val<'a>, Undetermined> {
    const DAY: i64 = 86_400;
    Ok(match f {
        Field::Tool => Val::Str(ctx.tool),
        Field::Server => Val::Str(ctx.server),
        Field::AgentName => Val::Str(&ctx.agent.name),
        Field::AgentUid => Val::Int(ctx.agent.uid),
        Field::AgentGid => Val::Int(ctx.agent.gid),
        Field::AgentExe => Val::Str(&ctx.agent.exe),
        Field::AgentIdentity => Val::Str(&ctx.agent.identity),
        Field::AgentRoles => Val::Strs(&ctx.agent.roles),
        Field::AgentAttr(k) => Val::Str(ctx.agent.attrs.get(&**k).ok_or(Undetermined)?),
        Field::SessionCalls => Val::Int(ctx.session.calls as i64),
        Field::SessionBlocked => Val::Int(ctx.session.blocked as i64),
        Field::SessionAlerts => Val::Int(ctx.session.alerts as i64),
        Field::SessionFlagged => Val::Int(ctx.session.flagged as i64),
        Field::TrustAgent => Val::Num(ctx.trust.agent),
        Field::TrustServer => Val::Num(ctx.trust.server),
        Field::TimeUnix => Val::Int(ctx.unix_time),
        Field::TimeHour => Val::Int(ctx.unix_time.rem_euclid(DAY) / 3600),
        // 1970-01-01 was a Thursday; Monday is 1, Sunday 7.
        Field::TimeWeekday => Val::Int((ctx.unix_time.div_euclid(DAY) + 3).rem_euclid(7) + 1),
        Field::Args(keys) => from_json(args_path(ctx.args, keys).ok_or(Undetermined)?),
    })
}

pub(super) fn eval<'a>(node: &'a Node, ctx: &Context<'a>) -> Result<Val<'a>, Undetermined> {
    Ok(match node {
        Node::Lit(l) => lit(l),
        Node::List(items) => Val::Lits(items),
        Node::Field(f) => field(f, ctx)?,
        Node::Not(e) => Val::Bool(!boolean(eval(e, ctx)?)?),
        // Short-circuit, but an undetermined side only matters if the
        // other side does not decide: `false && ?` is false.
        Node::And(a, b) => match eval(a, ctx).and_then(boolean) {
            Ok(false) => Val::Bool(false),
            Ok(true) => Val::Bool(boolean(eval(b, ctx)?)?),
            Err(u) => match eval(b, ctx).and_then(boolean) {
                Ok(false) => Val::Bool(false),
                _ => return Err(u),
            },
        },
        Node::Or(a, b) => match eval(a, ctx).and_then(boolean) {
            Ok(true) => Val::Bool(true),
            Ok(false) => Val::Bool(boolean(eval(b, ctx)?)?),
            Err(u) => match eval(b, ctx).and_then(boolean) {
                Ok(true) => Val::Bool(true),
                _ => return Err(u),
            },
        },
        Node::Cmp(op, a, b) => Val::Bool(compare(*op, eval(a, ctx)?, eval(b, ctx)?)?),
        Node::In(a, b) => Val::Bool(contains(eval(b, ctx)?, eval(a, ctx)?)?),
        Node::Call(f, args) => call(*f, args, ctx)?,
    })
}

fn boolean(v: Val<'_>) -> Result<bool, Undetermined> {
    match v {
        Val::Bool(b) => Ok(b),
        _ => Err(Undetermined),
    }
}

fn string(v: Val<'_>) -> Result<&str, Undetermined> {
    match v {
        Val::Str(s) => Ok(s),
        _ => Err(Undetermined),
    }
}

fn compare(op: CmpOp, a: Val<'_>, b: Val<'_>) -> Result<bool, Undetermined> {
    use std::cmp::Ordering;
    // Integers beyond 2^53 compare approximately with numbers: conditions
    // compare sizes, counts, hours and scores, far below that.
    #[allow(clippy::cast_precision_loss)]
    let ord: Option<Ordering> = match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(&y)),
        (Val::Int(x), Val::Num(y)) => (x as f64).partial_cmp(&y),
        (Val::Num(x), Val::Int(y)) => x.partial_cmp(&(y as f64)),
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(&y),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => Some(x.cmp(&y)),
        _ => return Err(Undetermined),
    };
    let ord = ord.ok_or(Undetermined)?; // NaN
    Ok(match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
    })
}

fn equal(a: Val<'_>, b: Val<'_>) -> bool {
    compare(CmpOp::Eq, a, b).unwrap_or(false)
}

/// Whether `list` holds `needle`.
fn contains(list: Val<'_>, needle: Val<'_>) -> Result<bool, Undetermined> {
    Ok(match list {
        Val::Lits(items) => items.iter().any(|l| equal(lit(l), needle)),
        Val::Strs(items) => {
            let s = string(needle)?;
            items.iter().any(|i| i == s)
        }
        Val::Json(Value::Array(items)) => items.iter().any(|v| equal(from_json(v), needle)),
        _ => return Err(Undetermined),
    })
}

fn call<'a>(f: Func, args: &'a [Node], ctx: &Context<'a>) -> Result<Val<'a>, Undetermined> {
    let arg = |i: usize| eval(&args[i], ctx);
    let text = |i: usize| arg(i).and_then(string);
    Ok(match f {
        Func::StartsWith => Val::Bool(text(0)?.starts_with(text(1)?)),
        Func::EndsWith => Val::Bool(text(0)?.ends_with(text(1)?)),
        Func::Contains => Val::Bool(text(0)?.contains(text(1)?)),
        Func::Matches => Val::Bool(glob_match(text(1)?.as_bytes(), text(0)?.as_bytes())),
        Func::IMatches => Val::Bool(glob_match_with(
            text(1)?.as_bytes(),
            text(0)?.as_bytes(),
            u8::eq_ignore_ascii_case,
        )),
        Func::PathUnder => {
            let dir = text(1)?;
            match arg(0)? {
                Val::Str(p) => Val::Bool(path_under(p, dir).ok_or(Undetermined)?),
                // A list of paths (read_multiple_files): every one.
                Val::Json(Value::Array(items)) => {
                    let mut all = true;
                    for item in items {
                        let p = item.as_str().ok_or(Undetermined)?;
                        all &= path_under(p, dir).ok_or(Undetermined)?;
                    }
                    Val::Bool(all)
                }
                _ => return Err(Undetermined),
            }
        }
        Func::UrlHost => Val::Str(url_host(text(0)?).ok_or(Undetermined)?),
        Func::HostIn => {
            let host = url_host(text(0)?).ok_or(Undetermined)?;
            let Val::Lits(patterns) = arg(1)? else {
                return Err(Undetermined);
            };
            Val::Bool(patterns.iter().any(|p| match p {
                Lit::Str(p) => host_matches(host, p),
                _ => false,
            }))
        }
        Func::Size => Val::Int(match arg(0)? {
            Val::Str(s) => s.len() as i64,
            Val::Strs(l) => l.len() as i64,
            Val::Lits(l) => l.len() as i64,
            Val::Json(Value::Array(a)) => a.len() as i64,
            Val::Json(Value::Object(o)) => o.len() as i64,
            _ => return Err(Undetermined),
        }),
        Func::Has => Val::Bool(match &args[0] {
            Node::Field(Field::Args(keys)) => args_path(ctx.args, keys).is_some(),
            Node::Field(Field::AgentAttr(k)) => ctx.agent.attrs.contains_key(&**k),
            Node::Field(_) => true,
            _ => return Err(Undetermined),
        }),
    })
}

/// Glob match of `text` against `pattern`: `*` is any run of bytes
/// (including `/`), `?` any one byte, everything else literal.
/// Iterative with one backtrack point: linear in practice, no recursion.
#[must_use]
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    glob_match_with(pattern, text, |a, b| a == b)
}

/// [`glob_match`] with the byte comparison `same`.
fn glob_match_with(pattern: &[u8], text: &[u8], same: impl Fn(&u8, &u8) -> bool) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || same(&pattern[p], &text[t])) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Most path components a condition normalises (deeper paths are
/// undetermined); keeps the work on the stack.
const MAX_COMPONENTS: usize = 64;

/// Whether absolute `path` is `dir` or below it once `.`, `..` and `//`
/// are resolved lexically (`/srv/data/../../etc` is not under `/srv/data`).
/// `None` for a relative path or one deeper than 64 components: the
/// server's working directory is not known here.
#[must_use]
pub fn path_under(path: &str, dir: &str) -> Option<bool> {
    fn components<'s>(p: &'s str, out: &mut [&'s str; MAX_COMPONENTS]) -> Option<usize> {
        if !p.starts_with('/') || p.contains('\0') {
            return None;
        }
        let mut n: usize = 0;
        for part in p.split('/') {
            match part {
                "" | "." => {}
                ".." => n = n.saturating_sub(1),
                c => {
                    *out.get_mut(n)? = c;
                    n += 1;
                }
            }
        }
        Some(n)
    }
    let mut p = [""; MAX_COMPONENTS];
    let mut d = [""; MAX_COMPONENTS];
    let np = components(path, &mut p)?;
    let nd = components(dir, &mut d)?;
    Some(np >= nd && p[..nd] == d[..nd])
}

/// The host of an absolute URL (`scheme://[user@]host[:port]/...`),
/// without brackets, userinfo, port or a trailing dot. `None` when `url`
/// has no scheme and authority, or the host is empty.
#[must_use]
pub fn url_host(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    // The authority ends at the first '/', '?', '#' or '\' (browsers and
    // many HTTP clients treat '\' as '/').
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        &v6[..v6.find(']')?]
    } else {
        hostport.split_once(':').map_or(hostport, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // Percent-encoded or empty hosts are not decided here: a client may
    // decode `evil%2Ecom` to `evil.com`.
    (!host.is_empty() && !host.contains('%')).then_some(host)
}

/// `host` against `pattern`, ignoring ASCII case: `*.example.com` matches
/// any subdomain of example.com (not example.com itself), anything else
/// matches exactly.
fn host_matches(host: &str, pattern: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        host.len() > suffix.len() + 1
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    } else {
        host.eq_ignore_ascii_case(pattern)
    }
}
