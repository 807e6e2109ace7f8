//! A TOML document as a tree of values that remember where they were written.
//!
//! The checkers read every key and value by hand instead of deriving serde structs with
//! `deny_unknown_fields`, because serde stops at the first problem and an admin fixing a file
//! wants the whole list at once, each with its line. The tree is built from toml's public
//! `DeTable`, whose keys and values all carry spans (implicit tables such as `a` in `a.b = 1`
//! included), so nothing depends on a serde wire format private to one toml version.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One value and the byte range it was written at, when toml knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub span: Option<Range<usize>>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

/// A table key and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub span: Option<Range<usize>>,
}

impl Kind {
    /// How a value is named in "expected a string, found an array".
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a datetime",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

/// Parse a whole document; a syntax error comes back with its byte range.
pub(crate) fn parse(text: &str) -> Result<Node, (Option<Range<usize>>, String)> {
    let root = DeTable::parse(text).map_err(|e| (e.span(), e.message().to_owned()))?;
    let span = root.span();
    Ok(Node {
        span: non_empty(span),
        kind: table(root.get_ref())?,
    })
}

/// An empty range is what toml gives a table nothing located (the document root of an empty
/// file); it says nothing about a line.
fn non_empty(span: Range<usize>) -> Option<Range<usize>> {
    (span.start < span.end || span.start > 0).then_some(span)
}

fn table(t: &DeTable<'_>) -> Result<Kind, (Option<Range<usize>>, String)> {
    let mut entries = Vec::with_capacity(t.len());
    for (key, value) in t.iter() {
        entries.push((
            Key {
                name: key.get_ref().to_string(),
                span: Some(key.span()),
            },
            node(value)?,
        ));
    }
    // toml keeps table entries in key order; the document's order makes problems read top
    // to bottom.
    entries.sort_by_key(|(k, _): &(Key, Node)| k.span.as_ref().map_or(0, |s| s.start));
    Ok(Kind::Table(entries))
}

fn node(value: &Spanned<DeValue<'_>>) -> Result<Node, (Option<Range<usize>>, String)> {
    let span = value.span();
    let kind = match value.get_ref() {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => Kind::Int(
            i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .map_err(|_| (Some(span.clone()), "integer out of range".to_owned()))?,
        ),
        DeValue::Float(f) => Kind::Float(float(f.as_str()).ok_or_else(|| {
            (
                Some(span.clone()),
                format!("invalid float {:?}", f.as_str()),
            )
        })?),
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(_) => Kind::Datetime,
        DeValue::Array(items) => Kind::Array(items.iter().map(node).collect::<Result<_, _>>()?),
        DeValue::Table(t) => table(t)?,
    };
    Ok(Node {
        span: Some(span),
        kind,
    })
}

/// TOML's float spellings (`inf`, `nan`, `_` separators) as an f64.
fn float(text: &str) -> Option<f64> {
    let text = text.replace('_', "");
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(&text)),
    };
    match rest {
        "inf" => Some(sign * f64::INFINITY),
        "nan" => Some(f64::NAN),
        _ => rest.parse::<f64>().ok().map(|v| sign * v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toml_check::line_of;

    fn at<'a>(node: &'a Node, key: &str) -> &'a Node {
        match &node.kind {
            Kind::Table(entries) => entries
                .iter()
                .find(|(k, _)| k.name == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no key {key}")),
            other => panic!("not a table: {other:?}"),
        }
    }

    fn line(text: &str, node: &Node) -> usize {
        line_of(text, node.span.clone().expect("a span").start)
    }

    #[test]
    fn spans_reach_every_kind_of_value() {
        let text = "a = \"x\"\nb = 1\n\n[t]\nc = [true, 2.5]\nd = 1979-05-27\n\n[[r]]\ne = { f = 1 }\n[[r]]\ng.h = \"dotted\"\n";
        let root = parse(text).unwrap();
        assert_eq!(line(text, at(&root, "a")), 1);
        assert_eq!(at(&root, "a").kind, Kind::Str("x".into()));
        assert_eq!(line(text, at(&root, "b")), 2);
        let t = at(&root, "t");
        assert_eq!(line(text, t), 4);
        let c = at(t, "c");
        assert_eq!(line(text, c), 5);
        match &c.kind {
            Kind::Array(items) => {
                assert_eq!(items[0].kind, Kind::Bool(true));
                assert_eq!(items[1].kind, Kind::Float(2.5));
                assert_eq!(line(text, &items[1]), 5);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(at(t, "d").kind, Kind::Datetime);
        let Kind::Array(rs) = &at(&root, "r").kind else {
            panic!("r is an array")
        };
        assert_eq!(line(text, &rs[0]), 8);
        assert_eq!(line(text, at(&rs[0], "e")), 9);
        assert_eq!(line(text, at(at(&rs[0], "e"), "f")), 9);
        assert_eq!(line(text, &rs[1]), 10);
        // `g` is implicit: no header wrote it, yet it is still located (at its first key).
        let g = at(&rs[1], "g");
        assert_eq!(line(text, g), 11);
        assert_eq!(line(text, at(g, "h")), 11);
        // Keys carry their own spans.
        let Kind::Table(entries) = &root.kind else {
            panic!()
        };
        assert_eq!(line_of(text, entries[1].0.span.clone().unwrap().start), 2);
    }

    #[test]
    fn syntax_errors_are_located() {
        let text = "a = 1\nb = [\n";
        let (span, message) = parse(text).unwrap_err();
        assert!(!message.is_empty());
        assert!(line_of(text, span.unwrap().start) >= 2);
        let (span, message) = parse("a = 1\na = 2\n").unwrap_err();
        assert!(message.contains("duplicate"), "{message}");
        assert_eq!(line_of("a = 1\na = 2\n", span.unwrap().start), 2);
    }
}
