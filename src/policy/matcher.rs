//! Matchers for one criterion each (registry, repository, tag), glob-to-regex translation, and
//! the specificity every matcher contributes to a rule.
//!
//! Regexes and globs run on ASCII bytes with Unicode off: repository names and tags are ASCII
//! by grammar, and without Unicode classes a glob's `[^/]` is one byte range instead of a
//! UTF-8 automaton, which keeps sets of thousands of patterns small.

use std::fmt;

use crate::reference::{is_valid_registry_host, normalize_registry, Name, Repository, DOCKER_HUB};

/// What a rule's `registry` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegistryMatcher {
    /// No `registry` key, or `registry = "all"`.
    Any,
    /// `registry = "public"`: the policy's public registries.
    Public,
    /// `registry = "*.example.com"`, stored as ".example.com": subdomains only, any port.
    Wildcard(String),
    /// One normalised host, port included.
    Host(String),
}

impl RegistryMatcher {
    pub fn parse(s: &str) -> Result<RegistryMatcher, String> {
        match s {
            "all" => Ok(RegistryMatcher::Any),
            "public" => Ok(RegistryMatcher::Public),
            _ => {
                if let Some(domain) = s.strip_prefix("*.") {
                    if domain.contains(':') || !is_valid_registry_host(domain) {
                        return Err(format!(
                            "{s:?} is not a wildcard host: write \"*.example.com\" (no port, no path)"
                        ));
                    }
                    return Ok(RegistryMatcher::Wildcard(format!(
                        ".{}",
                        domain.to_ascii_lowercase()
                    )));
                }
                if s.contains('/') {
                    return Err(format!(
                        "{s:?} is not a registry host; put the path in `repository`"
                    ));
                }
                if !is_valid_registry_host(s) {
                    return Err(format!(
                        "{s:?} is not a registry host, \"*.domain\", \"public\" or \"all\""
                    ));
                }
                Ok(RegistryMatcher::Host(normalize_registry(s)))
            }
        }
    }

    pub fn matches(&self, host: &str, is_public: bool) -> bool {
        match self {
            RegistryMatcher::Any => true,
            RegistryMatcher::Public => is_public,
            RegistryMatcher::Wildcard(suffix) => {
                let name = host_without_port(host);
                name.len() > suffix.len() && name.ends_with(suffix.as_str())
            }
            RegistryMatcher::Host(h) => h == host,
        }
    }

    pub fn specificity(&self) -> RegistrySpecificity {
        match self {
            RegistryMatcher::Any => RegistrySpecificity::Any,
            RegistryMatcher::Public => RegistrySpecificity::Public,
            RegistryMatcher::Wildcard(suffix) => RegistrySpecificity::Wildcard(len16(suffix)),
            RegistryMatcher::Host(_) => RegistrySpecificity::Host,
        }
    }
}

pub(crate) fn host_without_port(host: &str) -> &str {
    host.split_once(':').map_or(host, |(name, _)| name)
}

fn len16(s: &str) -> u16 {
    u16::try_from(s.len()).unwrap_or(u16::MAX)
}

/// A repository (or, for `[[private]]` names, an image name) pattern as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepoPattern {
    /// `team/app`: exactly that repository.
    Exact(String),
    /// `team/`: every repository under it, at any depth.
    Prefix(String),
    /// `team/*-internal`, translated to an anchored regex.
    Glob {
        source: String,
        regex: String,
        literal: u16,
    },
    /// `regex:^team/.*$`, as written after `regex:`.
    Regex { regex: String, literal: u16 },
}

/// Which names a pattern may use: `[[rule]] repository` takes repository paths only;
/// `[[private]] name` also takes fully qualified names (`corp.example.com:5000/team/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Names {
    Repository,
    Qualified,
}

impl RepoPattern {
    pub fn parse(s: &str, names: Names) -> Result<RepoPattern, String> {
        if let Some(regex) = s.strip_prefix("regex:") {
            if regex.is_empty() {
                return Err("empty regex".into());
            }
            return Ok(RepoPattern::Regex {
                regex: regex.to_owned(),
                literal: regex_literal_len(regex),
            });
        }
        if s.contains(['*', '?', '[']) {
            let (regex, literal) = glob_to_regex(s, names)?;
            return Ok(RepoPattern::Glob {
                source: s.to_owned(),
                regex,
                literal,
            });
        }
        let (path, prefix) = match s.strip_suffix('/') {
            Some(path) => (path, true),
            None => (s, false),
        };
        let valid = match names {
            Names::Repository => Repository::parse(path).map(|_| ()),
            Names::Qualified => Name::parse(path).map(|_| ()),
        };
        valid
            .map_err(|e| format!("{e} (a pattern is a name, `prefix/`, a glob or `regex:...`)"))?;
        Ok(if prefix {
            RepoPattern::Prefix(s.to_owned())
        } else {
            RepoPattern::Exact(s.to_owned())
        })
    }

    /// Docker Hub's official images live under `library/`: `alpine` on docker.io means
    /// `library/alpine`, as docker itself normalises it.
    pub fn for_registry(self, registry: &RegistryMatcher) -> RepoPattern {
        match self {
            RepoPattern::Exact(name)
                if *registry == RegistryMatcher::Host(DOCKER_HUB.into()) && !name.contains('/') =>
            {
                RepoPattern::Exact(format!("library/{name}"))
            }
            other => other,
        }
    }

    /// The regex a set compiles for this pattern, if it needs one.
    pub fn regex(&self) -> Option<&str> {
        match self {
            RepoPattern::Glob { regex, .. } | RepoPattern::Regex { regex, .. } => Some(regex),
            RepoPattern::Exact(_) | RepoPattern::Prefix(_) => None,
        }
    }

    /// The literal first path component every match starts with, if there is one: patterns
    /// are grouped by it so that a lookup runs only the regexes that can match at all.
    pub fn first_component(&self) -> Option<&str> {
        match self {
            RepoPattern::Glob { source, .. } => {
                let literal = &source[..source.find(['*', '?', '[']).unwrap_or(source.len())];
                literal.split_once('/').map(|(first, _)| first)
            }
            RepoPattern::Regex { regex, .. } => regex_first_component(regex),
            RepoPattern::Exact(_) | RepoPattern::Prefix(_) => None,
        }
    }

    pub fn specificity(&self) -> RepoSpecificity {
        match self {
            RepoPattern::Exact(_) => RepoSpecificity::Exact,
            RepoPattern::Prefix(p) => RepoSpecificity::Pattern {
                literal: len16(p),
                kind: PatternKind::Prefix,
            },
            RepoPattern::Glob { literal, .. } => RepoSpecificity::Pattern {
                literal: *literal,
                kind: PatternKind::Glob,
            },
            RepoPattern::Regex { literal, .. } => RepoSpecificity::Pattern {
                literal: *literal,
                kind: PatternKind::Regex,
            },
        }
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoPattern::Exact(s) | RepoPattern::Prefix(s) => f.write_str(s),
            RepoPattern::Glob { source, .. } => f.write_str(source),
            RepoPattern::Regex { regex, .. } => write!(f, "regex:{regex}"),
        }
    }
}

/// Does `name` equal `exact`, or lie under `prefix` (which ends with '/')?
pub(crate) fn plain_match(pattern: &RepoPattern, name: &str) -> Option<bool> {
    match pattern {
        RepoPattern::Exact(exact) => Some(exact == name),
        RepoPattern::Prefix(prefix) => Some(name.starts_with(prefix.as_str())),
        RepoPattern::Glob { .. } | RepoPattern::Regex { .. } => None,
    }
}

/// Glob grammar: `*` is any run inside one path component, `**` any run across components,
/// `?` one character other than '/', `[a-z0-9]` and `[!abc]` a class; everything else is
/// literal and must be a character names can contain, or the pattern could never match.
fn glob_to_regex(glob: &str, names: Names) -> Result<(String, u16), String> {
    let allowed = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, '.' | '_' | '-' | '/')
            || (names == Names::Qualified && c == ':')
    };
    let mut regex = String::from("^");
    let mut literal = 0u16;
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    if chars.peek() == Some(&'*') {
                        return Err(format!("{glob:?}: write `*` or `**`, not `***`"));
                    }
                    regex.push_str(".*");
                } else {
                    regex.push_str("[^/]*");
                }
            }
            '?' => regex.push_str("[^/]"),
            '[' => {
                regex.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    regex.push('^');
                }
                let mut members = 0;
                loop {
                    match chars.next() {
                        None => return Err(format!("{glob:?}: unclosed `[`")),
                        Some(']') if members > 0 => break,
                        Some(']') => return Err(format!("{glob:?}: empty `[]` class")),
                        Some('-') if members > 0 && chars.peek().is_some_and(|&n| n != ']') => {
                            regex.push('-')
                        }
                        Some(m) if allowed(m) && m != '/' => {
                            members += 1;
                            // Escaped so that `-` and `.` stay literal and `--` is never a
                            // set operation.
                            regex.push_str(&regex::escape(&m.to_string()));
                        }
                        Some(m) => {
                            return Err(format!(
                                "{glob:?}: {m:?} cannot appear in a name, so this class could never match it"
                            ))
                        }
                    }
                }
                regex.push(']');
            }
            c if allowed(c) => {
                literal = literal.saturating_add(1);
                regex.push_str(&regex::escape(&c.to_string()));
            }
            c => {
                return Err(format!(
                    "{glob:?}: {c:?} cannot appear in a name (lowercase letters, digits, '.', '_', '-', '/'), so this pattern could never match"
                ))
            }
        }
    }
    regex.push('$');
    Ok((regex, literal))
}

/// How much literal text a regex pins, for specificity: its name characters (lowercase
/// letters, digits, '/', '_', '-'); metacharacters, including '.', do not count.
fn regex_literal_len(regex: &str) -> u16 {
    let n = regex
        .bytes()
        .filter(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'/' | b'_' | b'-'))
        .count();
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// `^team/...` with no alternation anywhere starts with the literal component `team`.
/// Anything less certain (a flag group, an escape other than `\.`, a quantifier after the
/// '/') returns None and the regex goes to the group every lookup runs.
fn regex_first_component(regex: &str) -> Option<&str> {
    let rest = regex.strip_prefix('^')?;
    if regex.contains('|') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => i += 1,
            b'/' if i > 0 => {
                let quantified = matches!(bytes.get(i + 1), Some(b'?' | b'*' | b'+' | b'{'));
                // `\.` would need unescaping to be a lookup key; keep it simple.
                return (!quantified).then_some(&rest[..i]);
            }
            _ => return None,
        }
    }
    None
}

/// How specific a rule is. Compared field by field, in declaration order: a digest beats a
/// tag, a tag beats any repository criterion, an exact repository beats any pattern, a longer
/// pattern beats a shorter one (prefix, then glob, then regex on equal length), and only then
/// does the registry count (host, then the longer wildcard, then `public`, then any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    pub digest: bool,
    pub tag: bool,
    pub repository: RepoSpecificity,
    pub registry: RegistrySpecificity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepoSpecificity {
    None,
    /// `literal` is compared first, then the kind.
    Pattern {
        literal: u16,
        kind: PatternKind,
    },
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PatternKind {
    Regex,
    Glob,
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegistrySpecificity {
    Any,
    Public,
    /// The length of the wildcard's domain: `*.corp.example.com` beats `*.example.com`.
    Wildcard(u16),
    Host,
}

impl fmt::Display for Specificity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.digest {
            parts.push("digest".into());
        }
        if self.tag {
            parts.push("tag".into());
        }
        match self.repository {
            RepoSpecificity::None => {}
            RepoSpecificity::Exact => parts.push("exact repository".into()),
            RepoSpecificity::Pattern { literal, kind } => {
                let kind = match kind {
                    PatternKind::Prefix => "prefix",
                    PatternKind::Glob => "glob",
                    PatternKind::Regex => "regex",
                };
                parts.push(format!("repository {kind} ({literal} literal chars)"));
            }
        }
        parts.push(match self.registry {
            RegistrySpecificity::Any => "any registry".into(),
            RegistrySpecificity::Public => "public registries".into(),
            RegistrySpecificity::Wildcard(n) => format!("registry wildcard ({n} chars)"),
            RegistrySpecificity::Host => "registry host".into(),
        });
        f.write_str(&parts.join(" + "))
    }
}

/// Compile one regex the way the sets compile it, for a precise error message.
pub(crate) fn check_regex(pattern: &str) -> Result<(), String> {
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .build()
        .map(|_| ())
        .map_err(|e| regex_error(&e))
}

/// regex's errors are several lines with a caret; a problem is one line, so keep the reason.
pub(crate) fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| text.replace('\n', " "))
}

/// A set of regexes compiled once, answering which of them match.
#[derive(Debug, Clone)]
pub(crate) struct PatternSet {
    set: regex::bytes::RegexSet,
    /// Set index -> caller's pattern id.
    ids: Vec<u32>,
}

impl PatternSet {
    /// On failure, every pattern that does not compile on its own comes back with its reason;
    /// if all compile alone, the set was too big and the error says so.
    pub fn build(patterns: &[(&str, u32)]) -> Result<PatternSet, Vec<(u32, String)>> {
        let set = regex::bytes::RegexSetBuilder::new(patterns.iter().map(|(p, _)| *p))
            .unicode(false)
            .size_limit(64 << 20)
            .dfa_size_limit(8 << 20)
            .build();
        match set {
            Ok(set) => Ok(PatternSet {
                set,
                ids: patterns.iter().map(|(_, id)| *id).collect(),
            }),
            Err(set_error) => {
                let bad: Vec<(u32, String)> = patterns
                    .iter()
                    .filter_map(|(p, id)| check_regex(p).err().map(|e| (*id, e)))
                    .collect();
                if bad.is_empty() {
                    let id = patterns.first().map_or(0, |(_, id)| *id);
                    Err(vec![(id, regex_error(&set_error))])
                } else {
                    Err(bad)
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Pushes the id of every pattern that matches `haystack`.
    pub fn matches_into(&self, haystack: &str, out: &mut Vec<u32>) {
        if self.ids.len() == 1 {
            if self.set.is_match(haystack.as_bytes()) {
                out.push(self.ids[0]);
            }
            return;
        }
        for i in self.set.matches(haystack.as_bytes()).iter() {
            out.push(self.ids[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> PatternSet {
        let with_ids: Vec<(&str, u32)> = patterns.iter().copied().zip(0..).collect();
        PatternSet::build(&with_ids).unwrap()
    }

    fn hits(set: &PatternSet, s: &str) -> Vec<u32> {
        let mut out = Vec::new();
        set.matches_into(s, &mut out);
        out
    }

    #[test]
    fn registry_matchers() {
        let m = |s: &str| RegistryMatcher::parse(s).unwrap();
        assert_eq!(m("all"), RegistryMatcher::Any);
        assert_eq!(m("public"), RegistryMatcher::Public);
        assert_eq!(
            m("Index.Docker.io"),
            RegistryMatcher::Host("docker.io".into())
        );
        assert_eq!(
            m("localhost:5000"),
            RegistryMatcher::Host("localhost:5000".into())
        );
        let wild = m("*.Example.com");
        assert!(wild.matches("a.example.com", false));
        assert!(wild.matches("a.b.example.com:5000", false));
        assert!(!wild.matches("example.com", false));
        assert!(!wild.matches("badexample.com", false));
        assert!(m("public").matches("docker.io", true));
        assert!(!m("public").matches("corp.example.com", false));
        assert!(
            m("quay.io").matches("quay.io", false) && !m("quay.io").matches("quay.io:443", false)
        );
        for bad in ["quay.io/x", "*.x.com:5000", "*.", "a b", "", "*example.com"] {
            assert!(RegistryMatcher::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_patterns() {
        let p = |s: &str| RepoPattern::parse(s, Names::Repository).unwrap();
        assert_eq!(p("team/app"), RepoPattern::Exact("team/app".into()));
        assert_eq!(p("team/"), RepoPattern::Prefix("team/".into()));
        assert_eq!(plain_match(&p("team/"), "team/a/b"), Some(true));
        assert_eq!(plain_match(&p("team/"), "team"), Some(false));
        assert_eq!(plain_match(&p("team/"), "teams/a"), Some(false));
        assert_eq!(plain_match(&p("team/app"), "team/app/x"), Some(false));
        assert_eq!(
            p("alpine").for_registry(&RegistryMatcher::Host("docker.io".into())),
            RepoPattern::Exact("library/alpine".into())
        );
        assert_eq!(
            p("alpine").for_registry(&RegistryMatcher::Public),
            RepoPattern::Exact("alpine".into())
        );
        for bad in ["Team/app", "team//x", "", "/", "team/app:tag", "a@b"] {
            assert!(RepoPattern::parse(bad, Names::Repository).is_err(), "{bad}");
        }
        assert!(RepoPattern::parse("corp.example.com:5000/team/", Names::Qualified).is_ok());
        assert!(RepoPattern::parse("corp.example.com:5000/t*", Names::Qualified).is_ok());
        assert!(RepoPattern::parse("corp.example.com:5000/t*", Names::Repository).is_err());
    }

    #[test]
    fn globs() {
        let g = |s: &str| match RepoPattern::parse(s, Names::Repository).unwrap() {
            RepoPattern::Glob { regex, .. } => set(&[&regex]),
            other => panic!("{other:?}"),
        };
        let star = g("team/*-internal");
        assert_eq!(hits(&star, "team/app-internal"), vec![0]);
        assert!(hits(&star, "team/sub/app-internal").is_empty());
        assert!(hits(&star, "xteam/app-internal").is_empty());
        assert!(hits(&star, "team/app-internal-x").is_empty());
        let deep = g("team/**-internal");
        assert_eq!(hits(&deep, "team/sub/app-internal"), vec![0]);
        let q = g("app?");
        assert_eq!(hits(&q, "app1"), vec![0]);
        assert!(hits(&q, "app/").is_empty());
        let class = g("v[0-9]/[!x.]*");
        assert_eq!(hits(&class, "v1/abc"), vec![0]);
        assert!(hits(&class, "v1/xbc").is_empty() && hits(&class, "v1/.x").is_empty());
        let dash = g("a[-.]b*");
        assert_eq!(hits(&dash, "a-b"), vec![0]);
        assert_eq!(hits(&dash, "a.bc"), vec![0]);
        assert!(hits(&dash, "axb").is_empty());
        for bad in [
            "team/[", "team/[]", "Team/*", "a/***", "a/[A]", "a/[/]", "a b*",
        ] {
            assert!(RepoPattern::parse(bad, Names::Repository).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_components() {
        let first = |s: &str| {
            RepoPattern::parse(s, Names::Repository)
                .unwrap()
                .first_component()
                .map(str::to_owned)
        };
        assert_eq!(first("team/*-x").as_deref(), Some("team"));
        assert_eq!(first("team*/x"), None);
        assert_eq!(first("*/x"), None);
        assert_eq!(first("regex:^team/[a-z]+$").as_deref(), Some("team"));
        assert_eq!(first("regex:^team-1_2/x").as_deref(), Some("team-1_2"));
        assert_eq!(first("regex:team/x"), None); // unanchored: may match anywhere
        assert_eq!(first("regex:^team/x|^other/y"), None);
        assert_eq!(first("regex:^teams?/x"), None);
        assert_eq!(first("regex:^team/?x"), None);
        assert_eq!(first("regex:^(?i)team/x"), None);
        assert_eq!(first("regex:^/x"), None);
        assert_eq!(first("team/"), None);
    }

    #[test]
    fn specificity_order() {
        let spec = |digest, tag, repository, registry| Specificity {
            digest,
            tag,
            repository,
            registry,
        };
        let exact = RepoSpecificity::Exact;
        let pattern = |literal, kind| RepoSpecificity::Pattern { literal, kind };
        let host = RegistrySpecificity::Host;
        let any = RegistrySpecificity::Any;
        let ladder = [
            spec(false, false, RepoSpecificity::None, any),
            spec(
                false,
                false,
                RepoSpecificity::None,
                RegistrySpecificity::Public,
            ),
            spec(
                false,
                false,
                RepoSpecificity::None,
                RegistrySpecificity::Wildcard(4),
            ),
            spec(
                false,
                false,
                RepoSpecificity::None,
                RegistrySpecificity::Wildcard(12),
            ),
            spec(false, false, RepoSpecificity::None, host),
            spec(false, false, pattern(5, PatternKind::Regex), any),
            spec(false, false, pattern(5, PatternKind::Glob), any),
            spec(false, false, pattern(5, PatternKind::Prefix), any),
            spec(false, false, pattern(5, PatternKind::Prefix), host),
            spec(false, false, pattern(6, PatternKind::Regex), any),
            spec(false, false, exact, any),
            spec(false, false, exact, host),
            spec(false, true, RepoSpecificity::None, any),
            spec(false, true, exact, host),
            spec(true, false, RepoSpecificity::None, any),
            spec(true, true, exact, host),
        ];
        for pair in ladder.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(
            ladder[15].to_string(),
            "digest + tag + exact repository + registry host"
        );
    }

    #[test]
    fn regex_errors_are_one_line() {
        let e = check_regex("^[a-z").unwrap_err();
        assert!(!e.contains('\n') && e.contains("unclosed"), "{e}");
        let with_ids = [("^ok$", 7), ("(", 8), ("^fine", 9)];
        let bad = PatternSet::build(&with_ids).unwrap_err();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 8);
    }

    #[test]
    fn regex_literal_length() {
        assert_eq!(regex_literal_len("^team/.*$"), 5);
        assert_eq!(regex_literal_len("^a\\.b$"), 2);
    }
}
