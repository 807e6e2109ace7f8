//! Short-name resolution as registries.conf(5) defines it: an alias wins; otherwise the search
//! registries in order, unless `short-name-mode = "enforcing"` finds the name ambiguous.
//!
//! Why enforcing refuses: with several search registries, anyone who registers the same name
//! on an earlier registry gets pulled instead (name squatting). containers/image prompts on a
//! terminal; a proxy has no terminal, so it refuses and names the fully qualified candidates.

use super::{Policy, ShortNameMode};
use crate::reference::{fully_qualified, Name, Repository};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShortName {
    /// `[aliases]` pins the name to one image.
    Alias {
        registry: String,
        repository: Repository,
    },
    /// Try these in order; the first that has the image serves it.
    Search(Vec<(String, Repository)>),
    /// Enforcing mode, several candidates, no alias: refuse with `message`.
    Ambiguous {
        candidates: Vec<String>,
        message: String,
    },
}

impl Policy {
    /// Resolve a short name (no registry) for a pull. `fallback_search` is the server
    /// configuration's search list, used when no policy file or registries.conf set one.
    pub fn resolve_short(&self, name: &Repository, fallback_search: &[String]) -> ShortName {
        if let Some((registry, repository)) = self.aliases.get(name.as_str()) {
            return ShortName::Alias {
                registry: registry.clone(),
                repository: repository.clone(),
            };
        }
        let search = self.search_registries().unwrap_or(fallback_search);
        let short = Name::Short(name.clone());
        let candidates: Vec<(String, Repository)> = search
            .iter()
            .map(|registry| short.qualify(registry))
            .collect();
        if self.short_name_mode == ShortNameMode::Enforcing && candidates.len() > 1 {
            let names: Vec<String> = candidates
                .iter()
                .map(|(r, p)| fully_qualified(r, p))
                .collect();
            let message = format!(
                "short name {:?} is ambiguous (short-name-mode = \"enforcing\"): it could be any of {}; \
                 pull a fully qualified name, or ask an admin to add an alias",
                name.as_str(),
                names.join(", ")
            );
            return ShortName::Ambiguous {
                candidates: names,
                message,
            };
        }
        ShortName::Search(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn repo(s: &str) -> Repository {
        Repository::parse(s).unwrap()
    }

    #[test]
    fn aliases_search_and_enforcing() {
        let p = parse(
            "p.toml",
            "search_registries = [\"registry.fedoraproject.org\", \"docker.io\"]\nshort_name_mode = \"enforcing\"\n[aliases]\nubi = \"registry.access.redhat.com/ubi9\"\n",
        )
        .unwrap();
        assert_eq!(
            p.resolve_short(&repo("ubi"), &[]),
            ShortName::Alias {
                registry: "registry.access.redhat.com".into(),
                repository: repo("ubi9")
            }
        );
        match p.resolve_short(&repo("fedora"), &[]) {
            ShortName::Ambiguous {
                candidates,
                message,
            } => {
                assert_eq!(
                    candidates,
                    [
                        "registry.fedoraproject.org/fedora",
                        "docker.io/library/fedora"
                    ]
                );
                assert!(
                    message.contains("registry.fedoraproject.org/fedora, docker.io/library/fedora")
                );
            }
            other => panic!("{other:?}"),
        }
        let permissive = parse(
            "p.toml",
            "search_registries = [\"quay.io\", \"docker.io\"]\n",
        )
        .unwrap();
        assert_eq!(
            permissive.resolve_short(&repo("x"), &[]),
            ShortName::Search(vec![
                ("quay.io".into(), repo("x")),
                ("docker.io".into(), repo("library/x"))
            ])
        );
        // One search registry is never ambiguous; no policy list uses the server's.
        let one = parse("p.toml", "short_name_mode = \"enforcing\"\n").unwrap();
        assert_eq!(
            one.resolve_short(&repo("x"), &["docker.io".to_owned()]),
            ShortName::Search(vec![("docker.io".into(), repo("library/x"))])
        );
    }
}
