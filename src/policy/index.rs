//! Finding the few rules that can match a subject without looking at the rest.
//!
//! Every rule is filed under one key, its most selective criterion: a digest, else an exact
//! repository, a repository prefix or a repository regex, else a tag regex, else its registry
//! host, wildcard, `public` or nothing. A lookup then costs one hash probe per key a subject
//! can produce (its digest, its repository, one per '/' for prefixes, one per '.' of the host
//! for wildcards) plus the regex sets. Regexes (globs are translated to regexes) are grouped by the literal
//! first path component they start with, when they have one, so that a lookup only runs the
//! set holding its own first component's group and the set of patterns that could match
//! anywhere.
//! Candidates are then checked against all their criteria by `Rule::matches`.

use std::collections::HashMap;

use super::matcher::{host_without_port, PatternSet, RegistryMatcher, RepoPattern};
use super::rule::{Hits, Rule};
use super::Subject;

/// About how many patterns share one regex set (see `Index::build`).
const PACK: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct Index {
    by_digest: HashMap<String, Vec<u32>>,
    by_exact: HashMap<String, Vec<u32>>,
    by_prefix: HashMap<String, Vec<u32>>,
    /// Repository pattern id -> rules filed under it.
    by_pattern: Vec<Vec<u32>>,
    /// Literal first path component -> the set holding its patterns.
    pattern_groups: HashMap<String, usize>,
    pattern_sets: Vec<PatternSet>,
    pattern_rest: Option<PatternSet>,
    tags: Option<PatternSet>,
    /// Tag pattern id -> rules filed under it.
    by_tag: Vec<Vec<u32>>,
    by_host: HashMap<String, Vec<u32>>,
    /// Keyed by ".example.com".
    by_wildcard: HashMap<String, Vec<u32>>,
    public: Vec<u32>,
    any: Vec<u32>,
}

/// One distinct repository regex, with the first component it is grouped under.
pub(crate) struct RepoRegex<'a> {
    pub regex: &'a str,
    pub first: Option<&'a str>,
}

/// A regex that did not compile: which field, its id, why.
#[derive(Debug)]
pub(crate) enum BadRegex {
    Repository(u32, String),
    Tag(u32, String),
}

impl Index {
    pub fn build(
        rules: &[Rule],
        repo_regexes: &[RepoRegex],
        tag_regexes: &[&str],
    ) -> Result<Index, Vec<BadRegex>> {
        let mut index = Index {
            by_pattern: vec![Vec::new(); repo_regexes.len()],
            by_tag: vec![Vec::new(); tag_regexes.len()],
            ..Index::default()
        };
        let mut bad = Vec::new();

        let mut groups: HashMap<&str, Vec<(&str, u32)>> = HashMap::new();
        let mut rest = Vec::new();
        for (id, r) in (0u32..).zip(repo_regexes) {
            match r.first {
                Some(first) => groups.entry(first).or_default().push((r.regex, id)),
                None => rest.push((r.regex, id)),
            }
        }
        // Building a regex set has a fixed cost well above that of one more pattern, so
        // groups share sets of about PACK patterns: a lookup runs one such set, whose
        // patterns all start with different literals and fail within a few bytes.
        let mut groups: Vec<(&str, Vec<(&str, u32)>)> = groups.into_iter().collect();
        groups.sort_unstable_by_key(|(first, _)| *first);
        let mut pack: Vec<(&str, u32)> = Vec::new();
        let mut members: Vec<&str> = Vec::new();
        let mut groups = groups.into_iter().peekable();
        while let Some((first, patterns)) = groups.next() {
            pack.extend(patterns);
            members.push(first);
            let full = groups
                .peek()
                .is_none_or(|(_, next)| pack.len() + next.len() > PACK);
            if !full {
                continue;
            }
            match PatternSet::build(&pack) {
                Ok(set) => {
                    for member in members.drain(..) {
                        index
                            .pattern_groups
                            .insert(member.to_owned(), index.pattern_sets.len());
                    }
                    index.pattern_sets.push(set);
                }
                Err(errors) => {
                    members.clear();
                    bad.extend(
                        errors
                            .into_iter()
                            .map(|(id, e)| BadRegex::Repository(id, e)),
                    )
                }
            }
            pack.clear();
        }
        if !rest.is_empty() {
            match PatternSet::build(&rest) {
                Ok(set) => index.pattern_rest = Some(set),
                Err(errors) => bad.extend(
                    errors
                        .into_iter()
                        .map(|(id, e)| BadRegex::Repository(id, e)),
                ),
            }
        }
        if !tag_regexes.is_empty() {
            let tags: Vec<(&str, u32)> = tag_regexes.iter().copied().zip(0u32..).collect();
            match PatternSet::build(&tags) {
                Ok(set) => index.tags = Some(set),
                Err(errors) => bad.extend(errors.into_iter().map(|(id, e)| BadRegex::Tag(id, e))),
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }

        for (i, rule) in (0u32..).zip(rules) {
            if rule.registries_conf_entry.is_some() {
                continue;
            }
            index.file(i, rule);
        }
        Ok(index)
    }

    fn file(&mut self, i: u32, rule: &Rule) {
        if !rule.digests.is_empty() {
            for d in rule.digests.iter() {
                self.by_digest.entry(d.clone()).or_default().push(i);
            }
            return;
        }
        match (&rule.repository, rule.repository_id) {
            (Some(RepoPattern::Exact(name)), _) => {
                return self.by_exact.entry(name.clone()).or_default().push(i)
            }
            (Some(RepoPattern::Prefix(prefix)), _) => {
                return self.by_prefix.entry(prefix.clone()).or_default().push(i)
            }
            (Some(_), Some(id)) => {
                if let Some(rules) = self.by_pattern.get_mut(id as usize) {
                    return rules.push(i);
                }
            }
            _ => {}
        }
        // A tag rule can only match a tag its regex matched, which the tag set finds in one
        // pass; filed under its host it would be checked on every request to that host.
        if let Some((_, id)) = &rule.tag {
            if let Some(rules) = self.by_tag.get_mut(*id as usize) {
                return rules.push(i);
            }
        }
        match &rule.registry {
            RegistryMatcher::Host(h) => self.by_host.entry(h.clone()).or_default().push(i),
            RegistryMatcher::Wildcard(s) => self.by_wildcard.entry(s.clone()).or_default().push(i),
            RegistryMatcher::Public => self.public.push(i),
            RegistryMatcher::Any => self.any.push(i),
        }
    }

    /// Which repository and tag regexes match the subject.
    pub fn hits(&self, s: &Subject) -> Hits {
        let mut hits = Hits::default();
        if !s.repository.is_empty() {
            let first = s.repository.split('/').next().unwrap_or_default();
            if let Some(set) = self
                .pattern_groups
                .get(first)
                .and_then(|&at| self.pattern_sets.get(at))
            {
                set.matches_into(s.repository, &mut hits.repository);
            }
            if let Some(set) = &self.pattern_rest {
                set.matches_into(s.repository, &mut hits.repository);
            }
        }
        if let (Some(tag), Some(set)) = (s.tag, &self.tags) {
            set.matches_into(tag, &mut hits.tag);
        }
        hits
    }

    /// Calls `f` with every rule filed under a key the subject produces. Each rule is filed
    /// once and a subject produces each key once, so no rule is visited twice.
    pub fn candidates(&self, s: &Subject, public: bool, hits: &Hits, mut f: impl FnMut(u32)) {
        let mut each = |rules: Option<&Vec<u32>>| {
            for &i in rules.into_iter().flatten() {
                f(i)
            }
        };
        if let Some(digest) = s.digest {
            each(self.by_digest.get(digest));
        }
        if !s.repository.is_empty() {
            each(self.by_exact.get(s.repository));
            if !self.by_prefix.is_empty() {
                for (at, _) in s.repository.match_indices('/') {
                    each(self.by_prefix.get(&s.repository[..=at]));
                }
            }
            for &id in &hits.repository {
                each(self.by_pattern.get(id as usize));
            }
        }
        for &id in &hits.tag {
            each(self.by_tag.get(id as usize));
        }
        each(self.by_host.get(s.registry));
        if !self.by_wildcard.is_empty() {
            let name = host_without_port(s.registry);
            for (at, _) in name.match_indices('.') {
                each(self.by_wildcard.get(&name[at..]));
            }
        }
        if public {
            each(Some(&self.public));
        }
        each(Some(&self.any));
    }

    /// Does any rule name a digest? Only then must a manifest served by tag be hashed to be
    /// decided.
    pub fn has_digests(&self) -> bool {
        !self.by_digest.is_empty()
    }

    pub fn pattern_sets(&self) -> usize {
        self.pattern_sets.len() + usize::from(self.pattern_rest.is_some())
    }

    pub fn largest_pattern_set(&self) -> usize {
        self.pattern_sets
            .iter()
            .chain(&self.pattern_rest)
            .map(PatternSet::len)
            .max()
            .unwrap_or(0)
    }
}
