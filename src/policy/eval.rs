//! Evaluation: the most specific matching rule wins; at equal specificity the more severe
//! action wins (deny > confirm > warn > allow); at equal both, the rule defined first (files
//! in the order given, then top to bottom) names the decision. No rule: the mode decides.

use std::cmp::Reverse;
use std::fmt;
use std::sync::Arc;

use super::matcher::Specificity;
use super::rule::Rule;
use super::{Action, Decision, Mode, Origin, Policy, Subject};

/// Ordering key of a matching rule: greater wins.
type Rank = (Specificity, Action, Reverse<u32>);

fn rank(rule: &Rule, i: u32) -> Rank {
    (rule.specificity, rule.action, Reverse(i))
}

/// `pull docker.io/library/alpine:latest`, for messages.
pub(crate) fn describe(s: &Subject) -> String {
    let mut out = format!("{} {}", s.op, s.registry);
    if !s.repository.is_empty() {
        out.push('/');
        out.push_str(s.repository);
    }
    if let Some(tag) = s.tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = s.digest {
        out.push('@');
        out.push_str(digest);
    }
    out
}

impl Policy {
    /// Calls `f` with every rule that matches `s`.
    fn each_match<'p>(&'p self, s: &Subject, mut f: impl FnMut(u32, &'p Rule)) {
        let public = self.is_public(s.registry);
        let hits = self.index.hits(s);
        self.index.candidates(s, public, &hits, |i| {
            if let Some(rule) = self.rules.get(i as usize) {
                if rule.matches(s, public, &hits) {
                    f(i, rule)
                }
            }
        });
        if let Some(i) = self.registries.blocked_rule(s) {
            if let Some(rule) = self.rules.get(i as usize) {
                f(i, rule)
            }
        }
    }

    /// Whether `op` on a repository (or, with an empty one, on the registry) is allowed
    /// outright: what listings and search results show. Confirm and deny both hide.
    pub fn permits_name(&self, op: super::Operation, registry: &str, repository: &str) -> bool {
        let subject = Subject {
            op,
            registry,
            repository,
            tag: None,
            digest: None,
        };
        self.evaluate(&subject).action.permits()
    }

    /// The decision for one request.
    pub fn evaluate(&self, s: &Subject) -> Decision {
        let mut best: Option<(Rank, &Rule)> = None;
        self.each_match(s, |i, rule| {
            let r = rank(rule, i);
            if best.as_ref().is_none_or(|(b, _)| r > *b) {
                best = Some((r, rule));
            }
        });
        match best {
            Some((_, rule)) => Decision {
                action: rule.action,
                rule_id: Some(Arc::clone(&rule.id)),
                message: rule.message.clone(),
            },
            None => self.default_decision(s),
        }
    }

    fn default_decision(&self, s: &Subject) -> Decision {
        let (action, message) = match self.mode {
            // Every allowed request takes this path: no formatting of the subject here.
            Mode::Blocklist => (
                Action::Allow,
                "no rule matches; allowed (mode = \"blocklist\": what no rule denies is allowed)"
                    .to_owned(),
            ),
            Mode::Allowlist => (
                Action::Deny,
                format!(
                    "no rule allows {} (mode = \"allowlist\": what no rule allows is denied)",
                    describe(s)
                ),
            ),
        };
        Decision {
            action,
            rule_id: None,
            message,
        }
    }

    /// Every matching rule, most specific first, the decision and why the winner won: what
    /// `portcullis policy explain` prints.
    pub fn explain(&self, s: &Subject) -> Explanation {
        let mut matched: Vec<(Rank, &Rule)> = Vec::new();
        self.each_match(s, |i, rule| matched.push((rank(rule, i), rule)));
        matched.sort_by_key(|m| Reverse(m.0));
        let decision = match matched.first() {
            Some((_, rule)) => Decision {
                action: rule.action,
                rule_id: Some(Arc::clone(&rule.id)),
                message: rule.message.clone(),
            },
            None => self.default_decision(s),
        };
        let reason = match matched.as_slice() {
            [] => format!("no rule matched, so the mode decides: {}", self.mode),
            [_] => "the only matching rule".to_owned(),
            [(win, w), (next, n), ..] => {
                if win.0 != next.0 {
                    format!(
                        "most specific match: {} is more specific than {} ({})",
                        win.0, next.0, n.id
                    )
                } else if win.1 != next.1 {
                    format!(
                        "as specific as {} ({}), and {} beats {} at equal specificity",
                        n.id, win.0, w.action, n.action
                    )
                } else {
                    format!(
                        "as specific and as severe as {}; the rule defined first ({}) names the decision",
                        n.id, w.origin
                    )
                }
            }
        };
        Explanation {
            subject: describe(s),
            decision,
            reason,
            matches: matched
                .into_iter()
                .map(|(_, rule)| Match {
                    rule_id: Arc::clone(&rule.id),
                    action: rule.action,
                    specificity: rule.specificity,
                    origin: rule.origin.clone(),
                    criteria: rule.criteria().to_string(),
                    message: rule.message.clone(),
                })
                .collect(),
        }
    }
}

/// What `explain` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// `pull docker.io/library/alpine:latest`
    pub subject: String,
    pub decision: Decision,
    /// Why the first match won, or why the default applied.
    pub reason: String,
    /// Every matching rule, the winner first.
    pub matches: Vec<Match>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub rule_id: Arc<str>,
    pub action: Action,
    pub specificity: Specificity,
    pub origin: Origin,
    /// The rule's criteria in one line: `registry = quay.io, tag = ^latest$`.
    pub criteria: String,
    pub message: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.subject)?;
        match &self.decision.rule_id {
            Some(id) => writeln!(f, "decision: {} (rule {id})", self.decision.action)?,
            None => writeln!(f, "decision: {} (default)", self.decision.action)?,
        }
        writeln!(f, "message:  {}", self.decision.message)?;
        writeln!(f, "why:      {}", self.reason)?;
        if !self.matches.is_empty() {
            writeln!(f, "matching rules, most specific first:")?;
        }
        for (n, m) in self.matches.iter().enumerate() {
            let mark = if n == 0 { '*' } else { ' ' };
            writeln!(
                f,
                "  {mark} {} [{}] at {}\n      matches: {}\n      specificity: {}",
                m.rule_id, m.action, m.origin, m.criteria, m.specificity
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Operation, Policy};
    use super::*;

    fn policy(text: &str) -> Policy {
        parse("test.toml", text).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn subject<'a>(op: Operation, name: &'a str) -> Subject<'a> {
        // "registry/repo[:tag][@digest]" split the simple way: tests only use hosts with dots.
        let (name, digest) = match name.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (name, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (name, None),
        };
        let (registry, repository) = name.split_once('/').unwrap_or((name, ""));
        Subject {
            op,
            registry,
            repository,
            tag,
            digest,
        }
    }

    fn decide(p: &Policy, op: Operation, name: &str) -> (Action, Option<String>) {
        let d = p.evaluate(&subject(op, name));
        (d.action, d.rule_id.map(|id| id.to_string()))
    }

    fn rule(id: &str, action: &str, criteria: &str) -> String {
        format!("[[rule]]\nid = \"{id}\"\nmessage = \"{id} says {action}\"\naction = \"{action}\"\n{criteria}\n")
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn more_specific_rule_wins_whatever_its_action() {
        use Operation::Pull;
        let text = [
            rule("all", "deny", "registry = \"all\""),
            rule("public", "warn", "registry = \"public\""),
            rule("wild", "deny", "registry = \"*.example.com\""),
            rule("wilder", "allow", "registry = \"*.corp.example.com\""),
            rule("host", "allow", "registry = \"quay.io\""),
            rule("regex", "deny", "repository = \"regex:^team/.*$\""),
            rule("glob", "confirm", "repository = \"team/*\""),
            rule("prefix", "warn", "repository = \"team/\""),
            rule("longer-prefix", "deny", "repository = \"team/sub/\""),
            rule("exact", "allow", "repository = \"team/sub/app\""),
            rule("tag", "deny", "tag = \"^latest$\""),
            rule("digest", "allow", &format!("digest = \"{DIGEST}\"")),
        ]
        .concat();
        let p = policy(&text);
        let cases: &[(&str, Action, &str)] = &[
            ("registry.example.org/x", Action::Deny, "all"),
            ("docker.io/library/x", Action::Warn, "public"),
            ("a.example.com/x", Action::Deny, "wild"),
            ("a.corp.example.com/x", Action::Allow, "wilder"),
            ("quay.io/x", Action::Allow, "host"),
            // Equal literal length (5): prefix beats glob beats regex.
            ("quay.io/team/app", Action::Warn, "prefix"),
            ("quay.io/team/sub/x", Action::Deny, "longer-prefix"),
            ("quay.io/team/sub/app", Action::Allow, "exact"),
            ("quay.io/team/sub/app:latest", Action::Deny, "tag"),
            (
                &format!("quay.io/team/sub/app:latest@{DIGEST}"),
                Action::Allow,
                "digest",
            ),
        ];
        for (name, action, id) in cases {
            assert_eq!(
                decide(&p, Pull, name),
                (*action, Some(id.to_string())),
                "{name}"
            );
        }
    }

    #[test]
    fn tag_rules_filed_by_tag_still_check_every_criterion() {
        // Tag rules are found through the tag regex set, not through their host: they must
        // still match only their own host and operations, and ordinary host rules still
        // apply to the tags they do not name.
        let text = rule(
            "bad-tag",
            "deny",
            "registry = \"quay.io\"\ntag = \"^bad-[0-9]+$\"",
        ) + &rule(
            "push-only",
            "deny",
            "operations = [\"push\"]\ntag = \"^wip$\"",
        ) + &rule("quay", "warn", "registry = \"quay.io\"");
        let p = policy(&text);
        let cases = [
            (
                Operation::Pull,
                "quay.io/x:bad-1",
                Action::Deny,
                Some("bad-tag"),
            ),
            (
                Operation::Pull,
                "quay.io/x:good",
                Action::Warn,
                Some("quay"),
            ),
            (Operation::Pull, "ghcr.io/x:bad-1", Action::Allow, None),
            (Operation::Pull, "ghcr.io/x:wip", Action::Allow, None),
            (
                Operation::Push,
                "ghcr.io/x:wip",
                Action::Deny,
                Some("push-only"),
            ),
            (
                Operation::Pull,
                "quay.io/x@sha256:00",
                Action::Warn,
                Some("quay"),
            ),
        ];
        for (op, name, action, id) in cases {
            let got = decide(&p, op, name);
            assert_eq!(got, (action, id.map(str::to_owned)), "{op} {name}");
        }
    }

    #[test]
    fn equal_specificity_goes_to_the_more_severe_action() {
        let actions = ["allow", "warn", "confirm", "deny"];
        for (i, weaker) in actions.iter().enumerate() {
            for stronger in &actions[i + 1..] {
                // Both orders in the file: position must not matter.
                for flip in [false, true] {
                    let a = rule("weak", weaker, "registry = \"quay.io\"");
                    let b = rule("strong", stronger, "registry = \"quay.io\"");
                    let text = if flip { b.clone() + &a } else { a + &b };
                    let p = policy(&text);
                    let (action, id) = decide(&p, Operation::Pull, "quay.io/x");
                    assert_eq!(action.as_str(), *stronger);
                    assert_eq!(id.as_deref(), Some("strong"));
                }
            }
        }
    }

    #[test]
    fn equal_rank_goes_to_the_rule_defined_first() {
        let text = rule("first", "deny", "registry = \"quay.io\"")
            + &rule("second", "deny", "registry = \"quay.io\"");
        let p = policy(&text);
        assert_eq!(
            decide(&p, Operation::Pull, "quay.io/x").1.as_deref(),
            Some("first")
        );
        let e = p.explain(&subject(Operation::Pull, "quay.io/x"));
        assert!(
            e.reason.contains("defined first (test.toml:1)"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn modes_decide_what_no_rule_matches() {
        let allow = policy(&rule("quay", "allow", "registry = \"quay.io\""));
        assert_eq!(
            decide(&allow, Operation::Pull, "ghcr.io/x").0,
            Action::Allow
        );
        let d = allow.evaluate(&subject(Operation::Pull, "ghcr.io/x"));
        assert!(d.message.contains("mode = \"blocklist\""), "{}", d.message);

        let text = format!(
            "mode = \"allowlist\"\n{}",
            rule("quay", "allow", "registry = \"quay.io\"")
        );
        let p = policy(&text);
        assert_eq!(
            decide(&p, Operation::Pull, "quay.io/x"),
            (Action::Allow, Some("quay".into()))
        );
        let d = p.evaluate(&subject(Operation::Push, "ghcr.io/team/x:1"));
        assert_eq!((d.action, d.rule_id), (Action::Deny, None));
        assert_eq!(
            d.message,
            "no rule allows push ghcr.io/team/x:1 (mode = \"allowlist\": what no rule allows is denied)"
        );
    }

    #[test]
    fn criteria_and_together_and_operations_filter() {
        let p = policy(&rule(
            "r",
            "deny",
            "operations = [\"push\"]\nregistry = \"quay.io\"\nrepository = \"team/\"\ntag = \"^v1\"",
        ));
        use Operation::*;
        assert_eq!(decide(&p, Push, "quay.io/team/a:v1.2").0, Action::Deny);
        assert_eq!(decide(&p, Pull, "quay.io/team/a:v1.2").0, Action::Allow);
        assert_eq!(decide(&p, Push, "ghcr.io/team/a:v1.2").0, Action::Allow);
        assert_eq!(decide(&p, Push, "quay.io/other/a:v1.2").0, Action::Allow);
        assert_eq!(decide(&p, Push, "quay.io/team/a:v2").0, Action::Allow);
        // A tag criterion needs a tag: a push of a blob (no tag yet) is not judged by it.
        assert_eq!(decide(&p, Push, "quay.io/team/a").0, Action::Allow);
    }

    #[test]
    fn search_has_no_repository() {
        let p = policy(
            &(rule(
                "hub",
                "deny",
                "operations = [\"search\"]\nregistry = \"docker.io\"",
            ) + &rule("team", "deny", "repository = \"team/\"")),
        );
        assert_eq!(decide(&p, Operation::Search, "docker.io").0, Action::Deny);
        assert_eq!(decide(&p, Operation::Search, "quay.io").0, Action::Allow);
    }

    #[test]
    fn digest_blocks_regardless_of_name() {
        let p = policy(&rule("bad", "deny", &format!("digest = [\"{DIGEST}\"]")));
        let name = format!("quay.io/any/thing@{DIGEST}");
        assert_eq!(decide(&p, Operation::Pull, &name).0, Action::Deny);
        assert_eq!(
            decide(&p, Operation::Pull, "quay.io/any/thing").0,
            Action::Allow
        );
    }

    #[test]
    fn docker_hub_official_images_are_written_short() {
        let p = policy(&rule(
            "alpine",
            "deny",
            "registry = \"docker.io\"\nrepository = \"alpine\"",
        ));
        assert_eq!(
            decide(&p, Operation::Pull, "docker.io/library/alpine").0,
            Action::Deny
        );
    }

    #[test]
    fn explain_lists_every_match_winner_first() {
        let text = rule("hub", "allow", "registry = \"docker.io\"")
            + &rule("no-latest", "deny", "tag = \"^latest$\"")
            + &rule(
                "public-push",
                "confirm",
                "registry = \"public\"\noperations = [\"push\"]",
            );
        let p = policy(&text);
        let e = p.explain(&subject(Operation::Pull, "docker.io/library/alpine:latest"));
        assert_eq!(e.decision.action, Action::Deny);
        let ids: Vec<&str> = e.matches.iter().map(|m| &*m.rule_id).collect();
        assert_eq!(ids, ["no-latest", "hub"]);
        assert!(
            e.reason
                .starts_with("most specific match: tag + any registry"),
            "{}",
            e.reason
        );
        let text = e.to_string();
        assert!(text.contains("decision: deny (rule no-latest)"), "{text}");
        assert!(text.contains("matches: tag = ^latest$"), "{text}");
        let none = p.explain(&subject(Operation::Pull, "quay.io/x"));
        assert!(none.matches.is_empty() && none.reason.contains("mode decides"));
    }

    #[test]
    fn many_rules_find_the_right_one() {
        // Every kind of key in bulk, so a filing mistake in the index shows up as a miss.
        let mut text = String::new();
        for i in 0..300 {
            text += &rule(
                &format!("host{i}"),
                "deny",
                &format!("registry = \"r{i}.example.com\""),
            );
            text += &rule(
                &format!("prefix{i}"),
                "deny",
                &format!("repository = \"p{i}/\""),
            );
            text += &rule(
                &format!("glob{i}"),
                "deny",
                &format!("repository = \"g{i}/*-x\""),
            );
            text += &rule(
                &format!("regex{i}"),
                "deny",
                &format!("repository = \"regex:^x{i}/[a-z]+$\""),
            );
            text += &rule(
                &format!("anyregex{i}"),
                "deny",
                &format!("repository = \"regex:-y{i}$\""),
            );
            text += &rule(
                &format!("wild{i}"),
                "deny",
                &format!("registry = \"*.w{i}.org\""),
            );
        }
        let p = policy(&text);
        let cases = [
            ("r17.example.com/a", "host17"),
            ("quay.io/p42/a/b", "prefix42"),
            ("quay.io/g7/app-x", "glob7"),
            ("quay.io/x299/abc", "regex299"),
            ("quay.io/any/thing-y5", "anyregex5"),
            ("a.b.w3.org/z", "wild3"),
        ];
        for (name, id) in cases {
            assert_eq!(
                decide(&p, Operation::Pull, name),
                (Action::Deny, Some(id.into())),
                "{name}"
            );
        }
        for name in [
            "quay.io/g7/app-y",
            "quay.io/x299/ABC",
            "w3.org/z",
            "quay.io/p42",
        ] {
            assert_eq!(
                decide(&p, Operation::Pull, name),
                (Action::Allow, None),
                "{name}"
            );
        }
    }
}
