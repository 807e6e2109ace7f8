//! The policy engine: which operations on which images are allowed, warned about, held for
//! confirmation or denied, and what registries.conf(5) says about search order, aliases,
//! rewrites and mirrors.
//!
//! A [`Policy`] is compiled once from files ([`load`]) and is then immutable: evaluation is
//! pure (no I/O, no locks, no shared mutable state), so the proxy keeps it behind an
//! `ArcSwap` and swaps a freshly loaded one in whole on reload. The file format is
//! documented in `policies/README.md`; precedence is defined by [`Specificity`] and pinned by
//! the tests in `eval.rs`.
//!
//! Layout: `tree` reads TOML with positions and `check` reads its tables by hand,
//! `policy_file` checks policy files, `registries_conf` checks registries.conf(5),
//! `registries` answers its longest-prefix questions, `load` reads files and merges them, `matcher` holds the per-criterion matchers, `index` finds the
//! few rules that can match a subject, `eval` picks the winner and explains it, `private`
//! decides pushes of private images to public registries, `short_name` resolves short names.

mod check;
mod eval;
pub mod explain;
mod index;
pub mod live;
mod load;
mod matcher;
mod policy_file;
mod private;
mod registries;
mod registries_conf;
mod rule;
mod short_name;
pub mod signature;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

pub use eval::{Explanation, Match};
pub use load::{compile, load, load_registries_conf, parse, Fragment};
pub use matcher::{PatternKind, RegistrySpecificity, RepoSpecificity, Specificity};
pub use private::PushContent;
pub use registries::{Mirror, PullFromMirror, PullSource};
pub use short_name::ShortName;

use crate::reference::{normalize_registry, Repository};

/// What a client is doing. Search is `/v1/search`; list is a tags list or the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Pull,
    Push,
    Search,
    List,
    Delete,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Pull,
        Operation::Push,
        Operation::Search,
        Operation::List,
        Operation::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Pull => "pull",
            Operation::Push => "push",
            Operation::Search => "search",
            Operation::List => "list",
            Operation::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?} (expected one of: {expected})")]
pub struct UnknownKeyword {
    what: &'static str,
    given: String,
    expected: &'static str,
}

impl FromStr for Operation {
    type Err = UnknownKeyword;

    fn from_str(s: &str) -> Result<Operation, UnknownKeyword> {
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| UnknownKeyword {
                what: "operation",
                given: s.to_owned(),
                expected: "pull, push, search, list, delete",
            })
    }
}

/// A set of operations, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Operations(u8);

impl Operations {
    pub const ALL: Operations = Operations(0b1_1111);

    pub fn empty() -> Operations {
        Operations(0)
    }

    pub fn insert(&mut self, op: Operation) {
        self.0 |= op.bit();
    }

    pub fn contains(self, op: Operation) -> bool {
        self.0 & op.bit() != 0
    }
}

/// What happens to a request, ordered by severity: `Allow < Warn < Confirm < Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Forwarded.
    Allow,
    /// Forwarded, with an audit record, a metric and a `Warning` header.
    Warn,
    /// Refused until confirmed (Atomic's `--confirm-def-push`).
    Confirm,
    /// Refused with `DENIED`.
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Warn => "warn",
            Action::Confirm => "confirm",
            Action::Deny => "deny",
        }
    }

    /// Does the request go through (possibly with a warning)?
    pub fn permits(self) -> bool {
        matches!(self, Action::Allow | Action::Warn)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = UnknownKeyword;

    fn from_str(s: &str) -> Result<Action, UnknownKeyword> {
        [Action::Allow, Action::Warn, Action::Confirm, Action::Deny]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownKeyword {
                what: "action",
                given: s.to_owned(),
                expected: "allow, warn, confirm, deny",
            })
    }
}

/// `mode`: what happens when no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// What no rule denies is allowed.
    #[default]
    Blocklist,
    /// What no rule allows is denied (Atomic's `--block-registry all`).
    Allowlist,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Blocklist => "blocklist",
            Mode::Allowlist => "allowlist",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// registries.conf(5) `short-name-mode`; `permissive` when unset, as in containers/image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShortNameMode {
    /// A short name that several search registries could serve, and no alias pins, is refused.
    Enforcing,
    /// Search registries are tried in order.
    #[default]
    Permissive,
    /// Search registries are tried in order.
    Disabled,
}

impl ShortNameMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShortNameMode::Enforcing => "enforcing",
            ShortNameMode::Permissive => "permissive",
            ShortNameMode::Disabled => "disabled",
        }
    }
}

impl fmt::Display for ShortNameMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request, as the policy sees it. `registry` must already be normalised
/// ([`normalize_registry`]: lowercase, `docker.io` for its aliases) and `repository` fully
/// qualified for that registry (`library/alpine` on docker.io). For search and the catalog,
/// `repository` is empty: only rules without repository, tag or digest criteria can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    pub op: Operation,
    pub registry: &'a str,
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// The answer for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The winning rule; None when the mode's default applied.
    pub rule_id: Option<Arc<str>>,
    /// The rule's message for people, or why the default applied.
    pub message: String,
}

impl Decision {
    /// The more severe of two decisions; `self` on a tie. The proxy combines the rule decision
    /// for a push with [`Policy::private_push`] this way.
    pub fn stronger(self, other: Decision) -> Decision {
        if other.action > self.action {
            other
        } else {
            self
        }
    }
}

/// One problem in a policy or registries.conf file; the type the configuration shares.
pub use crate::toml_check::Problem;

/// Where a rule or setting was written, for messages and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The registries Atomic's `--confirm-def-push` guarded, widened to today's big public ones.
pub const DEFAULT_PUBLIC_REGISTRIES: [&str; 3] = ["docker.io", "quay.io", "ghcr.io"];

/// A compiled policy: immutable, `Send + Sync`, cheap to evaluate.
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    rules: Vec<rule::Rule>,
    index: index::Index,
    registries: registries::Registries,
    private: private::PrivateRules,
    public: Vec<String>,
    search: Option<Vec<String>>,
    aliases: HashMap<String, (String, Repository)>,
    short_name_mode: ShortNameMode,
    warnings: Vec<Problem>,
    sources: Vec<PathBuf>,
    /// The signature policy (containers-policy.json and registries.d), when one is loaded.
    trust: Option<Arc<signature::trust::Trust>>,
}

impl Default for Policy {
    /// No files: blocklist mode, no rules, the default public registries.
    fn default() -> Policy {
        Policy {
            mode: Mode::Blocklist,
            rules: Vec::new(),
            index: index::Index::default(),
            registries: registries::Registries::default(),
            private: private::PrivateRules::default(),
            public: DEFAULT_PUBLIC_REGISTRIES.map(str::to_owned).to_vec(),
            search: None,
            aliases: HashMap::new(),
            short_name_mode: ShortNameMode::default(),
            warnings: Vec::new(),
            sources: Vec::new(),
            trust: None,
        }
    }
}

impl Policy {
    /// The signature policy in force, if the policy paths hold a containers-policy.json.
    pub fn trust(&self) -> Option<&Arc<signature::trust::Trust>> {
        self.trust.as_ref()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Search registries for short names, in order, if a policy file
    /// (`search_registries`) or registries.conf (`unqualified-search-registries`) set them;
    /// otherwise the server configuration's list applies.
    pub fn search_registries(&self) -> Option<&[String]> {
        self.search.as_deref()
    }

    /// Short name -> (registry, repository), from `[aliases]` in either format.
    pub fn aliases(&self) -> &HashMap<String, (String, Repository)> {
        &self.aliases
    }

    pub fn short_name_mode(&self) -> ShortNameMode {
        self.short_name_mode
    }

    /// Normalised hosts a push to which counts as public.
    pub fn public_registries(&self) -> &[String] {
        &self.public
    }

    pub fn is_public(&self, registry: &str) -> bool {
        self.public.iter().any(|p| p == registry)
            || (registry.bytes().any(|b| b.is_ascii_uppercase())
                && self.public.contains(&normalize_registry(registry)))
    }

    /// Every id a decision can carry: a bounded label set for metrics.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id).chain(self.private.ids())
    }

    /// Problems that did not stop loading (unknown registries.conf keys), for the log.
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// Every file this policy was read from; a reloader watches these (and the directories
    /// it was given, for new files).
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Sizes, for `portcullis policy status` and the log line after a reload.
    pub fn stats(&self) -> Stats {
        Stats {
            rules: self.rules.len(),
            private_rules: self.private.len(),
            registries_conf_entries: self.registries.entries().len(),
            regex_sets: self.index.pattern_sets(),
            largest_regex_set: self.index.largest_pattern_set(),
        }
    }

    /// Does any rule name a digest? A manifest served by tag is then decided on the digest
    /// of its body as well, so that a digest rule holds whatever the content is called.
    pub fn has_digest_rules(&self) -> bool {
        self.index.has_digests()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.private.len() == 0 && self.registries.entries().is_empty()
    }
}

/// How big a compiled policy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// `[[rule]]`s plus the deny rules of blocked registries.conf entries.
    pub rules: usize,
    pub private_rules: usize,
    pub registries_conf_entries: usize,
    /// Repository regex sets (one per literal first path component, plus one for the rest).
    pub regex_sets: usize,
    pub largest_regex_set: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.to_string().parse::<Operation>(), Ok(op));
        }
        for a in [Action::Allow, Action::Warn, Action::Confirm, Action::Deny] {
            assert_eq!(a.to_string().parse::<Action>(), Ok(a));
        }
        let e = "pul".parse::<Operation>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown operation \"pul\" (expected one of: pull, push, search, list, delete)"
        );
        assert!("reject".parse::<Action>().is_err());
    }

    #[test]
    fn severity_order_and_stronger() {
        assert!(Action::Allow < Action::Warn);
        assert!(Action::Warn < Action::Confirm);
        assert!(Action::Confirm < Action::Deny);
        let d = |action, id: &str| Decision {
            action,
            rule_id: Some(id.into()),
            message: String::new(),
        };
        assert_eq!(
            d(Action::Warn, "a").stronger(d(Action::Confirm, "b")),
            d(Action::Confirm, "b")
        );
        assert_eq!(
            d(Action::Deny, "a").stronger(d(Action::Deny, "b")),
            d(Action::Deny, "a")
        );
    }

    #[test]
    fn policy_is_shared_and_swapped_whole() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Policy>();
        let current = arc_swap::ArcSwap::from_pointee(Policy::default());
        let next = parse("p.toml", "mode = \"allowlist\"\n").unwrap();
        current.store(Arc::new(next));
        assert_eq!(current.load().mode(), Mode::Allowlist);
        assert_eq!(
            compile(Vec::new()).unwrap().stats(),
            Policy::default().stats()
        );
    }

    #[test]
    fn empty_policy_is_blocklist_with_default_public_registries() {
        let policy = Policy::default();
        assert_eq!(policy.mode(), Mode::Blocklist);
        assert_eq!(policy.public_registries(), DEFAULT_PUBLIC_REGISTRIES);
        assert!(policy.is_public("docker.io") && policy.is_public("Quay.IO"));
        assert!(!policy.is_public("corp.example.com"));
        assert_eq!(policy.search_registries(), None);
        assert_eq!(policy.rule_ids().count(), 0);
        assert!(policy.is_empty());
    }
}
