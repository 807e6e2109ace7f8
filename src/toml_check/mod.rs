//! What the configuration and policy checkers share: a TOML document as a tree of values with
//! their spans ([`tree`]), spans turned into line numbers ([`Lines`]), the walk that finds
//! and removes every unknown key at once ([`strip_unknown_keys`]) and the one [`Problem`] type they report.

mod tree;

use std::fmt;

use toml::de::{DeTable, DeValue};

pub(crate) use tree::{parse, Key, Kind, Node};

/// One problem in a configuration, policy or registries.conf file, located by file, line and
/// key. Displays as `file:line: key: message`; the parts that are unknown are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// None when the problem is about the whole file (unreadable, say).
    pub line: Option<usize>,
    /// The key path (`listen.registry`); empty when the message names what it is about.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
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

/// 1-based line of a byte offset, for one-off lookups.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    Lines::new(text).line(offset)
}

/// The keys each table of a format may hold. A table path is its keys joined by `.`, an
/// array of tables (`[[registry]]`) counted as the table each element is. A table whose path
/// is not listed holds free-form keys (`[aliases]`).
pub(crate) type Schema = &'static [(&'static str, &'static [&'static str])];

/// Removes every key of `root` that `schema` does not know and reports each as a problem
/// with its line and key path, in document order. What is left can be deserialized with
/// serde's `deny_unknown_fields` as a backstop and still yield every other problem. `label`
/// names an element of an array of tables in key paths (`registry[docker.io]`); given the
/// schema path, the element's place and the element, it returns what goes in the brackets.
pub(crate) fn strip_unknown_keys(
    file: &str,
    text: &str,
    root: &mut DeTable<'_>,
    schema: Schema,
    label: &dyn Fn(&str, usize, &DeTable<'_>) -> String,
) -> Vec<Problem> {
    let mut walk = Walk {
        file,
        lines: Lines::new(text),
        schema,
        label,
        problems: Vec::new(),
    };
    walk.table(root, "", "");
    walk.problems.sort_by_key(|p| p.line);
    walk.problems
}

struct Walk<'a> {
    file: &'a str,
    lines: Lines,
    schema: Schema,
    label: &'a dyn Fn(&str, usize, &DeTable<'_>) -> String,
    problems: Vec<Problem>,
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

impl Walk<'_> {
    /// `path` is the schema path, `shown` the key path as problems show it.
    fn table(&mut self, table: &mut DeTable<'_>, path: &str, shown: &str) {
        let Some((_, known)) = self.schema.iter().find(|(p, _)| *p == path) else {
            return;
        };
        let mut unknown = Vec::new();
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                unknown.push(name.to_owned());
                self.problems.push(Problem {
                    file: self.file.to_owned(),
                    line: Some(self.lines.line(key.span().start)),
                    key: join(shown, name),
                    message: format!("unknown key {name:?} (known here: {})", known.join(", ")),
                });
            }
        }
        for name in &unknown {
            table.remove(name.as_str());
        }
        for (key, value) in table.iter_mut() {
            let name: &str = key.get_ref();
            let (child_path, child_shown) = (join(path, name), join(shown, name));
            match value.get_mut() {
                DeValue::Table(t) => self.table(t, &child_path, &child_shown),
                DeValue::Array(items) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        if let DeValue::Table(t) = item.get_mut() {
                            let label = (self.label)(&child_path, i, t);
                            self.table(t, &child_path, &format!("{child_shown}[{label}]"));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_display_leaves_out_what_is_unknown() {
        let p = Problem {
            file: "p.toml".into(),
            line: Some(3),
            key: String::new(),
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), "p.toml:3: bad");
        let p = Problem { line: None, ..p };
        assert_eq!(p.to_string(), "p.toml: bad");
        let p = Problem {
            line: Some(2),
            key: "listen.registry".into(),
            ..p
        };
        assert_eq!(p.to_string(), "p.toml:2: listen.registry: bad");
    }

    #[test]
    fn every_unknown_key_is_found_in_every_table_with_its_line() {
        const SCHEMA: Schema = &[("", &["a", "t", "r"]), ("t", &["x"]), ("r", &["name"])];
        let text = "a = 1\nb = 2\n[t]\nx = 1\ny = 2\n[[r]]\nname = \"one\"\nz = 3\n";
        let mut root = DeTable::parse(text).expect("valid TOML").into_inner();
        let label = |_: &str, i: usize, _: &DeTable<'_>| i.to_string();
        let found: Vec<String> = strip_unknown_keys("f.toml", text, &mut root, SCHEMA, &label)
            .iter()
            .map(|p| format!("{}:{}", p.line.unwrap_or(0), p.key))
            .collect();
        assert_eq!(found, ["2:b", "5:t.y", "8:r[0].z"]);
        let left: Vec<&str> = root.iter().map(|(k, _)| k.get_ref().as_ref()).collect();
        assert_eq!(left, ["a", "r", "t"], "unknown keys are removed");
    }
}
