//! Private-push protection: `[[private]]` rules say what makes an image private, and a push of
//! a private image to a public registry is warned about, held for confirmation or rejected.
//!
//! The proxy supplies what only it can know (labels from the image config, annotations from
//! the manifest, whether a blob was only ever seen in private registries, where the content
//! came from); this module only decides. Name-only rules can be decided at the first request
//! of a push ([`Policy::private_push_by_name`]); the others need the manifest, which comes
//! last, so the proxy stages the push when [`Policy::private_needs_content`] says so.

use std::collections::HashMap;
use std::sync::Arc;

use regex::bytes::Regex;

use super::matcher::{plain_match, RepoPattern};
use super::{Action, Decision, Policy};

/// What the proxy knows about a push when it asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushContent<'a> {
    /// Normalised destination host.
    pub registry: &'a str,
    /// Destination repository (`team/app`).
    pub repository: &'a str,
    /// Image config labels (`config.Labels`), if known.
    pub labels: Option<&'a HashMap<String, String>>,
    /// Manifest annotations, if known.
    pub annotations: Option<&'a HashMap<String, String>>,
    /// A layer or config blob of this image was seen only in private registries, and the
    /// destination does not already have it.
    pub private_provenance: bool,
    /// Fully qualified names the content was seen under (`corp.example.com/team/app`), if the
    /// proxy knows; `name` patterns are matched against these as well as the repository.
    pub sources: &'a [String],
}

#[derive(Debug)]
pub(crate) struct PrivateRule {
    pub id: Arc<str>,
    pub message: String,
    /// Warn, Confirm or Deny (written `reject`).
    pub action: Action,
    pub names: Vec<NameMatcher>,
    pub labels: Vec<KeyValue>,
    pub annotations: Vec<KeyValue>,
    pub provenance: bool,
}

/// A `[[private]]` name pattern, compiled on its own: these rules are few.
#[derive(Debug)]
pub(crate) struct NameMatcher {
    pub pattern: RepoPattern,
    pub regex: Option<Regex>,
}

impl NameMatcher {
    fn matches(&self, name: &str) -> bool {
        match (&self.regex, plain_match(&self.pattern, name)) {
            (_, Some(hit)) => hit,
            (Some(regex), None) => regex.is_match(name.as_bytes()),
            (None, None) => false,
        }
    }
}

/// `key=value` (that value exactly) or `key` (present with any value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyValue {
    pub key: String,
    pub value: Option<String>,
}

impl KeyValue {
    pub fn parse(s: &str) -> Result<KeyValue, String> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (s.trim(), None),
        };
        if key.is_empty() {
            return Err(format!("{s:?} has no key (write \"key=value\" or \"key\")"));
        }
        Ok(KeyValue {
            key: key.to_owned(),
            value,
        })
    }

    fn matches(&self, map: Option<&HashMap<String, String>>) -> bool {
        match (map.and_then(|m| m.get(&self.key)), &self.value) {
            (Some(_), None) => true,
            (Some(found), Some(wanted)) => found == wanted,
            (None, _) => false,
        }
    }
}

impl PrivateRule {
    /// Labels, annotations and provenance are read off the image itself.
    fn uses_content(&self) -> bool {
        !self.labels.is_empty() || !self.annotations.is_empty() || self.provenance
    }

    /// `name` patterns also match the names the pushed content was seen under, which only
    /// the blobs of the push tell: every rule needs the push staged.
    fn needs_staging(&self) -> bool {
        self.uses_content() || !self.names.is_empty()
    }

    /// Three criteria, each holding when absent: names, marks (labels and annotations
    /// together: an image is marked by either), provenance. Present criteria must all hold;
    /// within one, any entry will do.
    fn matches(&self, c: &PushContent) -> bool {
        let names = self.names.is_empty()
            || self
                .names
                .iter()
                .any(|n| n.matches(c.repository) || c.sources.iter().any(|s| n.matches(s)));
        let marks = (self.labels.is_empty() && self.annotations.is_empty())
            || self.labels.iter().any(|kv| kv.matches(c.labels))
            || self.annotations.iter().any(|kv| kv.matches(c.annotations));
        let provenance = !self.provenance || c.private_provenance;
        names && marks && provenance
    }
}

#[derive(Debug, Default)]
pub(crate) struct PrivateRules {
    rules: Vec<PrivateRule>,
}

impl PrivateRules {
    pub fn new(rules: Vec<PrivateRule>) -> PrivateRules {
        PrivateRules { rules }
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The most severe matching rule; the first defined on a tie.
    fn strongest<'a>(&'a self, mut keep: impl FnMut(&PrivateRule) -> bool) -> Option<Decision> {
        let mut best: Option<&'a PrivateRule> = None;
        for rule in &self.rules {
            if keep(rule) && best.is_none_or(|b| rule.action > b.action) {
                best = Some(rule);
            }
        }
        best.map(|rule| Decision {
            action: rule.action,
            rule_id: Some(Arc::clone(&rule.id)),
            message: rule.message.clone(),
        })
    }
}

impl Policy {
    /// The strongest `[[private]]` decision for a push, or None when the destination is not
    /// public or no rule finds the image private. Combine it with [`Policy::evaluate`] for the
    /// same push through [`Decision::stronger`].
    pub fn private_push(&self, c: &PushContent) -> Option<Decision> {
        if !self.is_public(c.registry) {
            return None;
        }
        self.private.strongest(|rule| rule.matches(c))
    }

    /// What can be decided at the first request of a push, from the destination name alone:
    /// only rules with nothing but `name` patterns take part. The same rules are decided
    /// again on the manifest, against the names the content was seen under.
    pub fn private_push_by_name(&self, registry: &str, repository: &str) -> Option<Decision> {
        if !self.is_public(registry) {
            return None;
        }
        let c = PushContent {
            registry,
            repository,
            ..PushContent::default()
        };
        self.private
            .strongest(|rule| !rule.uses_content() && rule.matches(&c))
    }

    /// Does a push to `registry` need its labels, annotations, provenance or source names
    /// checked, so that the proxy must stage its blobs until the manifest arrives?
    pub fn private_needs_content(&self, registry: &str) -> bool {
        self.is_public(registry) && self.private.rules.iter().any(PrivateRule::needs_staging)
    }

    /// Does any `[[private]]` rule use provenance (so a store failure leaves it undecided)?
    pub fn private_uses_provenance(&self) -> bool {
        self.private.rules.iter().any(|r| r.provenance)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Action, Policy};
    use super::*;

    fn policy(text: &str) -> Policy {
        parse("p.toml", text).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const RULES: &str = r#"
[[private]]
id = "internal-names"
message = "internal repositories stay internal"
action = "confirm"
name = ["corp/", "*/*-internal", "corp.example.com/"]

[[private]]
id = "classified"
message = "classified images never leave"
action = "reject"
labels = ["com.example.classification=internal"]
annotations = ["com.example.secret"]

[[private]]
id = "seen-privately"
message = "content seen only in private registries"
action = "warn"
provenance = true
"#;

    fn decide(p: &Policy, c: &PushContent) -> Option<(Action, String)> {
        p.private_push(c).map(|d| {
            (
                d.action,
                d.rule_id.map(|id| id.to_string()).unwrap_or_default(),
            )
        })
    }

    #[test]
    fn each_kind_of_criterion() {
        let p = policy(RULES);
        let push = |repository| PushContent {
            registry: "docker.io",
            repository,
            ..PushContent::default()
        };
        assert_eq!(decide(&p, &push("team/app")), None);
        assert_eq!(
            decide(&p, &push("corp/app")),
            Some((Action::Confirm, "internal-names".into()))
        );
        assert_eq!(
            decide(&p, &push("team/app-internal")),
            Some((Action::Confirm, "internal-names".into()))
        );
        let sources = ["corp.example.com/team/app".to_owned()];
        let retagged = PushContent {
            sources: &sources,
            ..push("me/app")
        };
        assert_eq!(
            decide(&p, &retagged),
            Some((Action::Confirm, "internal-names".into()))
        );
        let labels = map(&[("com.example.classification", "internal")]);
        let labelled = PushContent {
            labels: Some(&labels),
            ..push("corp/app")
        };
        // Both match: the more severe wins.
        assert_eq!(
            decide(&p, &labelled),
            Some((Action::Deny, "classified".into()))
        );
        let public_label = map(&[("com.example.classification", "public")]);
        assert_eq!(
            decide(
                &p,
                &PushContent {
                    labels: Some(&public_label),
                    ..push("team/app")
                }
            ),
            None
        );
        let annotations = map(&[("com.example.secret", "")]);
        assert_eq!(
            decide(
                &p,
                &PushContent {
                    annotations: Some(&annotations),
                    ..push("team/app")
                }
            ),
            Some((Action::Deny, "classified".into()))
        );
        assert_eq!(
            decide(
                &p,
                &PushContent {
                    private_provenance: true,
                    ..push("team/app")
                }
            ),
            Some((Action::Warn, "seen-privately".into()))
        );
        // Not public: nothing to protect.
        let private_dest = PushContent {
            registry: "corp.example.com",
            labels: Some(&labels),
            ..push("corp/app")
        };
        assert_eq!(decide(&p, &private_dest), None);
    }

    #[test]
    fn labels_and_annotations_are_one_criterion() {
        let p = policy(RULES);
        let labels = map(&[("com.example.classification", "internal")]);
        let annotations = map(&[("com.example.secret", "yes")]);
        for (l, a) in [(Some(&labels), None), (None, Some(&annotations))] {
            let c = PushContent {
                registry: "ghcr.io",
                repository: "team/app",
                labels: l,
                annotations: a,
                ..PushContent::default()
            };
            assert_eq!(decide(&p, &c), Some((Action::Deny, "classified".into())));
        }
        // A label key in the annotations (or the reverse) does not count.
        let swapped = PushContent {
            registry: "ghcr.io",
            repository: "team/app",
            annotations: Some(&labels),
            ..PushContent::default()
        };
        assert_eq!(decide(&p, &swapped), None);
    }

    #[test]
    fn criteria_in_one_rule_and_together() {
        let p = policy(
            "[[private]]\nid = \"both\"\nmessage = \"m\"\naction = \"reject\"\nname = \"corp/\"\nprovenance = true\n",
        );
        let c = PushContent {
            registry: "quay.io",
            repository: "corp/app",
            ..PushContent::default()
        };
        assert_eq!(decide(&p, &c), None);
        assert_eq!(
            decide(
                &p,
                &PushContent {
                    private_provenance: true,
                    ..c
                }
            ),
            Some((Action::Deny, "both".into()))
        );
        assert_eq!(
            decide(
                &p,
                &PushContent {
                    private_provenance: true,
                    repository: "x/app",
                    ..c
                }
            ),
            None
        );
    }

    #[test]
    fn first_request_decisions_use_names_only() {
        let p = policy(RULES);
        let by_name = p.private_push_by_name("docker.io", "corp/app").unwrap();
        assert_eq!(
            (by_name.action, by_name.rule_id.as_deref()),
            (Action::Confirm, Some("internal-names"))
        );
        assert_eq!(p.private_push_by_name("docker.io", "team/app"), None);
        assert_eq!(p.private_push_by_name("corp.example.com", "corp/app"), None);
        assert!(p.private_needs_content("docker.io"));
        assert!(!p.private_needs_content("corp.example.com"));
        let names_only = policy(
            "[[private]]\nid = \"n\"\nmessage = \"m\"\naction = \"warn\"\nname = \"corp/\"\n",
        );
        // Names also match where the content was seen (a retagged private image), which
        // only the staged blobs tell.
        assert!(names_only.private_needs_content("docker.io"));
        assert!(!names_only.private_needs_content("corp.example.com"));
    }

    #[test]
    fn key_values() {
        assert_eq!(
            KeyValue::parse("a=b").unwrap(),
            KeyValue {
                key: "a".into(),
                value: Some("b".into())
            }
        );
        assert_eq!(
            KeyValue::parse("a").unwrap(),
            KeyValue {
                key: "a".into(),
                value: None
            }
        );
        assert_eq!(
            KeyValue::parse("a=").unwrap(),
            KeyValue {
                key: "a".into(),
                value: Some(String::new())
            }
        );
        assert!(KeyValue::parse("=b").is_err());
    }
}
