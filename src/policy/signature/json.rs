//! Adapter from maintained JSON parsers to the tree the policy readers walk: every value and
//! key keeps its line, and a repeated key is refused.
//!
//! serde_json alone neither reports where a value was nor notices a repeated key (the last
//! one silently wins); containers/image refuses duplicates at every level, and every later
//! semantic error here must name its line. So serde_json, a strict RFC 8259 parser, decides
//! whether the text is JSON at all (and where it is not), and jsonc-parser, held to strict
//! JSON by its options, gives the byte ranges that become lines.

use jsonc_parser::ast;
use jsonc_parser::common::Ranged;

/// A JSON value and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    /// Never needed by the formats read here, so only checked, not kept.
    Number,
    String(String),
    Array(Vec<Node>),
    /// In document order: key, the key's line, value.
    Object(Vec<(String, usize, Node)>),
}

impl Value {
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// A syntax error and its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let full = e.to_string();
        let message = match full.rsplit_once(" at line ") {
            Some((message, _)) => message.to_owned(),
            None => full,
        };
        return Err(SyntaxError {
            line: e.line().max(1),
            message,
        });
    }
    let strict = jsonc_parser::ParseOptions {
        allow_comments: false,
        allow_loose_object_property_names: false,
        allow_trailing_commas: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let lines = Lines::new(text);
    let parsed = jsonc_parser::parse_to_ast(text, &Default::default(), &strict).map_err(|e| {
        SyntaxError {
            line: e.line_display(),
            message: e.kind().to_string(),
        }
    })?;
    let value = parsed.value.ok_or(SyntaxError {
        line: 1,
        message: "EOF while parsing a value".to_owned(),
    })?;
    node(&lines, value, 0)
}

/// Deep enough for any policy; bounds the recursion below (jsonc-parser stops at 512).
const MAX_DEPTH: usize = 64;

/// Byte offset to 1-based line.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        Lines(text.match_indices('\n').map(|(at, _)| at).collect())
    }

    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

fn node(lines: &Lines, value: ast::Value<'_>, depth: usize) -> Result<Node, SyntaxError> {
    let line = lines.of(value.start());
    if depth > MAX_DEPTH {
        return Err(SyntaxError {
            line,
            message: "JSON nested too deeply".to_owned(),
        });
    }
    let value = match value {
        ast::Value::NullKeyword(_) => Value::Null,
        ast::Value::BooleanLit(b) => Value::Bool(b.value),
        ast::Value::NumberLit(_) => Value::Number,
        ast::Value::StringLit(s) => Value::String(s.value.into_owned()),
        ast::Value::Array(a) => Value::Array(
            a.elements
                .into_iter()
                .map(|v| node(lines, v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        ast::Value::Object(o) => {
            let mut members: Vec<(String, usize, Node)> = Vec::new();
            for prop in o.properties {
                let line = lines.of(prop.range.start);
                let key = prop.name.into_string();
                if let Some((_, first, _)) = members.iter().find(|(k, _, _)| *k == key) {
                    return Err(SyntaxError {
                        line,
                        message: format!("Duplicate key {key:?} (first at line {first})"),
                    });
                }
                let value = node(lines, prop.value, depth + 1)?;
                members.push((key, line, value));
            }
            Value::Object(members)
        }
    };
    Ok(Node { line, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_lines_and_strings_unescape() {
        let node =
            parse("{\n \"a\": [1, -2.5e3, true, null],\n \"b\": \"x\\u00e9\\ud83d\\ude00\\n\"\n}")
                .unwrap();
        assert_eq!(node.line, 1);
        let Value::Object(members) = node.value else {
            panic!("object")
        };
        assert_eq!(members[0].1, 2);
        assert_eq!(members[1].1, 3);
        assert_eq!(
            members[1].2.value,
            Value::String("x\u{e9}\u{1F600}\n".into())
        );
        let Value::Array(items) = &members[0].2.value else {
            panic!("array")
        };
        assert_eq!(
            items.iter().map(|n| &n.value).collect::<Vec<_>>(),
            [
                &Value::Number,
                &Value::Number,
                &Value::Bool(true),
                &Value::Null
            ]
        );
        let multi = parse("[\n1,\n\n\"x\"]").unwrap();
        let Value::Array(items) = multi.value else {
            panic!("array")
        };
        assert_eq!((items[0].line, items[1].line), (2, 4));
    }

    /// Whatever serde_json reads as a string, the tree holds the same string: the two parsers
    /// agree on escapes and on raw non-ASCII (U+2028 and U+2029 included).
    #[test]
    fn strings_decode_as_serde_json_decodes_them() {
        for raw in [
            r#""plain""#,
            r#""\/ \" \\ \b\f\n\r\t""#,
            r#""\u0000\u001f\u007f\uFFFF\uDBFF\uDFFF""#,
            "\"\u{2028}\u{2029}\u{a0}\u{1F600}\"",
            r#""""#,
        ] {
            let want: String = serde_json::from_str(raw).unwrap();
            assert_eq!(parse(raw).unwrap().value, Value::String(want), "{raw}");
        }
    }

    /// Strict RFC 8259 only: everything JSONC, JSON5 or a lenient reader would accept is
    /// refused, each on its line.
    #[test]
    fn syntax_errors_name_their_line() {
        for (text, line, message) in [
            (
                "{\n\"a\": 1,\n\"a\": 2}",
                3,
                "Duplicate key \"a\" (first at line 2)",
            ),
            ("{\"a\": {\"b\": 1,\n \"b\": 1}}", 2, "Duplicate key \"b\""),
            // Keys compare decoded, as containers/image compares them.
            ("{\"a\": 1, \"\\u0061\": 2}", 1, "Duplicate key \"a\""),
            ("{\"a\": 1,\n}", 2, "key must be a string"),
            ("[1,\n]", 2, "expected value"),
            ("[1 2]", 1, "expected `,` or `]`"),
            ("{} {}", 1, "trailing characters"),
            ("\"\\ud800\"", 1, "unpaired high surrogate"),
            ("\"\\udc00\"", 1, "unpaired low surrogate"),
            ("01", 1, "invalid number"),
            ("1.", 1, "invalid number"),
            (".5", 1, "expected value"),
            ("+1", 1, "expected value"),
            ("0x10", 1, "trailing characters"),
            ("NaN", 1, "expected value"),
            ("\n\n\"abc", 3, "EOF while parsing a string"),
            ("\"a\nb\"", 1, "control character"),
            ("{\"a\": 'b'}", 1, "expected value"),
            ("{a: 1}", 1, "key must be a string"),
            ("// c\n{}", 1, "expected value"),
            ("{\"a\": 1 /* c */}", 1, "expected `,` or `}`"),
            ("\u{feff}{}", 1, "expected value"),
            ("{\u{a0}}", 1, "key must be a string"),
            ("[\u{c}1]", 1, "expected value"),
            ("\"\\x41\"", 1, "invalid escape"),
            ("\"\\'\"", 1, "invalid escape"),
            ("", 1, "EOF while parsing a value"),
            (&"[".repeat(200), 1, "EOF while parsing a list"),
            (
                &format!("{}{}", "[".repeat(66), "]".repeat(66)),
                1,
                "JSON nested too deeply",
            ),
            (
                &format!("{}{}", "[".repeat(600), "]".repeat(600)),
                1,
                "Maximum nesting depth exceeded",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err:?}");
            assert!(err.message.contains(message), "{text:?}: {err:?}");
        }
    }
}
