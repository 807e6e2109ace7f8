//! What a containers-registries.conf(5) says about one image: the `[[registry]]` table with
//! the longest matching prefix, and from it the `location` rewrite, the mirrors, `insecure`,
//! and the deny rule of a `blocked` table.
//!
//! Differences from containers/image, on purpose: a `blocked` prefix refuses every operation
//! (the man page only says pulls; containers/image refuses pushes through a blocked prefix
//! too, and a gatekeeper should not be laxer); `example.com` does not match
//! `example.com:5000` (containers/image documents that it does, by accident).

use std::collections::HashMap;
use std::fmt;

use super::matcher::{
    host_without_port, PatternKind, RegistrySpecificity, RepoSpecificity, Specificity,
};
use super::{Origin, Problem, Subject};
use crate::reference::{
    is_valid_registry_host, normalize_registry, Digest, Name, Reference, Repository,
};

/// `pull-from-mirror`: which pulls may use a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullFromMirror {
    #[default]
    All,
    /// Only pulls by digest: a mirror cannot serve a stale or forged tag.
    DigestOnly,
    /// Only pulls by tag.
    TagOnly,
}

impl PullFromMirror {
    pub fn allows(self, by_digest: bool) -> bool {
        match self {
            PullFromMirror::All => true,
            PullFromMirror::DigestOnly => by_digest,
            PullFromMirror::TagOnly => !by_digest,
        }
    }
}

/// One `[[registry.mirror]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port][/namespace...]`, replacing the matched prefix.
    pub location: String,
    pub insecure: bool,
    pub pull_from_mirror: PullFromMirror,
}

/// Where to pull from, in order: the mirrors that apply, then the primary location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    pub registry: String,
    pub repository: String,
    pub insecure: bool,
    pub mirror: bool,
}

/// A `prefix` or `location`, split and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prefix {
    /// As matched against `host/repository[:tag][@digest]`; `*.example.com` for wildcards.
    pub text: String,
    /// ".example.com" for `*.example.com`.
    pub wildcard: Option<String>,
    pub path: Option<String>,
    pub tag: bool,
    pub digest: bool,
}

impl Prefix {
    pub fn parse(s: &str, wildcard_ok: bool) -> Result<Prefix, String> {
        let s = s.trim_end_matches('/');
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Err(format!(
                "{s:?}: URI schemes are not supported; write host[:port][/path]"
            ));
        }
        if let Some(domain) = s.strip_prefix("*.") {
            if !wildcard_ok {
                return Err(format!("{s:?}: a wildcard is only allowed in `prefix`"));
            }
            if domain.contains(['/', ':', '@']) || !is_valid_registry_host(domain) {
                return Err(format!(
                    "{s:?}: a wildcard prefix must be \"*.example.com\" (no port, no path)"
                ));
            }
            let domain = domain.to_ascii_lowercase();
            return Ok(Prefix {
                text: format!("*.{domain}"),
                wildcard: Some(format!(".{domain}")),
                path: None,
                tag: false,
                digest: false,
            });
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d)),
            None => (s, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((host, path)) => (host, Some(path)),
            None => (rest, None),
        };
        let (path, tag) = match path.map(|p| (p, p.rfind(':'))) {
            Some((p, Some(colon))) => (Some(&p[..colon]), Some(&p[colon + 1..])),
            Some((p, None)) => (Some(p), None),
            None => (None, None),
        };
        if !is_valid_registry_host(host) {
            return Err(format!("{s:?}: {host:?} is not a registry host[:port]"));
        }
        let mut text = normalize_registry(host);
        if let Some(path) = path {
            Repository::parse(path).map_err(|e| format!("{s:?}: {e}"))?;
            text.push('/');
            text.push_str(path);
        }
        if let Some(tag) = tag {
            match Reference::parse(tag) {
                Ok(Reference::Tag(_)) if path.is_some() => {}
                _ => return Err(format!("{s:?}: {tag:?} is not a tag")),
            }
            text.push(':');
            text.push_str(tag);
        }
        if let Some(digest) = digest {
            if path.is_none() {
                return Err(format!("{s:?}: a digest needs a repository"));
            }
            digest
                .parse::<Digest>()
                .map_err(|e| format!("{s:?}: {e}"))?;
            text.push('@');
            text.push_str(digest);
        }
        Ok(Prefix {
            text,
            wildcard: None,
            path: path.map(str::to_owned),
            tag: tag.is_some(),
            digest: digest.is_some(),
        })
    }

    /// The specificity the deny rule of a `blocked = true` entry competes with: as if the
    /// path were a repository prefix (it matches the repository itself and everything under
    /// it).
    pub fn specificity(&self) -> Specificity {
        let literal = self
            .path
            .as_ref()
            .map(|p| u16::try_from(p.len() + 1).unwrap_or(u16::MAX));
        Specificity {
            digest: self.digest,
            tag: self.tag,
            repository: match literal {
                Some(literal) => RepoSpecificity::Pattern {
                    literal,
                    kind: PatternKind::Prefix,
                },
                None => RepoSpecificity::None,
            },
            registry: match &self.wildcard {
                Some(w) => {
                    RegistrySpecificity::Wildcard(u16::try_from(w.len()).unwrap_or(u16::MAX))
                }
                None => RegistrySpecificity::Host,
            },
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One `[[registry]]` table.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub prefix: Prefix,
    /// None: no rewrite.
    pub location: Option<String>,
    pub insecure: bool,
    pub blocked: bool,
    pub mirrors: Vec<Mirror>,
    pub origin: Origin,
    /// The deny rule of a blocked entry, in `Policy::rules`.
    pub rule: Option<u32>,
}

/// All `[[registry]]` tables, indexed for the longest-prefix choice.
#[derive(Debug, Default)]
pub(crate) struct Registries {
    entries: Vec<Entry>,
    by_prefix: HashMap<String, usize>,
    by_wildcard: HashMap<String, usize>,
}

impl Registries {
    pub fn new(entries: Vec<Entry>, problems: &mut Vec<Problem>) -> Registries {
        let mut by_prefix = HashMap::new();
        let mut by_wildcard = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let previous = match &e.prefix.wildcard {
                Some(w) => by_wildcard.insert(w.clone(), i),
                None => by_prefix.insert(e.prefix.text.clone(), i),
            };
            if let Some(first) = previous {
                problems.push(Problem {
                    file: e.origin.file.to_string(),
                    line: Some(e.origin.line),
                    key: String::new(),
                    message: format!(
                        "[[registry]] prefix {:?} is already configured at {}",
                        e.prefix.text, entries[first].origin
                    ),
                });
            }
        }
        Registries {
            entries,
            by_prefix,
            by_wildcard,
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The `[[registry]]` with the longest prefix matching `reference` (built by
    /// [`reference_string`]), and how many bytes of `reference` it replaces on rewrite.
    fn choose(&self, reference: &str, host: &str) -> Option<(&Entry, usize)> {
        if self.entries.is_empty() {
            return None;
        }
        let mut exact: Option<usize> = None;
        let mut ends: Vec<usize> = reference
            .char_indices()
            .skip(host.len())
            .filter(|&(_, c)| matches!(c, '/' | ':' | '@'))
            .map(|(at, _)| at)
            .collect();
        ends.push(reference.len());
        for &end in ends.iter().rev() {
            if let Some(&i) = self.by_prefix.get(&reference[..end]) {
                exact = Some(i);
                break;
            }
        }
        let name = host_without_port(host);
        let wildcard = name
            .match_indices('.')
            .find_map(|(at, _)| self.by_wildcard.get(&name[at..]).copied());
        let length = |i: usize| self.entries[i].prefix.text.len();
        let chosen = match (exact, wildcard) {
            (Some(e), Some(w)) if length(w) > length(e) || (length(w) == length(e) && w < e) => w,
            (Some(e), _) => e,
            (None, Some(w)) => w,
            (None, None) => return None,
        };
        let entry = &self.entries[chosen];
        let matched = if entry.prefix.wildcard.is_some() {
            name.len()
        } else {
            entry.prefix.text.len()
        };
        Some((entry, matched))
    }

    /// The deny rule of the chosen entry, when it is blocked.
    pub fn blocked_rule(&self, s: &Subject) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        let reference = reference_string(s.registry, s.repository, s.tag, s.digest);
        let (entry, _) = self.choose(&reference, s.registry)?;
        entry.rule.filter(|_| entry.blocked)
    }

    fn lookup(&self, registry: &str, repository: &str) -> Option<(&Entry, String, usize)> {
        if self.entries.is_empty() {
            return None;
        }
        let reference = reference_string(registry, repository, None, None);
        let (entry, matched) = self.choose(&reference, registry)?;
        Some((entry, reference, matched))
    }
}

/// `host/repository[:tag][@digest]`, the string registries.conf prefixes are matched against.
fn reference_string(
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) -> String {
    let mut s = String::with_capacity(registry.len() + repository.len() + 80);
    s.push_str(registry);
    if !repository.is_empty() {
        s.push('/');
        s.push_str(repository);
        if let Some(tag) = tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = digest {
            s.push('@');
            s.push_str(digest);
        }
    }
    s
}

/// `location` + what follows the matched prefix, parsed back into registry and repository.
fn rewritten(location: &str, reference: &str, matched: usize) -> Option<(String, String)> {
    let name = format!("{location}{}", &reference[matched..]);
    match Name::parse(&name).ok()? {
        Name::Qualified {
            registry,
            repository,
        } => Some((registry, repository.to_string())),
        Name::Short(_) => None,
    }
}

impl super::Policy {
    /// registries.conf `location` rewrite for a pull of `registry/repository`, if any. Never
    /// apply it to a push: registries.conf rewrites and mirrors are for reading only.
    pub fn rewrite(&self, registry: &str, repository: &str) -> Option<(String, String)> {
        let (entry, reference, matched) = self.registries.lookup(registry, repository)?;
        let location = entry.location.as_deref()?;
        rewritten(location, &reference, matched)
            .filter(|(r, p)| (r.as_str(), p.as_str()) != (registry, repository))
    }

    /// The mirrors registries.conf lists for `registry/repository` (pulls only), in order.
    pub fn mirrors(&self, registry: &str, repository: &str) -> &[Mirror] {
        self.registries
            .lookup(registry, repository)
            .map_or(&[], |(entry, _, _)| entry.mirrors.as_slice())
    }

    /// Whether registries.conf marks the chosen `[[registry]]` insecure.
    pub fn insecure(&self, registry: &str, repository: &str) -> bool {
        self.registries
            .lookup(registry, repository)
            .is_some_and(|(entry, _, _)| entry.insecure)
    }

    /// Everything to try for a pull, in order: each mirror that `pull-from-mirror` allows for
    /// this kind of pull, rewritten, then the primary location (rewritten or as given).
    pub fn pull_sources(
        &self,
        registry: &str,
        repository: &str,
        by_digest: bool,
    ) -> Vec<PullSource> {
        let original = PullSource {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            insecure: false,
            mirror: false,
        };
        let Some((entry, reference, matched)) = self.registries.lookup(registry, repository) else {
            return vec![original];
        };
        let mut sources: Vec<PullSource> = entry
            .mirrors
            .iter()
            .filter(|m| m.pull_from_mirror.allows(by_digest))
            .filter_map(|m| {
                rewritten(&m.location, &reference, matched).map(|(registry, repository)| {
                    PullSource {
                        registry,
                        repository,
                        insecure: m.insecure,
                        mirror: true,
                    }
                })
            })
            .collect();
        let primary = entry
            .location
            .as_deref()
            .and_then(|l| rewritten(l, &reference, matched))
            .map_or(original, |(registry, repository)| PullSource {
                registry,
                repository,
                insecure: false,
                mirror: false,
            });
        sources.push(PullSource {
            insecure: entry.insecure,
            ..primary
        });
        sources
    }
}

#[cfg(test)]
mod tests {
    use super::super::{compile, Action, Operation, Policy, ShortNameMode};
    use super::*;

    fn conf(text: &str) -> Policy {
        let (fragment, problems) = super::super::registries_conf::fragment("registries.conf", text);
        assert!(problems.is_empty(), "{problems:?}");
        compile(vec![fragment]).unwrap_or_else(|p| panic!("{p:?}"))
    }

    const MAN_PAGE: &str = r#"
unqualified-search-registries = ["example.com", "Docker.io"]
short-name-mode = "enforcing"

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"

[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
location = "blocked.example.org"
blocked = true

[[registry]]
prefix = "blocked.example.org/allowed"
location = "blocked.example.org/allowed"

[[registry]]
prefix = "*.wild.example"
blocked = true
"#;

    fn pull<'a>(registry: &'a str, repository: &'a str) -> Subject<'a> {
        Subject {
            op: Operation::Pull,
            registry,
            repository,
            tag: Some("latest"),
            digest: None,
        }
    }

    #[test]
    fn the_man_page_example() {
        let p = conf(MAN_PAGE);
        assert_eq!(
            p.search_registries(),
            Some(&["example.com".to_owned(), "docker.io".to_owned()][..])
        );
        assert_eq!(p.short_name_mode(), ShortNameMode::Enforcing);
        let (registry, repository) = &p.aliases()["fedora"];
        assert_eq!(
            (registry.as_str(), repository.as_str()),
            ("registry.fedoraproject.org", "fedora")
        );
        assert_eq!(
            p.rewrite("example.com", "foo/image"),
            Some((
                "internal-registry-for-example.com".into(),
                "bar/image".into()
            ))
        );
        assert_eq!(p.rewrite("example.com", "foobar/image"), None);
        assert_eq!(p.rewrite("quay.io", "x"), None);
        assert_eq!(p.mirrors("example.com", "foo/image").len(), 2);
        assert!(p.mirrors("example.com", "other").is_empty());
        let by_tag: Vec<String> = p
            .pull_sources("example.com", "foo/image", false)
            .iter()
            .map(|s| format!("{}/{}", s.registry, s.repository))
            .collect();
        assert_eq!(
            by_tag,
            [
                "example-mirror-0.local/mirror-for-foo/image",
                "internal-registry-for-example.com/bar/image"
            ]
        );
        let by_digest = p.pull_sources("example.com", "foo/image", true);
        assert_eq!(by_digest.len(), 3);
        assert!(by_digest[1].insecure && by_digest[1].mirror && !by_digest[2].mirror);
        assert_eq!(p.pull_sources("quay.io", "x", false).len(), 1);
    }

    #[test]
    fn blocked_prefixes_deny_by_longest_prefix() {
        let p = conf(MAN_PAGE);
        let d = p.evaluate(&pull("blocked.example.org", "x/y"));
        assert_eq!(d.action, Action::Deny);
        assert_eq!(
            d.rule_id.as_deref(),
            Some("registries.conf:blocked.example.org")
        );
        assert_eq!(
            d.message,
            "blocked.example.org is blocked by the registries.conf policy (blocked = true)"
        );
        let e = p.explain(&pull("blocked.example.org", "x/y"));
        assert_eq!(e.matches[0].origin.to_string(), "registries.conf:22");
        assert_eq!(e.matches[0].specificity.to_string(), "registry host");
        // A longer, unblocked prefix wins over the blocked host.
        assert_eq!(
            p.evaluate(&pull("blocked.example.org", "allowed")).action,
            Action::Allow
        );
        assert_eq!(
            p.evaluate(&pull("blocked.example.org", "allowed/x")).action,
            Action::Allow
        );
        assert_eq!(
            p.evaluate(&pull("blocked.example.org", "allowedx")).action,
            Action::Deny
        );
        // Wildcards: subdomains only, any port.
        assert_eq!(
            p.evaluate(&pull("a.wild.example:5000", "x")).action,
            Action::Deny
        );
        assert_eq!(p.evaluate(&pull("wild.example", "x")).action, Action::Allow);
        // Every operation, search included.
        let search = Subject {
            op: Operation::Search,
            repository: "",
            tag: None,
            ..pull("blocked.example.org", "")
        };
        assert_eq!(p.evaluate(&search).action, Action::Deny);
        assert!(p
            .rule_ids()
            .any(|id| id == "registries.conf:*.wild.example"));
    }

    #[test]
    fn prefixes_parse() {
        let p = |s: &str| Prefix::parse(s, true).map(|p| p.text);
        assert_eq!(
            p("Index.Docker.io/library/"),
            Ok("docker.io/library".into())
        );
        assert_eq!(
            p("localhost:5000/a/b:v1"),
            Ok("localhost:5000/a/b:v1".into())
        );
        assert_eq!(p("*.Example.com"), Ok("*.example.com".into()));
        let d = format!("quay.io/a@sha256:{}", "0".repeat(64));
        assert_eq!(p(&d), Ok(d.clone()));
        for bad in [
            "",
            "*.x.com/a",
            "quay.io/A",
            "a b",
            "quay.io:x",
            "quay.io@sha256:00",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(Prefix::parse("*.x.com", false).is_err());
    }
}
