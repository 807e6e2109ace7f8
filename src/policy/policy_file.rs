//! One portcullis policy file, checked on its own into a [`Fragment`]: the settings,
//! `[aliases]`, `[[rule]]` and `[[private]]` tables, every key and value by hand so that
//! every problem is reported with its line (format: `policies/README.md`).

use std::sync::Arc;

use regex::bytes::RegexBuilder;

use super::check::{Ctx, Fields, Unknown};
use super::load::{Alias, Fragment, Setting};
use super::matcher::{check_regex, regex_error, Names, RegistryMatcher, RepoPattern};
use super::private::{KeyValue, NameMatcher, PrivateRule};
use super::{Action, Mode, Operation, Operations, Origin, Problem, ShortNameMode};
use crate::reference::{is_valid_registry_host, normalize_registry, Digest, Name};
use crate::toml_check::{Key, Kind, Node};

/// A `[[rule]]` checked on its own, not yet compiled.
#[derive(Debug)]
pub(crate) struct RawRule {
    pub id: Arc<str>,
    pub message: String,
    pub action: Action,
    pub ops: Operations,
    pub registry: RegistryMatcher,
    pub repository: Option<RepoPattern>,
    pub tag: Option<String>,
    pub digests: Vec<String>,
    pub origin: Origin,
}

const TOP_KEYS: &str =
    "mode, public_registries, search_registries, short_name_mode, aliases, rule, private";
const RULE_KEYS: &str = "id, message, action, operations, registry, repository, tag, digest";
const PRIVATE_KEYS: &str = "id, message, action, name, labels, annotations, provenance";

/// Check one policy text.
pub(crate) fn policy_fragment(file: &str, text: &str) -> (Fragment, Vec<Problem>) {
    let mut fragment = Fragment::new(file);
    let mut ctx = Ctx::new(file, text);
    let root = match crate::toml_check::parse(text) {
        Ok(root) => root,
        Err((span, message)) => {
            ctx.problem(&span, format!("TOML syntax: {message}"));
            return (fragment, ctx.problems);
        }
    };
    let Some(mut top) = ctx.table(&root, "the file") else {
        return (fragment, ctx.problems);
    };
    if let Some(node) = top.take("mode") {
        match ctx.string(node, "mode").as_deref() {
            Some("blocklist") => {
                fragment.mode = Some(Setting::new(Mode::Blocklist, ctx.origin(&node.span)))
            }
            Some("allowlist") => {
                fragment.mode = Some(Setting::new(Mode::Allowlist, ctx.origin(&node.span)))
            }
            Some(other) => ctx.problem(
                &node.span,
                format!("mode {other:?} is not \"blocklist\" or \"allowlist\""),
            ),
            None => {}
        }
    }
    if let Some(node) = top.take("public_registries") {
        if let Some(hosts) = host_list(&mut ctx, node, "public_registries") {
            fragment.public = Some(Setting::new(hosts, ctx.origin(&node.span)));
        }
    }
    if let Some(node) = top.take("search_registries") {
        if let Some(hosts) = host_list(&mut ctx, node, "search_registries") {
            fragment.search = Some(Setting::new(hosts, ctx.origin(&node.span)));
        }
    }
    if let Some(node) = top.take("short_name_mode") {
        let mode = match ctx.string(node, "short_name_mode").as_deref() {
            Some("enforcing") => Some(ShortNameMode::Enforcing),
            Some("permissive") => Some(ShortNameMode::Permissive),
            Some("disabled") => Some(ShortNameMode::Disabled),
            Some(other) => {
                ctx.problem(
                    &node.span,
                    format!("short_name_mode {other:?} is not enforcing, permissive or disabled"),
                );
                None
            }
            None => None,
        };
        fragment.short_name_mode = mode.map(|m| Setting::new(m, ctx.origin(&node.span)));
    }
    if let Some(node) = top.take("aliases") {
        if let Some(table) = ctx.table(node, "[aliases]") {
            for (key, value) in table.entries() {
                if let Some(a) = alias(&mut ctx, key, value, false) {
                    fragment.aliases.push(a);
                }
            }
        }
    }
    if let Some(node) = top.take("rule") {
        for table in ctx.tables(node, "[[rule]]") {
            rule(&mut ctx, table, &mut fragment);
        }
    }
    if let Some(node) = top.take("private") {
        for table in ctx.tables(node, "[[private]]") {
            private(&mut ctx, table, &mut fragment);
        }
    }
    top.finish(&mut ctx, "the policy file", Unknown::Error, TOP_KEYS);
    (fragment, ctx.problems)
}

/// A list of registry hosts, normalised (`index.docker.io` -> `docker.io`).
pub(crate) fn host_list(ctx: &mut Ctx, node: &Node, key: &str) -> Option<Vec<String>> {
    let before = ctx.problems.len();
    let mut hosts = Vec::new();
    for (host, span) in ctx.strings(node, key) {
        if is_valid_registry_host(&host) {
            hosts.push(normalize_registry(&host));
        } else {
            ctx.problem(&span, format!("{host:?} is not a registry host[:port]"));
        }
    }
    (ctx.problems.len() == before).then_some(hosts)
}

/// One `[aliases]` entry. `erase_ok`: registries.conf lets "" erase an earlier alias.
pub(crate) fn alias(ctx: &mut Ctx, key: &Key, value: &Node, erase_ok: bool) -> Option<Alias> {
    let span = value.span.clone().or_else(|| key.span.clone());
    let target = ctx.string(value, &format!("alias {:?}", key.name))?;
    match Name::parse(&key.name) {
        Ok(Name::Short(_)) => {}
        Ok(Name::Qualified { .. }) => {
            ctx.problem(
                &span,
                format!("alias {:?} must be a short name (no registry)", key.name),
            );
            return None;
        }
        Err(e) => {
            ctx.problem(&span, format!("alias {:?}: {e}", key.name));
            return None;
        }
    }
    let origin = ctx.origin(&span);
    if target.is_empty() && erase_ok {
        return Some(Alias {
            short: key.name.clone(),
            target: None,
            origin,
        });
    }
    match Name::parse(&target) {
        Ok(Name::Qualified {
            registry,
            repository,
        }) => Some(Alias {
            short: key.name.clone(),
            target: Some((registry, repository)),
            origin,
        }),
        Ok(Name::Short(_)) => {
            ctx.problem(
                &span,
                format!(
                    "alias {:?} must point at a fully qualified name (registry/repository)",
                    key.name
                ),
            );
            None
        }
        Err(e) => {
            ctx.problem(&span, format!("alias {:?}: {e}", key.name));
            None
        }
    }
}

/// The `id` every rule needs: it names the rule in decisions, logs and metric labels.
fn rule_id(ctx: &mut Ctx, t: &mut Fields, what: &str, fragment: &mut Fragment) -> Option<Arc<str>> {
    let Some(node) = t.take("id") else {
        ctx.problem(&t.span, format!("{what} needs an id"));
        return None;
    };
    let id = ctx.string(node, "id")?;
    let bad = if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > 128 {
        Some("must be at most 128 characters")
    } else if id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        Some("must not contain spaces, quotes or control characters")
    } else if id.starts_with("registries.conf:") {
        Some("must not start with \"registries.conf:\" (reserved for registries.conf blocks)")
    } else {
        None
    };
    if let Some(bad) = bad {
        ctx.problem(&node.span, format!("{what} id {id:?} {bad}"));
        return None;
    }
    let id: Arc<str> = id.into();
    fragment.ids.push((Arc::clone(&id), ctx.origin(&t.span)));
    Some(id)
}

/// A required string key.
fn required(ctx: &mut Ctx, t: &mut Fields, key: &str, what: &str) -> Option<String> {
    match t.take(key) {
        Some(node) => ctx.string(node, &format!("{what}: {key}")),
        None => {
            ctx.problem(&t.span, format!("{what} needs a {key}"));
            None
        }
    }
}

fn rule(ctx: &mut Ctx, mut t: Fields, fragment: &mut Fragment) {
    let before = ctx.problems.len();
    let origin = ctx.origin(&t.span);
    let id = rule_id(ctx, &mut t, "[[rule]]", fragment);
    let what = match &id {
        Some(id) => format!("rule {id:?}"),
        None => "[[rule]]".to_owned(),
    };
    let message = required(ctx, &mut t, "message", &what);
    let action = match t.take("action") {
        None => {
            ctx.problem(
                &t.span,
                format!("{what} needs an action (allow, warn, confirm or deny)"),
            );
            None
        }
        Some(node) => ctx.string(node, &format!("{what}: action")).and_then(|s| {
            s.parse::<Action>()
                .map_err(|e| ctx.problem(&node.span, format!("{what}: {e}")))
                .ok()
        }),
    };
    let mut ops = Operations::ALL;
    if let Some(node) = t.take("operations") {
        ops = Operations::empty();
        let list = ctx.strings(node, &format!("{what}: operations"));
        if matches!(&node.kind, Kind::Array(items) if items.is_empty()) {
            ctx.problem(
                &node.span,
                format!("{what}: operations must not be empty (leave it out for all operations)"),
            );
        }
        for (op, span) in list {
            match op.parse::<Operation>() {
                Ok(op) => ops.insert(op),
                Err(e) => ctx.problem(&span, format!("{what}: {e}")),
            }
        }
    }
    let registry = match t.take("registry") {
        None => Some(RegistryMatcher::Any),
        Some(node) => ctx
            .string(node, &format!("{what}: registry"))
            .and_then(|s| {
                RegistryMatcher::parse(&s)
                    .map_err(|e| ctx.problem(&node.span, format!("{what}: registry {e}")))
                    .ok()
            }),
    };
    let repository_span = t.take("repository").and_then(|n| n.span.clone());
    let repository = t.take("repository").and_then(|node| {
        let s = ctx.string(node, &format!("{what}: repository"))?;
        RepoPattern::parse(&s, Names::Repository)
            .map_err(|e| ctx.problem(&node.span, format!("{what}: repository {e}")))
            .ok()
    });
    let tag_span = t.take("tag").and_then(|n| n.span.clone());
    let tag = t.take("tag").and_then(|node| {
        let s = ctx.string(node, &format!("{what}: tag"))?;
        if s.is_empty() {
            ctx.problem(&node.span, format!("{what}: tag must not be empty"));
            return None;
        }
        Some(s)
    });
    let mut digests = Vec::new();
    if let Some(node) = t.take("digest") {
        for (d, span) in ctx.strings(node, &format!("{what}: digest")) {
            match d.parse::<Digest>() {
                Ok(_) => digests.push(d),
                Err(e) => ctx.problem(&span, format!("{what}: digest {e}")),
            }
        }
        digests.sort();
        digests.dedup();
    }
    let span = t.span.clone();
    t.finish(ctx, &what, Unknown::Error, RULE_KEYS);
    if ctx.problems.len() != before {
        // This rule will not reach the regex sets, where bad regexes are found; check its
        // own now so that the admin still sees every problem at once.
        let regexes = [
            (
                "repository",
                repository_span,
                repository
                    .as_ref()
                    .and_then(|r| r.regex().map(|re| (re, r.to_string()))),
            ),
            ("tag", tag_span, tag.as_deref().map(|t| (t, t.to_owned()))),
        ];
        for (key, at, regex) in regexes {
            if let Some((regex, shown)) = regex {
                if let Err(why) = check_regex(regex) {
                    let at = at.or_else(|| span.clone());
                    ctx.problem(
                        &at,
                        format!("{what}: {key} {shown:?}: invalid regex: {why}"),
                    );
                }
            }
        }
        return;
    }
    let (Some(id), Some(message), Some(action), Some(registry)) = (id, message, action, registry)
    else {
        return;
    };
    let repository = repository.map(|r| r.for_registry(&registry));
    fragment.rules.push(RawRule {
        id,
        message,
        action,
        ops,
        registry,
        repository,
        tag,
        digests,
        origin,
    });
}

fn private(ctx: &mut Ctx, mut t: Fields, fragment: &mut Fragment) {
    let before = ctx.problems.len();
    let id = rule_id(ctx, &mut t, "[[private]]", fragment);
    let what = match &id {
        Some(id) => format!("private {id:?}"),
        None => "[[private]]".to_owned(),
    };
    let message = required(ctx, &mut t, "message", &what);
    let action = match t.take("action") {
        None => {
            ctx.problem(
                &t.span,
                format!("{what} needs an action (warn, confirm or reject)"),
            );
            None
        }
        Some(node) => {
            match ctx.string(node, &format!("{what}: action")).as_deref() {
                Some("warn") => Some(Action::Warn),
                Some("confirm") => Some(Action::Confirm),
                Some("reject") => Some(Action::Deny),
                Some(other) => {
                    ctx.problem(
                    &node.span,
                    format!("{what}: unknown action {other:?} (expected one of: warn, confirm, reject)"),
                );
                    None
                }
                None => None,
            }
        }
    };
    let mut names = Vec::new();
    if let Some(node) = t.take("name") {
        for (s, span) in ctx.strings(node, &format!("{what}: name")) {
            let pattern = match RepoPattern::parse(&s, Names::Qualified) {
                Ok(p) => p,
                Err(e) => {
                    ctx.problem(&span, format!("{what}: name {e}"));
                    continue;
                }
            };
            let regex = match pattern.regex() {
                None => None,
                Some(re) => match RegexBuilder::new(re).unicode(false).build() {
                    Ok(re) => Some(re),
                    Err(e) => {
                        ctx.problem(&span, format!("{what}: name {s:?}: {}", regex_error(&e)));
                        continue;
                    }
                },
            };
            names.push(NameMatcher { pattern, regex });
        }
    }
    let key_values = |key: &str, ctx: &mut Ctx, t: &mut Fields| {
        let mut out = Vec::new();
        if let Some(node) = t.take(key) {
            for (s, span) in ctx.strings(node, &format!("{what}: {key}")) {
                match KeyValue::parse(&s) {
                    Ok(kv) => out.push(kv),
                    Err(e) => ctx.problem(&span, format!("{what}: {key} {e}")),
                }
            }
        }
        out
    };
    let labels = key_values("labels", ctx, &mut t);
    let annotations = key_values("annotations", ctx, &mut t);
    let provenance = t
        .take("provenance")
        .and_then(|node| ctx.boolean(node, &format!("{what}: provenance")))
        .unwrap_or(false);
    if ctx.problems.len() == before
        && names.is_empty()
        && labels.is_empty()
        && annotations.is_empty()
        && !provenance
    {
        ctx.problem(
            &t.span,
            format!("{what} needs at least one of name, labels, annotations, provenance = true"),
        );
    }
    t.finish(ctx, &what, Unknown::Error, PRIVATE_KEYS);
    if ctx.problems.len() != before {
        return;
    }
    let (Some(id), Some(message), Some(action)) = (id, message, action) else {
        return;
    };
    fragment.private.push(PrivateRule {
        id,
        message,
        action,
        names,
        labels,
        annotations,
        provenance,
    });
}

#[cfg(test)]
mod tests {
    use super::super::load::parse;
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse("p.toml", text) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_problem_at_once_with_its_line() {
        let text = r#"mode = "whitelist"
colour = "blue"

[[rule]]
id = "a"
message = "m"
action = "block"
operations = ["pull", "fetch"]
registry = "quay.io/x"
repository = "Team/"
tag = "^(latest$"
digest = "sha256:abc"
extra = 1

[[rule]]
id = "b"
message = "m"
action = "deny"
repository = "team/[x"

[[rule]]
id = "c"
message = "m"
action = "deny"
repository = "regex:^team/(x"

[[rule]]
id = "c"
message = "m"
action = "deny"
tag = "^(v1"

[[rule]]
message = "no id"

[[private]]
id = "p"
message = "m"
action = "deny"
labels = ["=x"]

[[private]]
id = "q"
message = "m"
action = "warn"
"#;
        let got = problems(text);
        let expected = [
            "p.toml:1: mode \"whitelist\" is not \"blocklist\" or \"allowlist\"",
            "p.toml:2: unknown key \"colour\" in the policy file (known: mode, public_registries, search_registries, short_name_mode, aliases, rule, private)",
            "p.toml:7: rule \"a\": unknown action \"block\" (expected one of: allow, warn, confirm, deny)",
            "p.toml:8: rule \"a\": unknown operation \"fetch\" (expected one of: pull, push, search, list, delete)",
            "p.toml:9: rule \"a\": registry \"quay.io/x\" is not a registry host; put the path in `repository`",
            "p.toml:10: rule \"a\": repository invalid repository name \"Team\": repository names must be lowercase (a pattern is a name, `prefix/`, a glob or `regex:...`)",
            "p.toml:11: rule \"a\": tag \"^(latest$\": invalid regex: unclosed group",
            "p.toml:12: rule \"a\": digest invalid digest \"sha256:abc\": sha256 needs 64 hex characters, got 3",
            "p.toml:13: unknown key \"extra\" in rule \"a\" (known: id, message, action, operations, registry, repository, tag, digest)",
            "p.toml:19: rule \"b\": repository \"team/[x\": unclosed `[`",
            "p.toml:21: rule \"c\": repository \"regex:^team/(x\": invalid regex: unclosed group",
            "p.toml:27: duplicate id \"c\": already used at p.toml:21",
            "p.toml:27: rule \"c\": tag \"^(v1\": invalid regex: unclosed group",
            "p.toml:33: [[rule]] needs an id",
            "p.toml:33: [[rule]] needs an action (allow, warn, confirm or deny)",
            "p.toml:39: private \"p\": unknown action \"deny\" (expected one of: warn, confirm, reject)",
            "p.toml:40: private \"p\": labels \"=x\" has no key (write \"key=value\" or \"key\")",
            "p.toml:42: private \"q\" needs at least one of name, labels, annotations, provenance = true",
        ];
        assert_eq!(got, expected, "\n{}", got.join("\n"));
    }

    #[test]
    fn syntax_errors_are_located() {
        let got = problems("[[rule]]\nid = \"a\"\nmessage = \"unterminated\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("p.toml:3: TOML syntax: "), "{got:?}");
        let got = problems("[[rule]]\nid = \"a\"\nid = \"b\"\n");
        assert!(
            got[0].starts_with("p.toml:3: TOML syntax: ") && got[0].contains("duplicate"),
            "{got:?}"
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let got = problems("mode = 1\npublic_registries = \"docker.io\"\nsearch_registries = [\"bad host\"]\nrule = 3\n[aliases]\nx = 1\n");
        assert_eq!(
            got,
            [
                "p.toml:1: mode must be a string, found an integer",
                "p.toml:3: \"bad host\" is not a registry host[:port]",
                "p.toml:4: [[rule]] must be an array of tables ([[...]]), found an integer",
                "p.toml:6: alias \"x\" must be a string, found an integer",
            ]
        );
    }

    #[test]
    fn settings_load() {
        let p = parse(
            "p.toml",
            "mode = \"allowlist\"\npublic_registries = [\"Index.Docker.io\", \"registry.example.com:5000\"]\nsearch_registries = [\"quay.io\"]\n[aliases]\n\"team/app\" = \"quay.io/team/app\"\n",
        )
        .unwrap();
        assert_eq!(p.mode(), Mode::Allowlist);
        assert_eq!(
            p.public_registries(),
            ["docker.io", "registry.example.com:5000"]
        );
        assert!(p.is_public("registry.example.com:5000") && !p.is_public("quay.io"));
        assert_eq!(p.search_registries(), Some(&["quay.io".to_owned()][..]));
        assert_eq!(p.aliases()["team/app"].0, "quay.io");
    }
}
