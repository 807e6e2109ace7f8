//! Reading containers-registries.conf(5), version 2 (and the deprecated version 1 tables, which
//! are converted as containers/image converts them): `unqualified-search-registries`,
//! `short-name-mode`, `[aliases]` and `[[registry]]` tables with `prefix`, `location`,
//! `insecure`, `blocked`, `mirror-by-digest-only` and `[[registry.mirror]]`s. `registries`
//! answers the questions; this module only checks the file.
//!
//! Unknown keys are warnings, not errors: the format is shared with podman, buildah, skopeo and
//! CRI-O, which extend it. A `[[registry]]` with a `prefix` and no `location` is accepted as
//! "no rewrite" where containers/image refuses it.

use std::collections::HashMap;

use super::check::{Ctx, Fields, Unknown};
use super::load::{Fragment, Setting};
use super::policy_file::{alias, host_list};
use super::registries::{Entry, Mirror, Prefix, PullFromMirror};
use super::{Origin, Problem, ShortNameMode};
use crate::reference::{is_valid_registry_host, normalize_registry};
use crate::toml_check::Node;

const TOP_KEYS: &str = "unqualified-search-registries, short-name-mode, registry, aliases";
const REGISTRY_KEYS: &str = "prefix, location, insecure, blocked, mirror, mirror-by-digest-only";
/// Keys of the format we know but do not use: a warning says so instead of "unknown".
const UNUSED_KEYS: &[&str] = &["credential-helpers", "additional-layer-store-auth-helper"];

/// Check one registries.conf text.
pub(crate) fn fragment(file: &str, text: &str) -> (Fragment, Vec<Problem>) {
    let mut fragment = Fragment::new(file);
    let root = match crate::toml_check::parse(text) {
        Ok(root) => root,
        Err((span, message)) => {
            let mut ctx = Ctx::new(file, text);
            ctx.problem(&span, format!("TOML syntax: {message}"));
            return (fragment, ctx.problems);
        }
    };
    let mut ctx = Ctx::new(file, text);
    let Some(mut top) = ctx.table(&root, "the file") else {
        return (fragment, ctx.problems);
    };
    for key in UNUSED_KEYS {
        if let Some(node) = top.take(key) {
            ctx.warning(
                &node.span,
                format!("{key} is not used by portcullis; ignored"),
            );
        }
    }
    let v2 = top.take("unqualified-search-registries").is_some()
        || top.take("registry").is_some()
        || top.take("short-name-mode").is_some()
        || top.take("aliases").is_some();
    // Taken again below; `take` is idempotent and only marks the key as known.
    if let Some(node) = top.take("unqualified-search-registries") {
        if let Some(hosts) = host_list(&mut ctx, node, "unqualified-search-registries") {
            fragment.search = Some(Setting::new(hosts, ctx.origin(&node.span)));
        }
    }
    if let Some(node) = top.take("short-name-mode") {
        if let Some(mode) = ctx.string(node, "short-name-mode") {
            match mode.as_str() {
                "enforcing" => {
                    fragment.short_name_mode = Some(Setting::new(
                        ShortNameMode::Enforcing,
                        ctx.origin(&node.span),
                    ))
                }
                "permissive" | "" => {
                    fragment.short_name_mode = Some(Setting::new(
                        ShortNameMode::Permissive,
                        ctx.origin(&node.span),
                    ))
                }
                "disabled" => {
                    fragment.short_name_mode = Some(Setting::new(
                        ShortNameMode::Disabled,
                        ctx.origin(&node.span),
                    ))
                }
                other => ctx.problem(
                    &node.span,
                    format!("short-name-mode {other:?} is not enforcing, permissive or disabled"),
                ),
            }
        }
    }
    if let Some(node) = top.take("aliases") {
        if let Some(table) = ctx.table(node, "[aliases]") {
            for (key, value) in table.entries() {
                if let Some(a) = alias(&mut ctx, key, value, true) {
                    fragment.aliases.push(a);
                }
            }
        }
    }
    if let Some(node) = top.take("registry") {
        for table in ctx.tables(node, "[[registry]]") {
            if let Some(entry) = registry(&mut ctx, table) {
                fragment.entries.push(entry);
            }
        }
    }
    if let Some(node) = top.take("registries") {
        if v2 {
            ctx.problem(
                &node.span,
                "mixing the version 1 [registries.*] tables with version 2 keys is not supported",
            );
        } else {
            version1(&mut ctx, node, &mut fragment);
        }
    }
    top.finish(&mut ctx, "registries.conf", Unknown::Warn, TOP_KEYS);
    fragment.warnings = std::mem::take(&mut ctx.warnings);
    fragment.warnings.sort_by_key(|w| w.line);
    (fragment, ctx.problems)
}

fn registry(ctx: &mut Ctx, mut t: Fields) -> Option<Entry> {
    let origin = ctx.origin(&t.span);
    let prefix_node = t.take("prefix");
    let location_node = t.take("location");
    let mut ok = true;
    let location = match location_node {
        Some(node) => match ctx
            .string(node, "location")
            .map(|l| Prefix::parse(&l, false))
        {
            Some(Ok(l)) => Some(l.text),
            Some(Err(e)) => {
                ctx.problem(&node.span, format!("[[registry]] location {e}"));
                ok = false;
                None
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let prefix = match (prefix_node, &location) {
        (Some(node), _) => match ctx.string(node, "prefix").map(|p| Prefix::parse(&p, true)) {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                ctx.problem(&node.span, format!("[[registry]] prefix {e}"));
                None
            }
            None => None,
        },
        (None, Some(l)) => Prefix::parse(l, false).ok(),
        (None, None) => {
            if ok {
                ctx.problem(&t.span, "[[registry]] needs a prefix or a location");
            }
            None
        }
    };
    let insecure = flag(&mut t, "insecure", ctx);
    let blocked = flag(&mut t, "blocked", ctx);
    let by_digest_only = flag(&mut t, "mirror-by-digest-only", ctx);
    if let Some(node) = t.take("pull-from-mirror") {
        ctx.problem(
            &node.span,
            "pull-from-mirror belongs in [[registry.mirror]], not in [[registry]]",
        );
    }
    let mut mirrors = Vec::new();
    if let Some(node) = t.take("mirror") {
        for m in ctx.tables(node, "[[registry.mirror]]") {
            if let Some(m) = mirror(ctx, m, by_digest_only) {
                mirrors.push(m);
            }
        }
    }
    t.finish(ctx, "[[registry]]", Unknown::Warn, REGISTRY_KEYS);
    Some(Entry {
        prefix: prefix?,
        location,
        insecure,
        blocked,
        mirrors,
        origin,
        rule: None,
    })
    .filter(|_| ok)
}

/// An optional boolean key, false when absent.
fn flag(t: &mut Fields, key: &str, ctx: &mut Ctx) -> bool {
    t.take(key)
        .and_then(|node| ctx.boolean(node, key))
        .unwrap_or(false)
}

fn mirror(ctx: &mut Ctx, mut t: Fields, by_digest_only: bool) -> Option<Mirror> {
    let location = match t.take("location") {
        Some(node) => match ctx
            .string(node, "location")
            .map(|l| Prefix::parse(&l, false))
        {
            Some(Ok(l)) => Some(l.text),
            Some(Err(e)) => {
                ctx.problem(&node.span, format!("[[registry.mirror]] location {e}"));
                None
            }
            None => None,
        },
        None => {
            ctx.problem(&t.span, "[[registry.mirror]] needs a location");
            None
        }
    };
    let insecure = flag(&mut t, "insecure", ctx);
    let mut pull_from_mirror = if by_digest_only {
        PullFromMirror::DigestOnly
    } else {
        PullFromMirror::All
    };
    if let Some(node) = t.take("pull-from-mirror") {
        match ctx.string(node, "pull-from-mirror").as_deref() {
            _ if by_digest_only => ctx.problem(
                &node.span,
                "pull-from-mirror cannot be combined with the registry's mirror-by-digest-only",
            ),
            Some("all") => pull_from_mirror = PullFromMirror::All,
            Some("digest-only") => pull_from_mirror = PullFromMirror::DigestOnly,
            Some("tag-only") => pull_from_mirror = PullFromMirror::TagOnly,
            Some(other) => ctx.problem(
                &node.span,
                format!("pull-from-mirror {other:?} is not all, digest-only or tag-only"),
            ),
            None => {}
        }
    }
    t.finish(
        ctx,
        "[[registry.mirror]]",
        Unknown::Warn,
        "location, insecure, pull-from-mirror",
    );
    Some(Mirror {
        location: location?,
        insecure,
        pull_from_mirror,
    })
}

/// `[registries.search|insecure|block] registries = [...]`, converted as containers/image does.
fn version1(ctx: &mut Ctx, node: &Node, fragment: &mut Fragment) {
    let Some(mut t) = ctx.table(node, "[registries]") else {
        return;
    };
    let mut lists: Vec<(&str, Vec<(String, Origin)>)> = Vec::new();
    for kind in ["search", "insecure", "block"] {
        let Some(node) = t.take(kind) else { continue };
        let Some(mut inner) = ctx.table(node, &format!("[registries.{kind}]")) else {
            continue;
        };
        if let Some(list) = inner.take("registries") {
            let hosts = ctx.strings(list, "registries");
            let hosts = hosts
                .into_iter()
                .map(|(h, span)| (h, ctx.origin(&span)))
                .collect();
            lists.push((kind, hosts));
        }
        inner.finish(
            ctx,
            &format!("[registries.{kind}]"),
            Unknown::Warn,
            "registries",
        );
    }
    t.finish(
        ctx,
        "[registries]",
        Unknown::Warn,
        "search, insecure, block",
    );
    let mut by_host: HashMap<String, usize> = HashMap::new();
    for (kind, hosts) in lists {
        if kind == "search" {
            let origin = hosts.first().map(|(_, o)| o.clone());
            let mut search = Vec::new();
            for (h, o) in hosts {
                if is_valid_registry_host(&h) {
                    search.push(normalize_registry(&h));
                } else {
                    ctx.problem_at(&o, format!("{h:?} is not a registry host[:port]"));
                }
            }
            if let Some(origin) = origin {
                fragment.search = Some(Setting::new(search, origin));
            }
            continue;
        }
        for (h, origin) in hosts {
            let prefix = match Prefix::parse(&h, true) {
                Ok(p) => p,
                Err(e) => {
                    ctx.problem_at(&origin, format!("[registries.{kind}] {e}"));
                    continue;
                }
            };
            let at = *by_host.entry(prefix.text.clone()).or_insert_with(|| {
                fragment.entries.push(Entry {
                    prefix,
                    location: None,
                    insecure: false,
                    blocked: false,
                    mirrors: Vec::new(),
                    origin,
                    rule: None,
                });
                fragment.entries.len() - 1
            });
            if kind == "block" {
                fragment.entries[at].blocked = true;
            } else {
                fragment.entries[at].insecure = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{compile, Action, Operation, Policy, Subject};
    use super::*;

    fn conf(text: &str) -> Policy {
        let (fragment, problems) = fragment("registries.conf", text);
        assert!(problems.is_empty(), "{problems:?}");
        compile(vec![fragment]).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn problems(text: &str) -> Vec<String> {
        let (fragment, problems) = fragment("r.conf", text);
        match super::super::load::compile_with(vec![fragment], problems, Vec::new()) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn version_1_tables_convert() {
        let p = conf(
            "[registries.search]\nregistries = ['registry1.com', 'registry2.com']\n[registries.insecure]\nregistries = ['registry3.com']\n[registries.block]\nregistries = ['registry.untrusted.com']\n",
        );
        assert_eq!(p.search_registries().map(<[String]>::len), Some(2));
        assert!(p.insecure("registry3.com", "x"));
        let pull = Subject {
            op: Operation::Pull,
            registry: "registry.untrusted.com",
            repository: "x",
            tag: None,
            digest: None,
        };
        assert_eq!(p.evaluate(&pull).action, Action::Deny);
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let text = "credential-helpers = [\"x\"]\nfuture-key = 1\n[[registry]]\nlocation = \"quay.io\"\nnew-thing = true\n";
        let (fragment, problems) = fragment("r.conf", text);
        assert!(problems.is_empty(), "{problems:?}");
        let warnings: Vec<String> = fragment.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "r.conf:1: credential-helpers is not used by portcullis; ignored",
                "r.conf:2: unknown key \"future-key\" in registries.conf ignored",
                "r.conf:5: unknown key \"new-thing\" in [[registry]] ignored",
            ]
        );
        let p = compile(vec![fragment]).unwrap();
        assert_eq!(p.warnings().len(), 3);
    }

    #[test]
    fn every_problem_with_its_line() {
        let text = r#"unqualified-search-registries = ["ok.io", "bad host"]
short-name-mode = "strict"
[[registry]]
prefix = "https://quay.io"
location = "quay.io"
[[registry]]
insecure = true
[[registry]]
location = "quay.io"
pull-from-mirror = "all"
[[registry.mirror]]
pull-from-mirror = "sometimes"
[[registry]]
location = "quay.io"
[aliases]
"quay.io/x" = "quay.io/y"
"short" = "also-short"
"#;
        assert_eq!(
            problems(text),
            [
                "r.conf:1: \"bad host\" is not a registry host[:port]",
                "r.conf:2: short-name-mode \"strict\" is not enforcing, permissive or disabled",
                "r.conf:4: [[registry]] prefix \"https://quay.io\": URI schemes are not supported; write host[:port][/path]",
                "r.conf:6: [[registry]] needs a prefix or a location",
                "r.conf:10: pull-from-mirror belongs in [[registry.mirror]], not in [[registry]]",
                "r.conf:11: [[registry.mirror]] needs a location",
                "r.conf:12: pull-from-mirror \"sometimes\" is not all, digest-only or tag-only",
                "r.conf:13: [[registry]] prefix \"quay.io\" is already configured at r.conf:8",
                "r.conf:16: alias \"quay.io/x\" must be a short name (no registry)",
                "r.conf:17: alias \"short\" must point at a fully qualified name (registry/repository)",
            ]
        );
    }
}
