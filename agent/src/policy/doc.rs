//! The versioned document around a policy (`apiVersion`, `kind`,
//! `metadata`, `spec`), and where a key sits in the text, so every error
//! names a line and a column.
//!
//! ```toml
//! apiVersion = "mcpwarden.dev/v1"
//! kind = "ServerPolicy"
//! [metadata]
//! name = "filesystem"
//! description = "The reference filesystem server, confined to /srv/data"
//! [spec]
//! mode = "enforce"
//! [spec.files]
//! deny = ["/root/.ssh"]
//! ```
//!
//! A document without `apiVersion` is a legacy (pre-v1) policy: its body
//! is the spec itself, and with no `[tools]` table every tool is allowed.
use std::collections::BTreeMap;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::RawPolicy;

/// The version this build reads.
pub const API_VERSION: &str = "mcpwarden.dev/v1";
/// The kind of document a server policy is.
pub const KIND: &str = "ServerPolicy";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: RawPolicy,
}

/// `[metadata]`: what the policy is about.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The server this policy is for: names it in events, pins and trust.
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One step of a key path: `tools.rules[2].when` is
/// `tools`, `rules`, 2, `when`.
enum Step<'k> {
    Name(&'k str),
    Index(usize),
}

fn steps(key: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Step::Name(name));
        }
        while let Some((index, tail)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Step::Index(i));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    out
}

/// 1-based line and column of byte `offset` in `text`.
#[must_use]
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// Where `key` (e.g. `spec.tools.rules[2].when`) is written in `text`: its
/// value's line and column, or the nearest enclosing key's when the key
/// itself is absent (a missing required field).
#[must_use]
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let table = DeTable::parse(text).ok()?;
    let mut at: Option<usize> = None;
    let mut value: Option<&DeValue<'_>> = None;
    let mut root = Some(table.get_ref());
    for step in steps(key) {
        let next = match (step, value, root.take()) {
            (Step::Name(n), None, Some(t)) | (Step::Name(n), Some(DeValue::Table(t)), None) => t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == n)
                .map(|(_, v)| v),
            (Step::Index(i), Some(DeValue::Array(a)), None) => a.get(i),
            _ => None,
        };
        let Some(next) = next else { break };
        at = Some(next.span().start);
        value = Some(next.get_ref());
    }
    at.map(|offset| line_col(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_where_written() {
        let text = "apiVersion = \"x\"\n[spec]\nmode = \"enforce\"\n[[spec.tools.rules]]\naction = \"allow\"\n[[spec.tools.rules]]\naction = \"block\"\nwhen = 'tool ='\n";
        assert_eq!(locate(text, "apiVersion"), Some((1, 14)));
        assert_eq!(locate(text, "spec.mode"), Some((3, 8)));
        assert_eq!(locate(text, "spec.tools.rules[1].when"), Some((8, 8)));
        // An absent key: its nearest parent.
        assert_eq!(
            locate(text, "spec.tools.rules[0].when").map(|l| l.0),
            Some(4)
        );
        assert_eq!(
            locate("[files]\ndeny = [\"/a\", \"b\"]\n", "files.deny[1]"),
            Some((2, 15))
        );
        assert_eq!(locate("not toml", "x"), None);
    }

    const V1: &str = r#"apiVersion = "mcpwarden.dev/v1"
kind = "ServerPolicy"
[metadata]
name = "files"
[spec]
mode = "enforce"
[spec.files]
deny = ["/root/.ssh"]
[[spec.tools.rules]]
name = "read_*"
action = "allow"
"#;

    #[test]
    fn versioned_documents_parse_and_name_their_server() {
        let p = crate::policy::Policy::parse(V1, "v1.toml").expect("valid");
        assert_eq!(p.server_name("cmd"), "files");
        assert_eq!(p.deny, vec!["/root/.ssh"]);
        assert_eq!(p.tools.rules.len(), 1);
        assert_eq!(p.tools.default, crate::policy::tools::Action::Block);
        assert!(p.warnings().is_empty(), "{:?}", p.warnings());
        // A legacy document: no metadata, every tool allowed, and said so.
        let legacy = crate::policy::Policy::parse("mode = \"enforce\"\n", "l.toml").expect("valid");
        assert_eq!(legacy.server_name("cmd"), "cmd");
        assert_eq!(legacy.tools.default, crate::policy::tools::Action::Allow);
        assert!(
            legacy.warnings()[0].contains("legacy"),
            "{:?}",
            legacy.warnings()
        );
        // v1 without rules refuses every call, and says so.
        let bare = V1.split("[[spec.tools.rules]]").next().expect("head");
        let p = crate::policy::Policy::parse(bare, "b.toml").expect("valid");
        assert!(
            p.warnings()[0].contains("every tool call is refused"),
            "{:?}",
            p.warnings()
        );
    }

    #[test]
    fn versioned_errors_point_at_file_line_and_key() {
        let err = |text: &str| {
            crate::policy::Policy::parse(text, "p.toml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&V1.replace("mcpwarden.dev/v1", "mcpwarden.dev/v9")),
            "policy p.toml:1:14: apiVersion: \"mcpwarden.dev/v9\": this mcpwarden reads \"mcpwarden.dev/v1\""
        );
        assert!(err(&V1.replace("ServerPolicy", "Agent")).starts_with("policy p.toml:2:8: kind:"));
        assert_eq!(
            err(&V1.replace("\"/root/.ssh\"", "\"root\"")),
            "policy p.toml:8:9: spec.files.deny[0]: \"root\": must be an absolute path"
        );
        assert_eq!(
            err(&format!("{V1}when = 'tool == 3'\n")),
            "policy p.toml:12:8: spec.tools.rules[0].when: at column 9: cannot compare a string with an integer"
        );
        assert_eq!(
            err(&format!("{V1}rate = \"ten a second\"\n")),
            "policy p.toml:12:8: spec.tools.rules[0].rate: \"ten a second\": expected COUNT/s, COUNT/min or COUNT/h, e.g. \"10/s\""
        );
        assert!(err(&V1.replace("action = \"allow\"", "action = \"maybe\"")).contains("line 11"));
        assert!(
            err(&V1.replace("name = \"files\"", "name = \"\""))
                .contains("metadata.name: must not be empty")
        );
        assert!(err(&V1.replace("[spec]", "[spec]\nbogus = 1")).contains("unknown field `bogus`"));
        assert!(
            err(&format!("{V1}[[spec.agents]]\nname = \"x\"\n"))
                .contains("spec.agents[0]: needs at least one of uid, gid, exe")
        );
    }
}
