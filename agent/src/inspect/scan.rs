//! Which parts of an MCP message PSI reads: the text an agent's model will
//! see. Client to server: `tools/call` arguments and `prompts/get`
//! arguments. Server to client, by the method answered: `tools/call`
//! results (every text content, embedded resources, structured content),
//! `tools/list` (tool titles, descriptions and every description inside the
//! input and output schemas), `prompts/list` and `prompts/get`,
//! `resources/read` text contents.

use serde_json::Value;

/// Where PSI looks, as policy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Point {
    Arguments,
    Results,
    Descriptions,
    Prompts,
    Resources,
}

pub const ALL_POINTS: [Point; 5] = [
    Point::Arguments,
    Point::Results,
    Point::Descriptions,
    Point::Prompts,
    Point::Resources,
];

/// The scanning point of a message: a request's `method` (client side) or
/// the method a response answers (server side).
#[must_use]
pub fn point(method: &str, from_client: bool) -> Option<Point> {
    match (method, from_client) {
        ("tools/call", true) => Some(Point::Arguments),
        ("tools/call", false) => Some(Point::Results),
        ("tools/list", false) => Some(Point::Descriptions),
        ("prompts/get", _) | ("prompts/list", false) => Some(Point::Prompts),
        ("resources/read", false) => Some(Point::Resources),
        _ => None,
    }
}

/// A piece of text at a JSON pointer.
pub type Field<'a> = (String, &'a str);

/// The fields to read in `msg` (a whole JSON-RPC object) at `point`.
#[must_use]
pub fn fields(msg: &Value, point: Point) -> Vec<Field<'_>> {
    let mut out = Vec::new();
    match point {
        Point::Arguments => {
            all_strings(
                &msg["params"]["arguments"],
                "/params/arguments".into(),
                &mut out,
            );
        }
        Point::Prompts if msg.get("params").is_some() => {
            all_strings(
                &msg["params"]["arguments"],
                "/params/arguments".into(),
                &mut out,
            );
        }
        Point::Results => {
            content_list(&msg["result"]["content"], "/result/content", &mut out);
            all_strings(
                &msg["result"]["structuredContent"],
                "/result/structuredContent".into(),
                &mut out,
            );
        }
        Point::Descriptions => {
            for (i, tool) in array(&msg["result"]["tools"]) {
                let base = format!("/result/tools/{i}");
                for key in ["title", "description"] {
                    text_at(tool, key, &base, &mut out);
                }
                text_at(
                    &tool["annotations"],
                    "title",
                    &format!("{base}/annotations"),
                    &mut out,
                );
                for schema in ["inputSchema", "outputSchema"] {
                    descriptions(&tool[schema], &format!("{base}/{schema}"), &mut out);
                }
            }
        }
        Point::Prompts => {
            let r = &msg["result"];
            text_at(r, "description", "/result", &mut out);
            for (i, p) in array(&r["prompts"]) {
                let base = format!("/result/prompts/{i}");
                text_at(p, "title", &base, &mut out);
                text_at(p, "description", &base, &mut out);
                for (j, a) in array(&p["arguments"]) {
                    text_at(a, "description", &format!("{base}/arguments/{j}"), &mut out);
                }
            }
            for (i, m) in array(&r["messages"]) {
                content(
                    &m["content"],
                    &format!("/result/messages/{i}/content"),
                    &mut out,
                );
            }
        }
        Point::Resources => {
            for (i, c) in array(&msg["result"]["contents"]) {
                text_at(c, "text", &format!("/result/contents/{i}"), &mut out);
            }
        }
    }
    out
}

fn array(v: &Value) -> impl Iterator<Item = (usize, &Value)> {
    v.as_array().into_iter().flatten().enumerate()
}

fn text_at<'a>(v: &'a Value, key: &str, base: &str, out: &mut Vec<Field<'a>>) {
    if let Some(s) = v.get(key).and_then(Value::as_str) {
        out.push((format!("{base}/{key}"), s));
    }
}

fn content_list<'a>(v: &'a Value, base: &str, out: &mut Vec<Field<'a>>) {
    for (i, c) in array(v) {
        content(c, &format!("{base}/{i}"), out);
    }
}

/// One content block: text, or an embedded text resource.
fn content<'a>(c: &'a Value, base: &str, out: &mut Vec<Field<'a>>) {
    text_at(c, "text", base, out);
    text_at(&c["resource"], "text", &format!("{base}/resource"), out);
    // Resource links carry a description a model will read, too.
    text_at(c, "description", base, out);
}

/// Every `description` and `title` inside a JSON schema.
fn descriptions<'a>(v: &'a Value, path: &str, out: &mut Vec<Field<'a>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{path}/{}", escape(k));
                match (k.as_str(), child) {
                    ("description" | "title", Value::String(s)) => out.push((p, s)),
                    _ => descriptions(child, &p, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                descriptions(child, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn all_strings<'a>(v: &'a Value, path: String, out: &mut Vec<Field<'a>>) {
    match v {
        Value::String(s) => out.push((path, s)),
        Value::Object(map) => {
            for (k, child) in map {
                all_strings(child, format!("{path}/{}", escape(k)), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                all_strings(child, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// JSON pointer escaping (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(msg: &Value, point: Point) -> Vec<(String, String)> {
        fields(msg, point)
            .into_iter()
            .map(|(p, s)| (p, s.to_owned()))
            .collect()
    }

    #[test]
    fn points_by_method_and_direction() {
        assert_eq!(point("tools/call", true), Some(Point::Arguments));
        assert_eq!(point("tools/call", false), Some(Point::Results));
        assert_eq!(point("tools/list", false), Some(Point::Descriptions));
        assert_eq!(point("tools/list", true), None);
        assert_eq!(point("initialize", false), None);
    }

    #[test]
    fn tool_call_arguments_every_string() {
        let m = json!({"params": {"name": "send", "arguments": {"to": "a@b", "body": {"lines": ["hi", 3, "bye"]}, "n/x": "y"}}});
        assert_eq!(
            paths(&m, Point::Arguments),
            [
                ("/params/arguments/body/lines/0".into(), "hi".into()),
                ("/params/arguments/body/lines/2".into(), "bye".into()),
                ("/params/arguments/n~1x".into(), "y".into()),
                ("/params/arguments/to".into(), "a@b".into()),
            ]
        );
    }

    #[test]
    fn tool_results_text_resources_and_structured_content() {
        let m = json!({"result": {"content": [
            {"type": "text", "text": "one"},
            {"type": "image", "data": "AAAA"},
            {"type": "resource", "resource": {"uri": "file:///x", "text": "two"}},
            {"type": "resource_link", "uri": "file:///y", "description": "three"}
        ], "structuredContent": {"k": "four"}}});
        let got: Vec<String> = paths(&m, Point::Results)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(got, ["one", "two", "three", "four"]);
    }

    #[test]
    fn tool_descriptions_reach_into_schemas() {
        let m = json!({"result": {"tools": [{
            "name": "add", "title": "Adder", "description": "Adds numbers",
            "annotations": {"title": "Add"},
            "inputSchema": {"type": "object", "properties": {"a": {"type": "number", "description": "first"}}},
            "outputSchema": {"properties": {"sum": {"title": "Sum"}}}
        }]}});
        assert_eq!(
            paths(&m, Point::Descriptions),
            [
                ("/result/tools/0/title".into(), "Adder".into()),
                ("/result/tools/0/description".into(), "Adds numbers".into()),
                ("/result/tools/0/annotations/title".into(), "Add".into()),
                (
                    "/result/tools/0/inputSchema/properties/a/description".into(),
                    "first".into()
                ),
                (
                    "/result/tools/0/outputSchema/properties/sum/title".into(),
                    "Sum".into()
                ),
            ]
        );
    }

    #[test]
    fn prompts_and_resources() {
        let m = json!({"result": {"description": "d", "messages": [{"role": "user", "content": {"type": "text", "text": "m"}}]}});
        let got: Vec<String> = paths(&m, Point::Prompts)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(got, ["d", "m"]);
        let m = json!({"result": {"contents": [{"uri": "u", "text": "r"}, {"uri": "v", "blob": "AAAA"}]}});
        assert_eq!(
            paths(&m, Point::Resources),
            [("/result/contents/0/text".into(), "r".into())]
        );
        // Malformed shapes are just empty.
        assert!(paths(&json!({"result": 3}), Point::Results).is_empty());
    }
}
