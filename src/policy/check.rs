//! Reading a spanned TOML tree by hand: take the keys you know, complain about the rest, and
//! collect every problem with its line instead of stopping at the first.

use std::ops::Range;
use std::sync::Arc;

use super::{Origin, Problem};
use crate::toml_check::{Key, Kind, Lines, Node};

/// One file being checked.
pub(crate) struct Ctx {
    pub file: Arc<str>,
    lines: Lines,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Whether an unknown key is an error (our format) or a warning (registries.conf, whose
/// format other tools extend).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    Error,
    Warn,
}

impl Ctx {
    pub fn new(file: &str, text: &str) -> Ctx {
        Ctx {
            file: file.into(),
            lines: Lines::new(text),
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn line(&self, span: &Option<Range<usize>>) -> Option<usize> {
        span.as_ref().map(|s| self.lines.line(s.start))
    }

    pub fn origin(&self, span: &Option<Range<usize>>) -> Origin {
        Origin {
            file: Arc::clone(&self.file),
            line: self.line(span).unwrap_or(1),
        }
    }

    fn make(&self, span: &Option<Range<usize>>, message: String) -> Problem {
        Problem {
            file: self.file.to_string(),
            line: self.line(span),
            key: String::new(),
            message,
        }
    }

    pub fn problem(&mut self, span: &Option<Range<usize>>, message: impl Into<String>) {
        let p = self.make(span, message.into());
        self.problems.push(p);
    }

    /// A problem at a place recorded earlier.
    pub fn problem_at(&mut self, origin: &Origin, message: impl Into<String>) {
        self.problems.push(Problem {
            file: origin.file.to_string(),
            line: Some(origin.line),
            key: String::new(),
            message: message.into(),
        });
    }

    pub fn warning(&mut self, span: &Option<Range<usize>>, message: impl Into<String>) {
        let p = self.make(span, message.into());
        self.warnings.push(p);
    }

    /// The entries of a table, or a problem naming `what` if `node` is something else.
    pub fn table<'n>(&mut self, node: &'n Node, what: &str) -> Option<Fields<'n>> {
        match &node.kind {
            Kind::Table(entries) => Some(Fields {
                entries,
                used: vec![false; entries.len()],
                span: node.span.clone(),
            }),
            other => {
                self.problem(
                    &node.span,
                    format!("{what} must be a table, found {}", other.describe()),
                );
                None
            }
        }
    }

    /// `[[name]]` entries: an array of tables.
    pub fn tables<'n>(&mut self, node: &'n Node, what: &str) -> Vec<Fields<'n>> {
        match &node.kind {
            Kind::Array(items) => items
                .iter()
                .filter_map(|item| self.table(item, &format!("each {what}")))
                .collect(),
            other => {
                self.problem(
                    &node.span,
                    format!(
                        "{what} must be an array of tables ([[...]]), found {}",
                        other.describe()
                    ),
                );
                Vec::new()
            }
        }
    }

    pub fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        match &node.kind {
            Kind::Str(s) => Some(s.clone()),
            other => {
                self.problem(
                    &node.span,
                    format!("{key} must be a string, found {}", other.describe()),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        match &node.kind {
            Kind::Bool(b) => Some(*b),
            other => {
                self.problem(
                    &node.span,
                    format!("{key} must be true or false, found {}", other.describe()),
                );
                None
            }
        }
    }

    /// A string or an array of strings, each with its own span.
    pub fn strings(&mut self, node: &Node, key: &str) -> Vec<(String, Option<Range<usize>>)> {
        match &node.kind {
            Kind::Str(s) => vec![(s.clone(), node.span.clone())],
            Kind::Array(items) => items
                .iter()
                .filter_map(|item| {
                    self.string(item, &format!("each entry of {key}"))
                        .map(|s| (s, item.span.clone().or_else(|| node.span.clone())))
                })
                .collect(),
            other => {
                self.problem(
                    &node.span,
                    format!(
                        "{key} must be a string or an array of strings, found {}",
                        other.describe()
                    ),
                );
                Vec::new()
            }
        }
    }
}

/// The keys of one table, marked off as they are taken.
pub(crate) struct Fields<'n> {
    entries: &'n [(Key, Node)],
    used: Vec<bool>,
    pub span: Option<Range<usize>>,
}

impl<'n> Fields<'n> {
    pub fn take(&mut self, name: &str) -> Option<&'n Node> {
        let at = self.entries.iter().position(|(k, _)| k.name == name)?;
        self.used[at] = true;
        Some(&self.entries[at].1)
    }

    pub fn entries(&self) -> &'n [(Key, Node)] {
        self.entries
    }

    /// Reports every key nobody took. `what` names the table in the message.
    pub fn finish(self, ctx: &mut Ctx, what: &str, unknown: Unknown, known: &str) {
        for ((key, node), used) in self.entries.iter().zip(self.used) {
            if used {
                continue;
            }
            let span = key.span.clone().or_else(|| node.span.clone());
            match unknown {
                Unknown::Error => ctx.problem(
                    &span,
                    format!("unknown key {:?} in {what} (known: {known})", key.name),
                ),
                Unknown::Warn => ctx.warning(
                    &span,
                    format!("unknown key {:?} in {what} ignored", key.name),
                ),
            }
        }
    }
}
