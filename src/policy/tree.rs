//! A TOML document as a tree of values that remember where they were written.
//!
//! The loaders check every key and value by hand instead of deriving serde structs with
//! `deny_unknown_fields`, because serde stops at the first problem and an admin fixing a policy
//! wants the whole list at once, each with its line. toml 0.8 only exposes positions through
//! `toml::Spanned`, and its deserializer answers a request for a span with a plain value when it
//! has none (a table no header introduced, such as `a` in `a.b = 1`). `toml::Spanned` fails on
//! that; this visitor accepts both answers.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

// serde_spanned 0.6's wire names, which toml 0.8 recognises. The tests below pin them: if an
// upgrade changes them, every span disappears and `spans_reach_every_kind_of_value` fails.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";
const FIELDS: &[&str] = &[START, END, VALUE];
/// toml_datetime's marker key: a datetime arrives as a one-entry map under this key.
const DATETIME: &str = "$__toml_private_datetime";

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
    toml::from_str::<Node>(text).map_err(|e| (e.span(), e.message().to_owned()))
}

/// 1-based line of a byte offset.
#[cfg(test)]
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    Lines::new(text).line(offset)
}

/// Where each line starts, so that finding the line of an offset is a binary search: a
/// policy of 10,000 rules asks tens of thousands of times.
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub fn new(text: &str) -> Lines {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(at, _)| at)
                .collect(),
        )
    }

    /// 1-based line of a byte offset.
    pub fn line(&self, offset: usize) -> usize {
        // Newlines before `offset`, plus one.
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_struct(SPANNED, FIELDS, NodeVisitor)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_struct(SPANNED, FIELDS, KeyVisitor)
    }
}

/// Accepts a spanned wrapper around a string, or a bare string.
struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_owned(),
            span: None,
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key, E> {
        Ok(Key {
            name: v,
            span: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let (span, name) = spanned_rest::<A, String>(&mut map)?;
        Ok(Key {
            name,
            span: Some(span),
        })
    }
}

/// After the caller has consumed the START key: the start value, END and VALUE.
fn spanned_rest<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
) -> Result<(Range<usize>, T), A::Error> {
    // The first key is START; the key visitor reads it as a plain string.
    let first: Option<String> = map.next_key()?;
    if first.as_deref() != Some(START) {
        return Err(de::Error::custom("spanned value without a start"));
    }
    let start: usize = map.next_value()?;
    let _: Option<String> = map.next_key()?;
    let end: usize = map.next_value()?;
    let _: Option<String> = map.next_key()?;
    let value: T = map.next_value()?;
    Ok((start..end, value))
}

/// Accepts a spanned wrapper around any value, or a bare value.
struct NodeVisitor;

impl NodeVisitor {
    fn bare(kind: Kind) -> Node {
        Node { span: None, kind }
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Self::bare(Kind::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Self::bare(Kind::Int(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| Self::bare(Kind::Int(v)))
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Self::bare(Kind::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Self::bare(Kind::Str(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Self::bare(Kind::Str(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Self::bare(Kind::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key::<Key>()? else {
            return Ok(Self::bare(Kind::Table(Vec::new())));
        };
        if first.span.is_none() && first.name == START {
            let start: usize = map.next_value()?;
            let _: Option<Key> = map.next_key()?;
            let end: usize = map.next_value()?;
            let _: Option<Key> = map.next_key()?;
            let inner: Node = map.next_value_seed(KindSeed)?;
            return Ok(Node {
                span: Some(start..end),
                kind: inner.kind,
            });
        }
        table_rest(first, map)
    }
}

/// The value inside a spanned wrapper: any value, read without asking for a span again.
struct KindSeed;

impl<'de> de::DeserializeSeed<'de> for KindSeed {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

fn table_rest<'de, A: MapAccess<'de>>(first: Key, mut map: A) -> Result<Node, A::Error> {
    if first.name == DATETIME {
        let _: de::IgnoredAny = map.next_value()?;
        return Ok(NodeVisitor::bare(Kind::Datetime));
    }
    let mut entries = vec![(first.clone(), map.next_value::<Node>()?)];
    while let Some(key) = map.next_key::<Key>()? {
        let value = map.next_value::<Node>()?;
        entries.push((key, value));
    }
    // A table toml gave no span for is located at its first key, which is close enough for
    // "line N" in a message.
    Ok(Node {
        span: first.span,
        kind: Kind::Table(entries),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
