//! Policy and registries.conf files -> a compiled [`Policy`], with every problem reported at
//! once as `file:line: message`.
//!
//! Loading is two-staged. Each file is checked on its own into a [`Fragment`] (syntax, unknown
//! keys, bad values, bad globs), then [`compile`] merges the fragments (duplicate ids,
//! conflicting settings), compiles the regex sets (bad regexes) and builds the index. Both
//! stages run even when the first found problems, so one `portcullis policy check` lists them
//! all. A file whose name ends in `.conf` is read as containers-registries.conf(5); any other
//! as a portcullis policy (format: `policies/README.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::{BadRegex, Index, RepoRegex};
use super::matcher::{RegistryMatcher, RepoPattern, RepoSpecificity, Specificity};
use super::policy_file::{policy_fragment, RawRule};
use super::private::{PrivateRule, PrivateRules};
use super::registries::{Entry, Registries};
use super::registries_conf;
use super::rule::Rule;
use super::signature::{containers_policy, registries_d, trust};
use super::{
    Action, Mode, Operations, Origin, Policy, Problem, ShortNameMode, DEFAULT_PUBLIC_REGISTRIES,
};
use crate::reference::Repository;

/// A setting and where it was written, so that a conflicting second one can name the first.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Setting<T> {
    pub fn new(value: T, origin: Origin) -> Setting<T> {
        Setting { value, origin }
    }
}

/// `short = "registry/repository"`; a None target (an empty string in registries.conf)
/// erases an alias an earlier file set.
#[derive(Debug, Clone)]
pub(crate) struct Alias {
    pub short: String,
    pub target: Option<(String, Repository)>,
    pub origin: Origin,
}

/// One checked file, policy or registries.conf: the unit [`compile`] merges.
#[derive(Debug, Default)]
pub struct Fragment {
    /// The file's name as problems show it; problems are sorted by file in fragment order.
    pub(crate) file: String,
    pub(crate) mode: Option<Setting<Mode>>,
    pub(crate) public: Option<Setting<Vec<String>>>,
    pub(crate) search: Option<Setting<Vec<String>>>,
    pub(crate) short_name_mode: Option<Setting<ShortNameMode>>,
    pub(crate) aliases: Vec<Alias>,
    pub(crate) rules: Vec<RawRule>,
    pub(crate) private: Vec<PrivateRule>,
    /// Every `[[rule]]` and `[[private]]` id seen, even of rules with other problems, so that
    /// duplicates are still found.
    pub(crate) ids: Vec<(Arc<str>, Origin)>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) warnings: Vec<Problem>,
    /// A containers-policy.json or registries.d file's content.
    pub(crate) signature: Option<trust::Part>,
}

impl Fragment {
    pub(crate) fn new(file: &str) -> Fragment {
        Fragment {
            file: file.to_owned(),
            ..Fragment::default()
        }
    }

    /// Check one portcullis policy text. `file` names it in problems.
    pub fn from_policy(file: &str, text: &str) -> Result<Fragment, Vec<Problem>> {
        ok_or_problems(policy_fragment(file, text))
    }

    /// Check one containers-registries.conf(5) text.
    pub fn from_registries_conf(file: &str, text: &str) -> Result<Fragment, Vec<Problem>> {
        ok_or_problems(registries_conf::fragment(file, text))
    }

    /// Problems that do not stop loading (unknown registries.conf keys).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }
}

fn ok_or_problems(
    (fragment, problems): (Fragment, Vec<Problem>),
) -> Result<Fragment, Vec<Problem>> {
    if problems.is_empty() {
        Ok(fragment)
    } else {
        Err(problems)
    }
}

/// Compile one policy text on its own (tests, benchmarks, `policy explain` of a single file).
pub fn parse(file: &str, text: &str) -> Result<Policy, Vec<Problem>> {
    let (fragment, problems) = policy_fragment(file, text);
    compile_with(vec![fragment], problems, Vec::new())
}

/// Read and check one registries.conf file.
pub fn load_registries_conf(path: &Path) -> Result<Fragment, Vec<Problem>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            file: name.clone(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    Fragment::from_registries_conf(&name, &text)
}

/// Load and merge policy files, in order. A directory stands for its `*.toml` and `*.conf`
/// files in name order; `*.conf` files are registries.conf(5), the rest policy files. On any
/// problem, every problem found in every file comes back and nothing is compiled: a reloader
/// keeps the policy it has. An empty file (only comments and whitespace) and a directory with
/// no policy file are problems: a source that vanished must not turn into "allow everything".
pub fn load(paths: &[PathBuf]) -> Result<Policy, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let unreadable = |path: &Path, e: std::io::Error| Problem {
        file: path.display().to_string(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    };
    for path in paths {
        match std::fs::metadata(path) {
            Err(e) => problems.push(unreadable(path, e)),
            Ok(meta) if meta.is_dir() => match std::fs::read_dir(path) {
                Err(e) => problems.push(unreadable(path, e)),
                Ok(dir) => {
                    let mut inside: Vec<PathBuf> = dir
                        .filter_map(Result::ok)
                        .map(|entry| entry.path())
                        .filter(|p| {
                            p.is_file()
                                && matches!(
                                    p.extension().and_then(|e| e.to_str()),
                                    Some("toml" | "conf" | "json" | "yaml")
                                )
                        })
                        .collect();
                    if inside.is_empty() {
                        // A directory whose files were deleted or renamed away would
                        // otherwise load as an empty policy, which allows everything.
                        problems.push(Problem {
                            file: path.display().to_string(),
                            line: None,
                            key: String::new(),
                            message: format!(
                                "holds no policy file (*.toml, *.conf, *.json or *.yaml); {ALLOW_ALL_HINT}"
                            ),
                        });
                    }
                    inside.sort();
                    files.extend(inside);
                }
            },
            Ok(_) => files.push(path.clone()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));

    let mut fragments = Vec::new();
    for path in &files {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(unreadable(path, e)),
            Ok(text) if is_blank(&text) => problems.push(Problem {
                file: name,
                line: None,
                key: String::new(),
                message: format!(
                    "is empty (nothing but comments and whitespace); {ALLOW_ALL_HINT}"
                ),
            }),
            Ok(text) => {
                let (fragment, found) = match kind_of(path) {
                    Kind::RegistriesConf => registries_conf::fragment(&name, &text),
                    Kind::SignaturePolicy | Kind::RegistriesD => {
                        signature_fragment(path, &name, &text)
                    }
                    Kind::Policy => policy_fragment(&name, &text),
                };
                problems.extend(found);
                fragments.push(fragment);
            }
        }
    }
    compile_with(fragments, problems, files)
}

/// Why an empty source is refused, and how to say "allow everything" on purpose.
const ALLOW_ALL_HINT: &str = "an empty policy would allow everything, so it is refused \
     (the policy in force stays); to allow everything on purpose, write mode = \"blocklist\" \
     in a policy file";

/// A file that says nothing: truncated, or only comments and whitespace. TOML and
/// registries.conf alike start a comment with `#`.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// What a file is, by its name: `*.conf` is containers-registries.conf(5), `*.json`
/// containers-policy.json(5), `*.yaml` containers-registries.d(5), the rest portcullis
/// policy files.
enum Kind {
    Policy,
    RegistriesConf,
    SignaturePolicy,
    RegistriesD,
}

fn kind_of(path: &Path) -> Kind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("conf") => Kind::RegistriesConf,
        Some("json") => Kind::SignaturePolicy,
        Some("yaml") => Kind::RegistriesD,
        _ => Kind::Policy,
    }
}

/// A containers-policy.json or registries.d file as a fragment that sets nothing else.
fn signature_fragment(path: &Path, name: &str, text: &str) -> (Fragment, Vec<Problem>) {
    let mut fragment = Fragment::new(name);
    let part = match kind_of(path) {
        Kind::SignaturePolicy => containers_policy::parse(name, text).map(trust::Part::Policy),
        _ => registries_d::parse(name, text).map(trust::Part::Registries),
    };
    match part {
        Ok(part) => {
            fragment.signature = Some(part);
            (fragment, Vec::new())
        }
        Err(problem) => (fragment, vec![problem]),
    }
}

/// Merge fragments into one policy.
pub fn compile(fragments: Vec<Fragment>) -> Result<Policy, Vec<Problem>> {
    compile_with(fragments, Vec::new(), Vec::new())
}

fn at(origin: &Origin, message: String) -> Problem {
    Problem {
        file: origin.file.to_string(),
        line: Some(origin.line),
        key: String::new(),
        message,
    }
}

/// A setting may be given in several files only if they agree.
fn merge<T: PartialEq>(
    slot: &mut Option<Setting<T>>,
    new: Option<Setting<T>>,
    key: &str,
    show: impl Fn(&T) -> String,
    problems: &mut Vec<Problem>,
) {
    let Some(new) = new else { return };
    match slot {
        Some(old) if old.value != new.value => problems.push(at(
            &new.origin,
            format!(
                "{key} is {} here but {} at {}; set it once",
                show(&new.value),
                show(&old.value),
                old.origin
            ),
        )),
        Some(_) => {}
        None => *slot = Some(new),
    }
}

/// Sort key of a file: its place in load order, 0 for files that never became a fragment.
fn rank_of(files: &[String], file: &str) -> usize {
    files.iter().position(|f| f == file).map_or(0, |i| i + 1)
}

/// Interns a regex: rules sharing one pattern share one slot in the sets.
struct Interned<'a> {
    ids: HashMap<String, u32>,
    /// regex, first component, shown as, first user (rule id, origin)
    entries: Vec<(String, Option<String>, String, &'a RawRule)>,
}

impl<'a> Interned<'a> {
    fn new() -> Interned<'a> {
        Interned {
            ids: HashMap::new(),
            entries: Vec::new(),
        }
    }

    fn id(&mut self, regex: &str, first: Option<&str>, shown: String, rule: &'a RawRule) -> u32 {
        if let Some(&id) = self.ids.get(regex) {
            return id;
        }
        let id = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.ids.insert(regex.to_owned(), id);
        self.entries
            .push((regex.to_owned(), first.map(str::to_owned), shown, rule));
        id
    }
}

pub(crate) fn compile_with(
    fragments: Vec<Fragment>,
    mut problems: Vec<Problem>,
    sources: Vec<PathBuf>,
) -> Result<Policy, Vec<Problem>> {
    let mut mode = None;
    let mut public = None;
    let mut search = None;
    let mut short_name_mode = None;
    let mut aliases: HashMap<String, (Option<(String, Repository)>, Origin)> = HashMap::new();
    let mut ids: HashMap<Arc<str>, Origin> = HashMap::new();
    let mut raw_rules = Vec::new();
    let mut private = Vec::new();
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    let mut signatures = trust::Collect::default();
    let files: Vec<String> = fragments.iter().map(|f| f.file.clone()).collect();
    for f in fragments {
        let list = |v: &Vec<String>| format!("{v:?}");
        merge(
            &mut mode,
            f.mode,
            "mode",
            |m| format!("{:?}", m.as_str()),
            &mut problems,
        );
        merge(
            &mut public,
            f.public,
            "public_registries",
            list,
            &mut problems,
        );
        merge(
            &mut search,
            f.search,
            "the search registry list",
            list,
            &mut problems,
        );
        let short = |m: &ShortNameMode| format!("{:?}", m.as_str());
        merge(
            &mut short_name_mode,
            f.short_name_mode,
            "the short-name mode",
            short,
            &mut problems,
        );
        for a in f.aliases {
            if let (Some((Some(old), old_origin)), Some(new)) = (aliases.get(&a.short), &a.target) {
                if old != new {
                    problems.push(at(
                        &a.origin,
                        format!(
                            "alias {:?} already points at {}/{} at {old_origin}",
                            a.short, old.0, old.1
                        ),
                    ));
                    continue;
                }
            }
            aliases.insert(a.short, (a.target, a.origin));
        }
        for (id, origin) in f.ids {
            match ids.get(&id) {
                Some(first) => problems.push(at(
                    &origin,
                    format!("duplicate id {id:?}: already used at {first}"),
                )),
                None => {
                    ids.insert(id, origin);
                }
            }
        }
        if let Some(part) = f.signature {
            if let Err(problem) = signatures.add(&f.file, part) {
                problems.push(problem);
            }
        }
        raw_rules.extend(f.rules);
        private.extend(f.private);
        entries.extend(f.entries);
        warnings.extend(f.warnings);
    }

    let mut repo_regexes = Interned::new();
    let mut tag_regexes = Interned::new();
    let mut rules = Vec::with_capacity(raw_rules.len());
    for r in &raw_rules {
        let repository_id = r.repository.as_ref().and_then(|p| {
            p.regex()
                .map(|re| repo_regexes.id(re, p.first_component(), p.to_string(), r))
        });
        let tag = r
            .tag
            .as_ref()
            .map(|t| (t.clone(), tag_regexes.id(t, None, t.clone(), r)));
        rules.push(Rule {
            id: Arc::clone(&r.id),
            message: r.message.clone(),
            action: r.action,
            ops: r.ops,
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            repository_id,
            specificity: Specificity {
                digest: !r.digests.is_empty(),
                tag: tag.is_some(),
                repository: r
                    .repository
                    .as_ref()
                    .map_or(RepoSpecificity::None, RepoPattern::specificity),
                registry: r.registry.specificity(),
            },
            tag,
            digests: r.digests.clone().into_boxed_slice(),
            origin: r.origin.clone(),
            registries_conf_entry: None,
        });
    }
    for (i, entry) in entries.iter_mut().enumerate() {
        if !entry.blocked {
            continue;
        }
        entry.rule = u32::try_from(rules.len()).ok();
        rules.push(Rule {
            id: format!("registries.conf:{}", entry.prefix).into(),
            // Users read this; the file's path stays in `explain` and the logs.
            message: format!(
                "{} is blocked by the registries.conf policy (blocked = true)",
                entry.prefix
            ),
            action: Action::Deny,
            ops: Operations::ALL,
            registry: RegistryMatcher::Any,
            repository: None,
            repository_id: None,
            tag: None,
            digests: Box::new([]),
            specificity: entry.prefix.specificity(),
            origin: entry.origin.clone(),
            registries_conf_entry: Some(i),
        });
    }
    let registries = Registries::new(entries, &mut problems);

    let repo_list: Vec<RepoRegex> = repo_regexes
        .entries
        .iter()
        .map(|(regex, first, _, _)| RepoRegex {
            regex,
            first: first.as_deref(),
        })
        .collect();
    let tag_list: Vec<&str> = tag_regexes.entries.iter().map(|e| e.0.as_str()).collect();
    let index = match Index::build(&rules, &repo_list, &tag_list) {
        Ok(index) => index,
        Err(bad) => {
            for b in bad {
                let (interned, id, key, why) = match b {
                    BadRegex::Repository(id, why) => (&repo_regexes, id, "repository", why),
                    BadRegex::Tag(id, why) => (&tag_regexes, id, "tag", why),
                };
                if let Some((_, _, shown, rule)) = interned.entries.get(id as usize) {
                    problems.push(at(
                        &rule.origin,
                        format!("rule {:?}: {key} {shown:?}: invalid regex: {why}", rule.id),
                    ));
                }
            }
            Index::default()
        }
    };
    let trust = match signatures.finish() {
        Ok((trust, unused)) => {
            warnings.extend(unused);
            trust
        }
        Err(found) => {
            problems.extend(found);
            None
        }
    };
    warnings.sort_by_key(|w: &Problem| (rank_of(&files, &w.file), w.line));
    if !problems.is_empty() {
        // By file in load order, then by line: the order an admin reads them in. Files with
        // no fragment (unreadable) come first.
        problems.sort_by_key(|p| (rank_of(&files, &p.file), p.line));
        return Err(problems);
    }
    Ok(Policy {
        mode: mode.map_or(Mode::Blocklist, |s| s.value),
        rules,
        index,
        registries,
        private: PrivateRules::new(private),
        public: public.map_or_else(
            || DEFAULT_PUBLIC_REGISTRIES.map(str::to_owned).to_vec(),
            |s| s.value,
        ),
        search: search.map(|s| s.value),
        aliases: aliases
            .into_iter()
            .filter_map(|(short, (target, _))| target.map(|t| (short, t)))
            .collect(),
        short_name_mode: short_name_mode.map_or_else(ShortNameMode::default, |s| s.value),
        warnings,
        sources,
        trust: trust.map(Arc::new),
    })
}

#[cfg(test)]
mod tests {
    use super::super::Operation;
    use super::*;

    #[test]
    fn conflicting_settings_across_files_name_both() {
        let a = Fragment::from_policy("a.toml", "mode = \"allowlist\"\n[aliases]\nx = \"quay.io/x\"\n[[rule]]\nid = \"r\"\nmessage = \"m\"\naction = \"allow\"\n").unwrap();
        let b = Fragment::from_policy("b.toml", "\nmode = \"blocklist\"\n[aliases]\nx = \"ghcr.io/x\"\n[[rule]]\nid = \"r\"\nmessage = \"m\"\naction = \"deny\"\n").unwrap();
        let got: Vec<String> = compile(vec![a, b])
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "b.toml:2: mode is \"blocklist\" here but \"allowlist\" at a.toml:1; set it once",
                "b.toml:4: alias \"x\" already points at quay.io/x at a.toml:3",
                "b.toml:5: duplicate id \"r\": already used at a.toml:4",
            ]
        );
    }

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    /// Every shipped file must load, alone and merged: they are documentation people copy.
    #[test]
    fn the_shipped_signature_policy_examples_parse() {
        let dir = policies_dir().join("examples").join("signatures");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read example");
        let policy = containers_policy::parse("policy.json", &read("policy.json"))
            .unwrap_or_else(|p| panic!("{p}"));
        assert!(policy.docker.contains_key("registry.example.com/vendor"));
        let registries = registries_d::parse("registries.d.yaml", &read("registries.d.yaml"))
            .unwrap_or_else(|p| panic!("{p}"));
        assert!(registries.docker.contains_key("ghcr.io/example"));
    }

    #[test]
    fn every_shipped_policy_file_loads() {
        let mut files = Vec::new();
        let mut dirs = vec![policies_dir()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("toml" | "conf")
                ) {
                    files.push(path);
                }
            }
        }
        files.sort();
        assert!(files.len() >= 3, "{files:?}");
        for file in &files {
            let policy = load(std::slice::from_ref(file)).unwrap_or_else(|problems| {
                panic!(
                    "{}:\n{}",
                    file.display(),
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
            assert!(policy.warnings().is_empty(), "{:?}", policy.warnings());
            assert_eq!(policy.sources(), std::slice::from_ref(file));
        }
    }

    #[test]
    fn default_policy_reproduces_atomic() {
        use super::super::{ShortNameMode, Subject};
        let p = load(&[policies_dir().join("default.toml")]).unwrap();
        // The default policy leaves the search list to the server configuration
        // (`[resolve] search`, docker.io by default), so one does not silently override the other.
        assert_eq!(p.search_registries(), None);
        assert_eq!(p.mode(), Mode::Blocklist);
        assert_eq!(p.short_name_mode(), ShortNameMode::Permissive);
        let s = |op, registry| Subject {
            op,
            registry,
            repository: "team/app",
            tag: Some("latest"),
            digest: None,
        };
        for op in Operation::ALL {
            for registry in ["docker.io", "quay.io", "corp.example.com"] {
                let d = p.evaluate(&s(op, registry));
                let expected = if op == Operation::Push && registry != "corp.example.com" {
                    Action::Confirm
                } else {
                    Action::Allow
                };
                assert_eq!(d.action, expected, "{op} {registry}: {d:?}");
            }
        }
    }

    /// policies/README.md shows this explanation; keep the two in step.
    #[test]
    fn readme_explain_example() {
        use super::super::Subject;
        // cargo runs unit tests in the package root, so the path shows as the README's does.
        let p = load(&[PathBuf::from("policies/examples/allowlist.toml")]).unwrap();
        let e = p.explain(&Subject {
            op: Operation::Pull,
            registry: "docker.io",
            repository: "library/alpine",
            tag: Some("latest"),
            digest: None,
        });
        let shown = e.to_string();
        let readme = std::fs::read_to_string(policies_dir().join("README.md")).unwrap();
        assert!(readme.contains(&shown), "README.md should show:\n{shown}");
    }

    fn problems_of(paths: &[PathBuf]) -> Vec<String> {
        match load(paths) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn empty_files_and_emptied_directories_are_problems_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("zero.toml", ""),
            ("blank.toml", "\n  \n\t\n"),
            ("comments.toml", "# being rewritten\n   # soon\n\n"),
            ("empty.conf", "# registries.conf\n"),
        ];
        for (name, text) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let got = problems_of(std::slice::from_ref(&path));
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            assert!(
                got[0].starts_with(&path.display().to_string())
                    && got[0].contains("is empty")
                    && got[0].contains("mode = \"blocklist\""),
                "{name}: {got:?}"
            );
        }
        // One empty file among good ones spoils the whole load.
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "[[rule]]\nid = \"r\"\nmessage = \"m\"\naction = \"deny\"\n",
        )
        .unwrap();
        let got = problems_of(&[good.clone(), dir.path().join("zero.toml")]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("zero.toml"), "{got:?}");

        let emptied = dir.path().join("emptied");
        std::fs::create_dir(&emptied).unwrap();
        std::fs::write(emptied.join("site.toml.bak"), "mode = \"allowlist\"\n").unwrap();
        let got = problems_of(std::slice::from_ref(&emptied));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(&emptied.display().to_string())
                && got[0].contains("holds no policy file"),
            "{got:?}"
        );
    }

    #[test]
    fn allowing_everything_said_explicitly_loads() {
        use super::super::Subject;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.toml");
        std::fs::write(
            &path,
            "# Nothing is blocked, on purpose.\nmode = \"blocklist\"\n",
        )
        .unwrap();
        let p = load(&[path]).unwrap();
        assert_eq!(p.stats().rules, 0);
        for op in Operation::ALL {
            let d = p.evaluate(&Subject {
                op,
                registry: "quay.io",
                repository: "any/thing",
                tag: Some("1"),
                digest: None,
            });
            assert_eq!(d.action, Action::Allow, "{op}");
        }
    }

    /// The embedded default blocks nothing but says so (mode and a rule), so it is not
    /// mistaken for an emptied file, by the loader or by a reader.
    #[test]
    fn the_embedded_default_policy_is_explicit_and_loads() {
        let text = crate::policy::live::EMBEDDED_POLICY;
        assert!(!is_blank(text));
        assert!(text.lines().any(|l| l.trim() == "mode = \"blocklist\""));
        let from_file = load(&[policies_dir().join("default.toml")]).unwrap();
        let embedded = crate::policy::live::Sources::default().load().unwrap();
        assert_eq!(embedded.stats().rules, from_file.stats().rules);
        assert_eq!(embedded.mode(), Mode::Blocklist);
    }

    #[test]
    fn directories_expand_and_unreadable_files_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "[[rule]]\nid = \"b\"\nmessage = \"m\"\naction = \"deny\"\nregistry = \"quay.io\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.conf"),
            "[[registry]]\nlocation = \"ghcr.io\"\nblocked = true\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not policy").unwrap();
        let p = load(&[dir.path().to_owned()]).unwrap();
        assert_eq!(p.sources().len(), 2);
        assert!(p.sources()[0].ends_with("a.conf"));
        let ids: Vec<&str> = p.rule_ids().collect();
        assert_eq!(ids, ["b", "registries.conf:ghcr.io"]);
        let missing = load(&[dir.path().join("missing.toml")]).unwrap_err();
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].to_string().contains("missing.toml: cannot read"),
            "{}",
            missing[0]
        );
    }

    const SIGNED_POLICY: &str = r#"{
    "default": [{"type": "reject"}],
    "transports": {
        "docker": {
            "registry.example.com": [{"type": "insecureAcceptAnything"}]
        }
    }
}
"#;

    #[test]
    fn a_containers_policy_json_and_registries_d_files_load_with_the_toml_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.toml"), "mode = \"blocklist\"\n").expect("write");
        std::fs::write(dir.path().join("policy.json"), SIGNED_POLICY).expect("write");
        std::fs::write(
            dir.path().join("example.yaml"),
            "docker:\n  registry.example.com:\n    lookaside: http://sigs.example.com/store\n",
        )
        .expect("write");
        let policy = load(&[dir.path().to_path_buf()]).expect("loads");
        let trust = policy.trust().expect("a signature policy");
        assert!(trust.policy_file.ends_with("policy.json"));
        assert!(trust.policy.docker.contains_key("registry.example.com"));
        assert!(trust.registries.docker.contains_key("registry.example.com"));
        // Without the JSON: nothing is required, and that is said.
        std::fs::remove_file(dir.path().join("policy.json")).expect("rm");
        let policy = load(&[dir.path().to_path_buf()]).expect("loads");
        assert!(policy.trust().is_none());
        assert!(
            policy
                .warnings()
                .iter()
                .any(|w| w.message.contains("no signature is required")),
            "{:?}",
            policy.warnings()
        );
    }

    #[test]
    fn a_bad_or_second_signature_policy_rejects_the_set_with_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.json"), SIGNED_POLICY).expect("write");
        std::fs::write(dir.path().join("b.json"), SIGNED_POLICY).expect("write");
        let problems = load(&[dir.path().to_path_buf()]).expect_err("two policies");
        assert!(
            problems
                .iter()
                .any(|p| p.file.ends_with("b.json") && p.message.contains("second")),
            "{problems:?}"
        );
        std::fs::remove_file(dir.path().join("b.json")).expect("rm");
        std::fs::write(
            dir.path().join("a.json"),
            "{\n  \"default\": [{\"type\": \"reject\"}],\n  \"defualt\": []\n}\n",
        )
        .expect("write");
        let problems = load(&[dir.path().to_path_buf()]).expect_err("unknown key");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].file.ends_with("a.json"), "{problems:?}");
        assert_eq!(problems[0].line, Some(3), "{problems:?}");
        // An emptied policy.json is not "no signature policy".
        std::fs::write(dir.path().join("a.json"), "\n").expect("write");
        assert!(load(&[dir.path().to_path_buf()]).is_err());
    }
}
