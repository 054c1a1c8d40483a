//! Lexer, parser and type checker of conditions. Grammar (lowest
//! precedence first):
//!
//! ```text
//! or      = and ("||" and)*
//! and     = unary ("&&" unary)*
//! unary   = "!" unary | compare
//! compare = postfix (("=="|"!="|"<"|"<="|">"|">=") postfix | "in" postfix)?
//! postfix = primary ("." NAME ("(" args ")")? | "[" STRING | INT "]")*
//! primary = literal | "[" literals "]" | NAME ("(" args ")")? | "(" or ")"
//! ```
//!
//! `x.f(y)` is `f(x, y)`.
use super::{CmpOp, CompileError, Field, Func, Lit, Node, Type};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Int(i64),
    Num(f64),
    Punct(&'static str),
    End,
}

const PUNCT: [&str; 17] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ",", ".", "-", "+",
];

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, CompileError> {
    let err = |offset: usize, message: String| CompileError { offset, message };
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'"' || c == b'\'' {
            let mut s = String::new();
            i += 1;
            loop {
                let Some(ch) = src[i..].chars().next() else {
                    return Err(err(start, "unterminated string".into()));
                };
                i += ch.len_utf8();
                match ch {
                    '\\' => {
                        let Some(esc) = src[i..].chars().next() else {
                            return Err(err(start, "unterminated string".into()));
                        };
                        i += esc.len_utf8();
                        s.push(match esc {
                            'n' => '\n',
                            't' => '\t',
                            '\\' | '"' | '\'' => esc,
                            other => {
                                return Err(err(i - 2, format!("unknown escape \\{other}")));
                            }
                        });
                    }
                    q if q as u32 == u32::from(c) => break,
                    other => s.push(other),
                }
            }
            out.push((start, Tok::Str(s)));
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let is_float = i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit();
            if is_float {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let text = &src[start..i];
                let v: f64 = text
                    .parse()
                    .map_err(|_| err(start, format!("bad number {text:?}")))?;
                out.push((start, Tok::Num(v)));
            } else {
                let text = src[start..i].replace('_', "");
                let v: i64 = text
                    .parse()
                    .map_err(|_| err(start, format!("bad integer {:?}", &src[start..i])))?;
                out.push((start, Tok::Int(v)));
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, Tok::Name(src[start..i].to_owned())));
        } else if let Some(p) = PUNCT.iter().find(|p| src[i..].starts_with(**p)) {
            i += p.len();
            out.push((start, Tok::Punct(p)));
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(err(start, format!("unexpected character {ch:?}")));
        }
    }
    out.push((src.len(), Tok::End));
    Ok(out)
}

/// A parsed, typed node.
struct Typed {
    node: Node,
    ty: Type,
    offset: usize,
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

/// Nesting deeper than this is refused (no stack overflow on hostile
/// policy text).
const MAX_DEPTH: usize = 64;

pub(super) fn compile(src: &str) -> Result<Node, CompileError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    if p.peek() == &Tok::End {
        return Err(CompileError {
            offset: 0,
            message: "empty condition".into(),
        });
    }
    let e = p.or(0)?;
    if p.peek() != &Tok::End {
        return Err(p.error(format!("unexpected {}", describe(p.peek()))));
    }
    expect_bool(&e)?;
    Ok(e.node)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Name(n) => format!("name `{n}`"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Int(i) => format!("integer {i}"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Punct(p) => format!("`{p}`"),
        Tok::End => "end of condition".into(),
    }
}

fn type_error(e: &Typed, want: &str) -> CompileError {
    CompileError {
        offset: e.offset,
        message: format!("expected {want}, found {}", e.ty),
    }
}

fn expect_bool(e: &Typed) -> Result<(), CompileError> {
    match e.ty {
        Type::Bool | Type::Dyn => Ok(()),
        _ => Err(type_error(e, "a boolean")),
    }
}

fn expect(e: &Typed, ty: Type) -> Result<(), CompileError> {
    if e.ty == ty || e.ty == Type::Dyn {
        Ok(())
    } else {
        Err(type_error(e, &ty.to_string()))
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].1
    }

    fn offset(&self) -> usize {
        self.toks[self.pos].0
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].1.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn error(&self, message: String) -> CompileError {
        CompileError {
            offset: self.offset(),
            message,
        }
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Tok::Punct(q) if *q == p) {
            self.next();
            true
        } else {
            false
        }
    }

    fn want(&mut self, p: &str) -> Result<(), CompileError> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{p}`, found {}", describe(self.peek()))))
        }
    }

    fn depth(&self, depth: usize) -> Result<usize, CompileError> {
        if depth >= MAX_DEPTH {
            Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(depth + 1)
        }
    }

    fn or(&mut self, depth: usize) -> Result<Typed, CompileError> {
        let depth = self.depth(depth)?;
        let mut left = self.and(depth)?;
        while self.eat("||") {
            let right = self.and(depth)?;
            expect_bool(&left)?;
            expect_bool(&right)?;
            left = Typed {
                offset: left.offset,
                node: Node::Or(Box::new(left.node), Box::new(right.node)),
                ty: Type::Bool,
            };
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Typed, CompileError> {
        let mut left = self.unary(depth)?;
        while self.eat("&&") {
            let right = self.unary(depth)?;
            expect_bool(&left)?;
            expect_bool(&right)?;
            left = Typed {
                offset: left.offset,
                node: Node::And(Box::new(left.node), Box::new(right.node)),
                ty: Type::Bool,
            };
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Typed, CompileError> {
        let offset = self.offset();
        if self.eat("!") {
            let depth = self.depth(depth)?;
            let inner = self.unary(depth)?;
            expect_bool(&inner)?;
            return Ok(Typed {
                offset,
                node: Node::Not(Box::new(inner.node)),
                ty: Type::Bool,
            });
        }
        self.compare(depth)
    }

    fn compare(&mut self, depth: usize) -> Result<Typed, CompileError> {
        let left = self.postfix(depth)?;
        let op = match self.peek() {
            Tok::Punct("==") => CmpOp::Eq,
            Tok::Punct("!=") => CmpOp::Ne,
            Tok::Punct("<") => CmpOp::Lt,
            Tok::Punct("<=") => CmpOp::Le,
            Tok::Punct(">") => CmpOp::Gt,
            Tok::Punct(">=") => CmpOp::Ge,
            Tok::Name(n) if n == "in" => {
                self.next();
                let right = self.postfix(depth)?;
                expect(&right, Type::List)?;
                if matches!(left.ty, Type::List | Type::Bool | Type::Namespace) {
                    return Err(type_error(&left, "a string or a number"));
                }
                return Ok(Typed {
                    offset: left.offset,
                    node: Node::In(Box::new(left.node), Box::new(right.node)),
                    ty: Type::Bool,
                });
            }
            _ => return Ok(left),
        };
        self.next();
        let right = self.postfix(depth)?;
        let numeric = |t: Type| matches!(t, Type::Int | Type::Num);
        if left.ty == Type::Namespace || right.ty == Type::Namespace {
            let e = if left.ty == Type::Namespace {
                &left
            } else {
                &right
            };
            return Err(type_error(e, "a value"));
        }
        let compatible = left.ty == Type::Dyn
            || right.ty == Type::Dyn
            || left.ty == right.ty
            || (numeric(left.ty) && numeric(right.ty));
        if !compatible {
            return Err(CompileError {
                offset: right.offset,
                message: format!("cannot compare {} with {}", left.ty, right.ty),
            });
        }
        let ordered = !matches!(op, CmpOp::Eq | CmpOp::Ne);
        if ordered && matches!(left.ty, Type::Bool | Type::List) {
            return Err(type_error(&left, "a number or a string"));
        }
        Ok(Typed {
            offset: left.offset,
            node: Node::Cmp(op, Box::new(left.node), Box::new(right.node)),
            ty: Type::Bool,
        })
    }

    fn postfix(&mut self, depth: usize) -> Result<Typed, CompileError> {
        let mut e = self.primary(depth)?;
        loop {
            if self.eat(".") {
                let offset = self.offset();
                let name = match self.next() {
                    Tok::Name(name) => name,
                    Tok::Int(i) if i >= 0 && is_field(&e) => i.to_string(),
                    _ => {
                        return Err(CompileError {
                            offset,
                            message: "expected a name after `.`".into(),
                        });
                    }
                };
                if matches!(self.peek(), Tok::Punct("(")) {
                    let mut args = vec![e];
                    args.extend(self.call_args(depth)?);
                    e = call(&name, offset, args)?;
                } else {
                    e = member(&e, &name, offset)?;
                }
            } else if matches!(self.peek(), Tok::Punct("[")) && is_field(&e) {
                self.next();
                let offset = self.offset();
                let key = match self.next() {
                    Tok::Str(s) => s,
                    Tok::Int(i) if i >= 0 => i.to_string(),
                    other => {
                        return Err(CompileError {
                            offset,
                            message: format!(
                                "expected a string or an index, found {}",
                                describe(&other)
                            ),
                        });
                    }
                };
                self.want("]")?;
                e = member(&e, &key, offset)?;
            } else {
                return Ok(e);
            }
        }
    }

    fn call_args(&mut self, depth: usize) -> Result<Vec<Typed>, CompileError> {
        self.want("(")?;
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.or(depth)?);
            if self.eat(")") {
                return Ok(args);
            }
            self.want(",")?;
        }
    }

    fn literal(&mut self) -> Result<Option<Lit>, CompileError> {
        let neg = matches!(self.peek(), Tok::Punct("-"));
        if neg {
            self.next();
        }
        let lit = match (self.peek().clone(), neg) {
            (Tok::Str(s), false) => Lit::Str(s.into()),
            (Tok::Int(i), _) => Lit::Int(if neg { -i } else { i }),
            (Tok::Num(n), _) => Lit::Num(if neg { -n } else { n }),
            (Tok::Name(n), false) if n == "true" || n == "false" => Lit::Bool(n == "true"),
            (t, true) => {
                return Err(self.error(format!("expected a number, found {}", describe(&t))));
            }
            _ => return Ok(None),
        };
        self.next();
        Ok(Some(lit))
    }

    fn primary(&mut self, depth: usize) -> Result<Typed, CompileError> {
        let offset = self.offset();
        if let Some(lit) = self.literal()? {
            let ty = match lit {
                Lit::Bool(_) => Type::Bool,
                Lit::Int(_) => Type::Int,
                Lit::Num(_) => Type::Num,
                Lit::Str(_) => Type::Str,
            };
            return Ok(Typed {
                node: Node::Lit(lit),
                ty,
                offset,
            });
        }
        if self.eat("(") {
            let depth = self.depth(depth)?;
            let mut e = self.or(depth)?;
            self.want(")")?;
            e.offset = offset;
            return Ok(e);
        }
        if self.eat("[") {
            let mut items = Vec::new();
            if !self.eat("]") {
                loop {
                    let at = self.offset();
                    let Some(lit) = self.literal()? else {
                        return Err(CompileError {
                            offset: at,
                            message: "list items must be literals".into(),
                        });
                    };
                    items.push(lit);
                    if self.eat("]") {
                        break;
                    }
                    self.want(",")?;
                }
            }
            return Ok(Typed {
                node: Node::List(items.into()),
                ty: Type::List,
                offset,
            });
        }
        match self.next() {
            Tok::Name(name) => {
                if matches!(self.peek(), Tok::Punct("(")) {
                    let args = self.call_args(depth)?;
                    return call(&name, offset, args);
                }
                root(&name, offset)
            }
            other => Err(CompileError {
                offset,
                message: format!("expected a value, found {}", describe(&other)),
            }),
        }
    }
}

fn is_field(e: &Typed) -> bool {
    e.ty == Type::Namespace || matches!(e.node, Node::Field(Field::Args(_) | Field::AgentAttr(_)))
}

/// Names that start a path: `agent`, `session`, `time`, `trust` are
/// namespaces, resolved by [`member`].
const NAMESPACES: [&str; 4] = ["agent", "session", "time", "trust"];

fn root(name: &str, offset: usize) -> Result<Typed, CompileError> {
    let (node, ty) = match name {
        "tool" => (Node::Field(Field::Tool), Type::Str),
        "server" => (Node::Field(Field::Server), Type::Str),
        "args" => (Node::Field(Field::Args(Box::new([]))), Type::Dyn),
        // A namespace on its own is only a prefix; `member` completes it.
        ns if NAMESPACES.contains(&ns) => (Node::Lit(Lit::Str(ns.into())), Type::Namespace),
        _ => {
            return Err(CompileError {
                offset,
                message: format!(
                    "unknown name `{name}` (known: tool, server, args, agent, session, time, trust)"
                ),
            });
        }
    };
    Ok(Typed { node, ty, offset })
}

fn member(e: &Typed, name: &str, offset: usize) -> Result<Typed, CompileError> {
    let unknown = |known: &str| CompileError {
        offset,
        message: format!("unknown field `{name}` (known: {known})"),
    };
    let field = |f: Field, ty: Type| {
        Ok(Typed {
            node: Node::Field(f),
            ty,
            offset: e.offset,
        })
    };
    match &e.node {
        Node::Field(Field::Args(keys)) => {
            let mut keys = keys.to_vec();
            keys.push(name.into());
            field(Field::Args(keys.into()), Type::Dyn)
        }
        Node::Lit(Lit::Str(ns)) if e.ty == Type::Namespace => match (&**ns, name) {
            ("agent", "name") => field(Field::AgentName, Type::Str),
            ("agent", "uid") => field(Field::AgentUid, Type::Int),
            ("agent", "gid") => field(Field::AgentGid, Type::Int),
            ("agent", "exe") => field(Field::AgentExe, Type::Str),
            ("agent", "identity") => field(Field::AgentIdentity, Type::Str),
            ("agent", "roles") => field(Field::AgentRoles, Type::List),
            ("agent", "attrs") => Ok(Typed {
                node: Node::Lit(Lit::Str("agent.attrs".into())),
                ty: Type::Namespace,
                offset: e.offset,
            }),
            ("agent.attrs", key) => field(Field::AgentAttr(key.into()), Type::Dyn),
            ("agent", _) => Err(unknown("name, uid, gid, exe, identity, roles, attrs")),
            ("session", "calls") => field(Field::SessionCalls, Type::Int),
            ("session", "blocked") => field(Field::SessionBlocked, Type::Int),
            ("session", "alerts") => field(Field::SessionAlerts, Type::Int),
            ("session", "flagged") => field(Field::SessionFlagged, Type::Int),
            ("session", _) => Err(unknown("calls, blocked, alerts, flagged")),
            ("time", "unix") => field(Field::TimeUnix, Type::Int),
            ("time", "hour") => field(Field::TimeHour, Type::Int),
            ("time", "weekday") => field(Field::TimeWeekday, Type::Int),
            ("time", _) => Err(unknown("unix, hour, weekday")),
            ("trust", "agent") => field(Field::TrustAgent, Type::Num),
            ("trust", "server") => field(Field::TrustServer, Type::Num),
            ("trust", _) => Err(unknown("agent, server")),
            _ => Err(unknown("none")),
        },
        _ => Err(CompileError {
            offset,
            message: format!("{} has no field `{name}`", e.ty),
        }),
    }
}

fn call(name: &str, offset: usize, args: Vec<Typed>) -> Result<Typed, CompileError> {
    let (func, params, ret): (Func, &[Type], Type) = match name {
        "starts_with" => (Func::StartsWith, &[Type::Str, Type::Str], Type::Bool),
        "ends_with" => (Func::EndsWith, &[Type::Str, Type::Str], Type::Bool),
        "contains" => (Func::Contains, &[Type::Str, Type::Str], Type::Bool),
        "matches" => (Func::Matches, &[Type::Str, Type::Str], Type::Bool),
        "imatches" => (Func::IMatches, &[Type::Str, Type::Str], Type::Bool),
        "path_under" => (Func::PathUnder, &[Type::Dyn, Type::Str], Type::Bool),
        "url_host" => (Func::UrlHost, &[Type::Str], Type::Str),
        "host_in" => (Func::HostIn, &[Type::Str, Type::List], Type::Bool),
        "size" => (Func::Size, &[Type::Dyn], Type::Int),
        "has" => (Func::Has, &[Type::Dyn], Type::Bool),
        _ => {
            return Err(CompileError {
                offset,
                message: format!(
                    "unknown function `{name}` (known: starts_with, ends_with, contains, matches, imatches, \
                     path_under, url_host, host_in, size, has)"
                ),
            });
        }
    };
    if args.len() != params.len() {
        return Err(CompileError {
            offset,
            message: format!(
                "{name} takes {} argument(s), {} given",
                params.len(),
                args.len()
            ),
        });
    }
    for (a, p) in args.iter().zip(params) {
        if *p != Type::Dyn {
            expect(a, *p)?;
        }
        if a.ty == Type::Namespace {
            return Err(type_error(a, "a value"));
        }
    }
    if func == Func::PathUnder && !matches!(args[0].ty, Type::Str | Type::List | Type::Dyn) {
        return Err(type_error(&args[0], "a path or a list of paths"));
    }
    if func == Func::Size && !matches!(args[0].ty, Type::Str | Type::List | Type::Dyn) {
        return Err(type_error(&args[0], "a string or a list"));
    }
    if func == Func::Has && !matches!(args[0].node, Node::Field(_)) {
        return Err(type_error(&args[0], "a name (has(args.x))"));
    }
    let at = args.first().map_or(offset, |a| a.offset);
    Ok(Typed {
        node: Node::Call(func, args.into_iter().map(|a| a.node).collect()),
        ty: ret,
        offset: at,
    })
}
