//! containers-registries.d(5): where signatures of docker images are looked up (a
//! `lookaside` URL) and whether sigstore attachments are used, per docker scope, merged
//! from every `*.yaml` file of a directory as containers/image's `docker/registries_d.go`
//! merges them: a scope, or `default-docker`, defined in two files rejects the directory.
//!
//! Stricter than containers/image in one place, on purpose: it ignores unknown keys
//! (`yaml.Unmarshal`), so `lookside:` would silently disable signature lookup; here an
//! unknown key, like a duplicate one, rejects the file with its line. Anchors, aliases,
//! tags and multi-document files are refused too: none has a use in this format.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::scope::{validate_docker_scope, ImageRef};
use crate::toml_check::Problem;

/// The scope [`RegistriesD::lookaside_for`] and [`RegistriesD::use_sigstore_attachments_for`]
/// report when `default-docker` decided.
pub const DEFAULT_DOCKER: &str = "default-docker";

/// One `default-docker` or `docker:` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub lookaside: Option<String>,
    /// For writing signatures; accepted, never used by a proxy that only reads.
    pub lookaside_staging: Option<String>,
    /// The old name of `lookaside`, used when `lookaside` is absent (as containers/image).
    pub sigstore: Option<String>,
    /// The old name of `lookaside-staging`.
    pub sigstore_staging: Option<String>,
    pub use_sigstore_attachments: Option<bool>,
    /// Where it was defined, for messages.
    pub file: String,
    pub line: usize,
}

impl Namespace {
    /// The URL signatures are read from: `lookaside`, else its old name `sigstore`.
    pub fn read_url(&self) -> Option<&str> {
        self.lookaside.as_deref().or(self.sigstore.as_deref())
    }
}

/// A parsed registries.d directory (or one file of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesD {
    pub default_docker: Option<Namespace>,
    pub docker: BTreeMap<String, Namespace>,
}

impl RegistriesD {
    /// The lookaside URL for `image` and the scope it came from. As containers/image's
    /// `signatureTopLevel`: the most specific scope *that sets a URL* wins, so a more
    /// specific entry holding only `use-sigstore-attachments` does not hide a parent's URL.
    pub fn lookaside_for(&self, image: &ImageRef) -> Option<(&str, &str)> {
        self.first(image, Namespace::read_url)
    }

    /// Whether sigstore attachments are used for `image`, and the scope that said so; the
    /// most specific scope that sets the key wins, and the default is false.
    pub fn use_sigstore_attachments_for(&self, image: &ImageRef) -> (Option<&str>, bool) {
        match self.first(image, |ns| ns.use_sigstore_attachments) {
            Some((scope, value)) => (Some(scope), value),
            None => (None, false),
        }
    }

    fn first<'a, T>(
        &'a self,
        image: &ImageRef,
        get: impl Fn(&'a Namespace) -> Option<T>,
    ) -> Option<(&'a str, T)> {
        image
            .scope_candidates()
            .iter()
            .find_map(|c| {
                let (scope, ns) = self.docker.get_key_value(c.as_str())?;
                get(ns).map(|v| (scope.as_str(), v))
            })
            .or_else(|| {
                self.default_docker
                    .as_ref()
                    .and_then(|ns| get(ns).map(|v| (DEFAULT_DOCKER, v)))
            })
    }

    /// Adds one file's entries; a scope or `default-docker` already defined is an error
    /// naming both files, as containers/image reports it.
    pub(crate) fn merge(&mut self, other: RegistriesD) -> Result<(), Problem> {
        if let Some(ns) = other.default_docker {
            if let Some(first) = &self.default_docker {
                return Err(duplicate(&ns, "\"default-docker\"", first));
            }
            self.default_docker = Some(ns);
        }
        for (scope, ns) in other.docker {
            if let Some(first) = self.docker.get(&scope) {
                return Err(duplicate(
                    &ns,
                    &format!("\"docker\" namespace {scope:?}"),
                    first,
                ));
            }
            self.docker.insert(scope, ns);
        }
        Ok(())
    }
}

fn duplicate(ns: &Namespace, what: &str, first: &Namespace) -> Problem {
    Problem {
        file: ns.file.clone(),
        line: Some(ns.line),
        key: String::new(),
        message: format!(
            "{what} defined both in {:?} (line {}) and here",
            first.file, first.line
        ),
    }
}

/// Reads every `*.yaml` file of `dir`, in name order so that errors are reproducible. A
/// missing directory is an empty configuration, as in containers/image.
pub fn load_dir(dir: &Path) -> Result<RegistriesD, Problem> {
    let whole = |message: String| Problem {
        file: dir.display().to_string(),
        line: None,
        key: String::new(),
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistriesD::default()),
        Err(e) => return Err(whole(format!("cannot read directory: {e}"))),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| whole(format!("cannot read directory: {e}")))?;
        if entry.file_name().to_string_lossy().ends_with(".yaml") {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut merged = RegistriesD::default();
    for path in paths {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| Problem {
            file: file.clone(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        merged.merge(parse(&file, &text)?)?;
    }
    Ok(merged)
}

/// Parses one registries.d file; `file` names it in problems and in each [`Namespace`].
pub fn parse(file: &str, text: &str) -> Result<RegistriesD, Problem> {
    let problem = |line: usize, key: &str, message: String| Problem {
        file: file.to_owned(),
        line: Some(line),
        key: key.to_owned(),
        message,
    };
    let root = match read_tree(text) {
        Ok(root) => root,
        Err((line, message)) => return Err(problem(line, "", message)),
    };
    let mut out = RegistriesD::default();
    let Some(root) = root else {
        return Ok(out);
    };
    let members = match &root.kind {
        Kind::Map(members) => members,
        Kind::Null => return Ok(out),
        other => {
            return Err(problem(
                root.line,
                "",
                format!("expected a mapping, got {}", other.describe()),
            ))
        }
    };
    for (key, line, value) in members {
        match key.as_str() {
            "default-docker" => {
                out.default_docker = namespace(file, "default-docker", *line, value)?;
            }
            "docker" => match &value.kind {
                Kind::Null => {}
                Kind::Map(scopes) => {
                    for (scope, line, value) in scopes {
                        validate_docker_scope(scope).map_err(|m| problem(*line, "docker", m))?;
                        let path = format!("docker.{scope:?}");
                        if let Some(ns) = namespace(file, &path, *line, value)? {
                            out.docker.insert(scope.clone(), ns);
                        }
                    }
                }
                other => {
                    return Err(problem(
                        value.line,
                        "docker",
                        format!("expected a mapping of scopes, got {}", other.describe()),
                    ))
                }
            },
            other => return Err(problem(*line, "", format!("unknown key {other:?}"))),
        }
    }
    Ok(out)
}

/// One entry. As in containers/image, a null `default-docker` is no entry (a nil pointer)
/// and a null scope is an empty one that still counts as defined.
fn namespace(
    file: &str,
    path: &str,
    line: usize,
    node: &Node,
) -> Result<Option<Namespace>, Problem> {
    let problem = |line: usize, key: String, message: String| Problem {
        file: file.to_owned(),
        line: Some(line),
        key,
        message,
    };
    let empty = Vec::new();
    let members = match &node.kind {
        Kind::Null if path == "default-docker" => return Ok(None),
        Kind::Null => &empty,
        Kind::Map(members) => members,
        other => {
            return Err(problem(
                node.line,
                path.to_owned(),
                format!("expected a mapping, got {}", other.describe()),
            ))
        }
    };
    let mut ns = Namespace {
        file: file.to_owned(),
        line,
        ..Namespace::default()
    };
    for (key, line, value) in members {
        let key_path = format!("{path}.{key}");
        if key == "use-sigstore-attachments" {
            ns.use_sigstore_attachments = Some(match &value.kind {
                Kind::Scalar(s, ScalarStyle::Plain) => match s.as_str() {
                    "true" | "True" | "TRUE" => true,
                    "false" | "False" | "FALSE" => false,
                    _ => {
                        return Err(problem(
                            value.line,
                            key_path,
                            format!("expected true or false, got {s:?}"),
                        ))
                    }
                },
                other => {
                    return Err(problem(
                        value.line,
                        key_path,
                        format!("expected true or false, got {}", other.describe()),
                    ))
                }
            });
            continue;
        }
        let slot = match key.as_str() {
            "lookaside" => &mut ns.lookaside,
            "lookaside-staging" => &mut ns.lookaside_staging,
            "sigstore" => &mut ns.sigstore,
            "sigstore-staging" => &mut ns.sigstore_staging,
            other => {
                return Err(problem(
                    *line,
                    path.to_owned(),
                    format!("unknown key {other:?}"),
                ));
            }
        };
        let Kind::Scalar(url, _) = &value.kind else {
            return Err(problem(
                value.line,
                key_path,
                format!("expected a URL, got {}", value.kind.describe()),
            ));
        };
        check_url(url).map_err(|m| problem(value.line, key_path.clone(), m))?;
        // containers/image treats "" as not set.
        *slot = (!url.is_empty()).then(|| url.clone());
    }
    Ok(Some(ns))
}

/// containers/image only parses the URL when it is used, and then reads file, http and
/// https ones; anything else is refused here, at load, rather than on the first pull.
fn check_url(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let url = url::Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    match url.scheme() {
        "file" | "http" | "https" => Ok(()),
        other => Err(format!(
            "unsupported URL scheme {other:?} in {s:?} (expected file, http or https)"
        )),
    }
}

/// A YAML node as this format needs it.
#[derive(Debug)]
struct Node {
    line: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Null,
    Scalar(String, ScalarStyle),
    Seq,
    /// Key, key line, value, in document order.
    Map(Vec<(String, usize, Node)>),
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Scalar(..) => "a scalar",
            Kind::Seq => "a sequence",
            Kind::Map(_) => "a mapping",
        }
    }
}

type YamlResult<T> = Result<T, (usize, String)>;

/// Reads the one document of `text` into a tree, refusing duplicate keys with yaml.v3's
/// message. None for an empty stream.
fn read_tree(text: &str) -> YamlResult<Option<Node>> {
    let mut events = Events {
        parser: Parser::new_from_str(text),
    };
    let (first, _) = events.next()?;
    if first != Event::StreamStart {
        return Err((1, "expected the start of a YAML stream".into()));
    }
    let (event, span) = events.next()?;
    let root = match event {
        Event::StreamEnd => return Ok(None),
        Event::DocumentStart(_) => {
            let (event, span) = events.next()?;
            node(&mut events, event, span, 0)?
        }
        _ => return Err((line(&span), "expected a YAML document".into())),
    };
    let (event, span) = events.next()?;
    if event != Event::DocumentEnd {
        return Err((line(&span), "expected the end of the document".into()));
    }
    match events.next()? {
        (Event::StreamEnd, _) => Ok(Some(root)),
        (_, span) => Err((line(&span), "only one YAML document is allowed".into())),
    }
}

struct Events<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
}

impl<'a> Events<'a> {
    fn next(&mut self) -> YamlResult<(Event<'a>, Span)> {
        match self.parser.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => Err((e.marker().line(), e.info().to_owned())),
            None => Err((0, "unexpected end of YAML".into())),
        }
    }
}

fn line(span: &Span) -> usize {
    span.start.line()
}

const MAX_DEPTH: usize = 32;

fn node<'a>(
    events: &mut Events<'a>,
    event: Event<'a>,
    span: Span,
    depth: usize,
) -> YamlResult<Node> {
    let at = line(&span);
    if depth > MAX_DEPTH {
        return Err((at, "YAML nested too deeply".into()));
    }
    let refuse = |what: &str| Err((at, format!("{what} are not allowed in registries.d files")));
    let kind = match event {
        Event::Alias(_) => return refuse("aliases"),
        Event::Scalar(_, _, anchor, _)
        | Event::SequenceStart(anchor, _)
        | Event::MappingStart(anchor, _)
            if anchor != 0 =>
        {
            return refuse("anchors")
        }
        Event::Scalar(_, _, _, Some(_))
        | Event::SequenceStart(_, Some(_))
        | Event::MappingStart(_, Some(_)) => return refuse("tags"),
        Event::Scalar(value, style, _, None) => scalar(value, style),
        Event::SequenceStart(..) => {
            loop {
                let (event, span) = events.next()?;
                if event == Event::SequenceEnd {
                    break;
                }
                node(events, event, span, depth + 1)?;
            }
            Kind::Seq
        }
        Event::MappingStart(..) => {
            let mut members: Vec<(String, usize, Node)> = Vec::new();
            loop {
                let (event, span) = events.next()?;
                if event == Event::MappingEnd {
                    break;
                }
                let key_line = line(&span);
                let key = match node(events, event, span, depth + 1)? {
                    Node {
                        kind: Kind::Scalar(key, _),
                        ..
                    } => key,
                    other => {
                        return Err((
                            key_line,
                            format!(
                                "mapping keys must be scalars, got {}",
                                other.kind.describe()
                            ),
                        ))
                    }
                };
                if let Some((_, first, _)) = members.iter().find(|(k, _, _)| *k == key) {
                    return Err((
                        key_line,
                        format!("mapping key {key:?} already defined at line {first}"),
                    ));
                }
                let (event, span) = events.next()?;
                let value = node(events, event, span, depth + 1)?;
                members.push((key, key_line, value));
            }
            Kind::Map(members)
        }
        _ => return Err((at, "unexpected YAML event".into())),
    };
    Ok(Node { line: at, kind })
}

/// A plain `~`, `null` or nothing is YAML's null; anything quoted is a string.
fn scalar(value: Cow<'_, str>, style: ScalarStyle) -> Kind {
    if style == ScalarStyle::Plain && matches!(&*value, "" | "~" | "null" | "Null" | "NULL") {
        Kind::Null
    } else {
        Kind::Scalar(value.into_owned(), style)
    }
}

#[cfg(test)]
mod tests;
