//! A compiled `[[rule]]` and the check of all its criteria against one subject.

use std::fmt;
use std::sync::Arc;

use super::matcher::{plain_match, RegistryMatcher, RepoPattern, Specificity};
use super::{Action, Operations, Origin, Subject};

#[derive(Debug)]
pub(crate) struct Rule {
    pub id: Arc<str>,
    pub message: String,
    pub action: Action,
    pub ops: Operations,
    pub registry: RegistryMatcher,
    pub repository: Option<RepoPattern>,
    /// Id of the repository regex in the index's pattern sets (globs and regexes only).
    pub repository_id: Option<u32>,
    /// Id of the tag regex in the index's tag set.
    pub tag: Option<(String, u32)>,
    /// Known-bad (or known-good) digests, sorted for binary search.
    pub digests: Box<[String]>,
    pub specificity: Specificity,
    pub origin: Origin,
    /// Set for the deny rules registries.conf `blocked = true` entries become; those match
    /// through registries.conf's longest-prefix choice, not through the criteria above.
    pub registries_conf_entry: Option<usize>,
}

/// Which regexes matched the subject, computed once per evaluation.
#[derive(Debug, Default)]
pub(crate) struct Hits {
    pub repository: Vec<u32>,
    pub tag: Vec<u32>,
}

impl Rule {
    /// All criteria AND together; an absent criterion matches anything.
    pub fn matches(&self, s: &Subject, public: bool, hits: &Hits) -> bool {
        if self.registries_conf_entry.is_some() || !self.ops.contains(s.op) {
            return false;
        }
        if !self.registry.matches(s.registry, public) {
            return false;
        }
        if let Some(pattern) = &self.repository {
            if s.repository.is_empty() {
                return false;
            }
            let hit = match plain_match(pattern, s.repository) {
                Some(hit) => hit,
                None => self
                    .repository_id
                    .is_some_and(|id| hits.repository.contains(&id)),
            };
            if !hit {
                return false;
            }
        }
        if let Some((_, id)) = &self.tag {
            if s.tag.is_none() || !hits.tag.contains(id) {
                return false;
            }
        }
        if !self.digests.is_empty() {
            let Some(digest) = s.digest else {
                return false;
            };
            if self
                .digests
                .binary_search_by(|d| d.as_str().cmp(digest))
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// The rule's criteria in one line, for `explain`.
    pub fn criteria(&self) -> Criteria<'_> {
        Criteria(self)
    }
}

pub(crate) struct Criteria<'a>(&'a Rule);

impl fmt::Display for Criteria<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let mut parts = Vec::new();
        match &r.registry {
            RegistryMatcher::Any => {}
            RegistryMatcher::Public => parts.push("registry = public".to_owned()),
            RegistryMatcher::Wildcard(suffix) => parts.push(format!("registry = *{suffix}")),
            RegistryMatcher::Host(h) => parts.push(format!("registry = {h}")),
        }
        if let Some(p) = &r.repository {
            parts.push(format!("repository = {p}"));
        }
        if let Some((t, _)) = &r.tag {
            parts.push(format!("tag = {t}"));
        }
        match r.digests.len() {
            0 => {}
            1 => parts.push(format!("digest = {}", r.digests[0])),
            n => parts.push(format!("digest in {n} listed")),
        }
        if parts.is_empty() {
            parts.push("everything".to_owned());
        }
        f.write_str(&parts.join(", "))
    }
}
