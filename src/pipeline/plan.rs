//! Which registry serves a name: fully qualified names go to their own registry, short
//! names to an alias or across the ordered search registries (Project Atomic's
//! `--add-registry`), pushes of short names to the default push registry.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::config::ResolveConfig;
use crate::error::ProxyError;
use crate::policy::{Policy, ShortName};
use crate::reference::{fully_qualified, Name, Repository};

/// One registry and the repository name it knows the image by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub repository: Repository,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fully_qualified(&self.registry, &self.repository))
    }
}

/// Where to send a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Exactly one registry: a fully qualified name, an alias, a push, or a remembered pull.
    One(Target),
    /// registries.conf mirrors, then the primary location: any failure moves on (a mirror
    /// is an optimisation, never the only source).
    Mirrors(Vec<Target>),
    /// A short-name pull: try each in order; not-found moves on, an outage stops.
    Search(Vec<Target>),
}

pub struct Resolver {
    search: Vec<String>,
    push: Option<String>,
    aliases: HashMap<String, (String, Repository)>,
    configured: HashSet<String>,
    /// Short name -> registry its manifest was last served from, so that the blobs of a
    /// pull come from the same registry as its manifest.
    pulled: moka::sync::Cache<String, String>,
}

impl Resolver {
    pub fn new(config: &ResolveConfig, configured: impl IntoIterator<Item = String>) -> Resolver {
        Resolver {
            search: config.search.clone(),
            push: config.push.clone(),
            aliases: config.aliases.clone(),
            configured: configured.into_iter().collect(),
            pulled: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache_ttl)
                .build(),
        }
    }

    fn qualified(&self, registry: &str, repository: &Repository) -> Result<Target, ProxyError> {
        if !self.configured.contains(registry) {
            return Err(ProxyError::RegistryNotAllowed(registry.to_owned()));
        }
        Ok(Target {
            registry: registry.to_owned(),
            repository: repository.clone(),
        })
    }

    fn short(&self, registry: &str, name: &Name) -> Target {
        let (registry, repository) = name.qualify(registry);
        Target {
            registry,
            repository,
        }
    }

    /// The ordered search registries (Atomic's `--add-registry` list): the policy's
    /// (`search_registries`, or registries.conf's `unqualified-search-registries`) when it
    /// sets one, else the server configuration's. Registries not configured are left out:
    /// they are never contacted.
    pub fn search_registries(&self, policy: &Policy) -> Vec<String> {
        match policy.search_registries() {
            Some(list) => list
                .iter()
                .filter(|r| self.configured.contains(*r))
                .cloned()
                .collect(),
            None => self.search.clone(),
        }
    }

    /// Reads of a manifest, tag list or referrers. Fully qualified names follow
    /// registries.conf `location` rewrites and mirrors (pulls only); short names an alias
    /// (configuration first, then policy) or the search list, unless enforcing mode finds
    /// them ambiguous.
    pub fn for_pull(
        &self,
        name: &Name,
        policy: &Policy,
        by_digest: bool,
    ) -> Result<Plan, ProxyError> {
        match name {
            Name::Qualified {
                registry,
                repository,
            } => {
                let sources = policy.pull_sources(registry, repository.as_str(), by_digest);
                let targets: Vec<Target> = sources
                    .iter()
                    .filter_map(|s| {
                        let repository = Repository::parse(&s.repository).ok()?;
                        self.qualified(&s.registry, &repository).ok()
                    })
                    .collect();
                match targets.len() {
                    0 | 1 if sources.len() <= 1 => {
                        let target = targets.into_iter().next();
                        Ok(Plan::One(match target {
                            Some(t) => t,
                            None => self.qualified(registry, repository)?,
                        }))
                    }
                    0 => Err(ProxyError::RegistryNotAllowed(registry.clone())),
                    _ => Ok(Plan::Mirrors(targets)),
                }
            }
            Name::Short(repo) => {
                if let Some((registry, repository)) = self.aliases.get(repo.as_str()) {
                    return Ok(Plan::One(self.qualified(registry, repository)?));
                }
                match policy.resolve_short(repo, &self.search) {
                    ShortName::Alias {
                        registry,
                        repository,
                    } => Ok(Plan::One(self.qualified(&registry, &repository)?)),
                    ShortName::Ambiguous { message, .. } => Err(ProxyError::Refused(message)),
                    ShortName::Search(candidates) => Ok(Plan::Search(
                        candidates
                            .into_iter()
                            .filter(|(r, _)| self.configured.contains(r))
                            .map(|(registry, repository)| Target {
                                registry,
                                repository,
                            })
                            .collect(),
                    )),
                }
            }
        }
    }

    /// Reads of a blob: a short name follows the registry its manifest came from.
    pub fn for_blob(&self, name: &Name, policy: &Policy) -> Result<Plan, ProxyError> {
        if let Name::Short(repo) = name {
            if let Some(registry) = self.pulled.get(repo.as_str()) {
                if !self.aliases.contains_key(repo.as_str()) {
                    return Ok(Plan::One(self.short(&registry, name)));
                }
            }
        }
        self.for_pull(name, policy, true)
    }

    /// Writes (uploads, manifest PUT, deletes).
    pub fn for_push(&self, name: &Name) -> Result<Target, ProxyError> {
        match name {
            Name::Qualified {
                registry,
                repository,
            } => self.qualified(registry, repository),
            Name::Short(repo) => match &self.push {
                Some(registry) => Ok(self.short(registry, name)),
                None => Err(ProxyError::NoPushRegistry(repo.to_string())),
            },
        }
    }

    /// Record which registry served a short name's manifest.
    pub fn remember(&self, name: &Name, registry: &str) {
        if let Name::Short(repo) = name {
            self.pulled.insert(repo.to_string(), registry.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn resolver(push: Option<&str>) -> Resolver {
        let mut aliases = HashMap::new();
        let tool = Repository::parse("team/tool").expect("repo");
        aliases.insert("tool".to_owned(), ("registry.example.com".to_owned(), tool));
        let config = ResolveConfig {
            search: vec!["registry.example.com".into(), "docker.io".into()],
            push: push.map(str::to_owned),
            aliases,
            cache_ttl: Duration::from_secs(60),
            search_timeout: Duration::from_secs(1),
            catalog_ttl: Duration::from_secs(1),
        };
        Resolver::new(
            &config,
            ["registry.example.com".to_owned(), "docker.io".to_owned()],
        )
    }

    fn name(s: &str) -> Name {
        Name::parse(s).expect("valid name")
    }

    fn fq(plan: &Plan) -> Vec<String> {
        match plan {
            Plan::One(t) => vec![t.to_string()],
            Plan::Search(ts) | Plan::Mirrors(ts) => ts.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn short_names_search_in_order_with_docker_library_rule() {
        let plan = resolver(None)
            .for_pull(&name("fedora"), &Policy::default(), false)
            .expect("plan");
        assert!(matches!(plan, Plan::Search(_)));
        assert_eq!(
            fq(&plan),
            vec!["registry.example.com/fedora", "docker.io/library/fedora"]
        );
        let plan = resolver(None)
            .for_pull(&name("ns/app"), &Policy::default(), false)
            .expect("plan");
        assert_eq!(
            fq(&plan),
            vec!["registry.example.com/ns/app", "docker.io/ns/app"]
        );
    }

    #[test]
    fn aliases_win_over_the_search_list() {
        let plan = resolver(None)
            .for_pull(&name("tool"), &Policy::default(), false)
            .expect("plan");
        assert_eq!(
            plan,
            Plan::One(Target {
                registry: "registry.example.com".into(),
                repository: Repository::parse("team/tool").expect("repo")
            })
        );
    }

    #[test]
    fn qualified_names_go_only_to_configured_registries() {
        let r = resolver(None);
        assert_eq!(
            fq(&r
                .for_pull(&name("docker.io/alpine"), &Policy::default(), false)
                .expect("plan")),
            vec!["docker.io/library/alpine"]
        );
        let err = r
            .for_pull(&name("evil.example.net/x"), &Policy::default(), false)
            .expect_err("not configured");
        assert!(matches!(err, ProxyError::RegistryNotAllowed(ref h) if h == "evil.example.net"));
        assert!(r.for_push(&name("evil.example.net/x")).is_err());
    }

    #[test]
    fn short_pushes_need_a_push_registry() {
        let err = resolver(None)
            .for_push(&name("app"))
            .expect_err("no push registry");
        assert!(
            err.to_string().contains("no default push registry"),
            "{err}"
        );
        let t = resolver(Some("registry.example.com"))
            .for_push(&name("team/app"))
            .expect("push");
        assert_eq!(t.to_string(), "registry.example.com/team/app");
    }

    #[test]
    fn blobs_follow_the_registry_that_served_the_manifest() {
        let r = resolver(None);
        let n = name("fedora");
        assert!(matches!(
            r.for_blob(&n, &Policy::default()).expect("plan"),
            Plan::Search(_)
        ));
        r.remember(&n, "docker.io");
        assert_eq!(
            fq(&r.for_blob(&n, &Policy::default()).expect("plan")),
            vec!["docker.io/library/fedora"]
        );
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use std::time::Duration;

    fn resolver() -> Resolver {
        let config = ResolveConfig {
            search: vec!["registry.example.com".into(), "docker.io".into()],
            push: None,
            aliases: HashMap::new(),
            cache_ttl: Duration::from_secs(60),
            search_timeout: Duration::from_secs(1),
            catalog_ttl: Duration::from_secs(1),
        };
        let configured =
            ["registry.example.com", "docker.io", "mirror.example.com"].map(str::to_owned);
        Resolver::new(&config, configured)
    }

    fn policy(text: &str) -> Policy {
        crate::policy::parse("p.toml", text).unwrap_or_else(|p| panic!("{p:?}"))
    }

    #[test]
    fn enforcing_mode_refuses_ambiguous_short_names_and_names_the_candidates() {
        let p = policy("short_name_mode = \"enforcing\"\n");
        let err = resolver()
            .for_pull(&Name::parse("fedora").expect("name"), &p, false)
            .expect_err("ambiguous");
        let text = err.to_string();
        assert!(
            text.contains("registry.example.com/fedora")
                && text.contains("docker.io/library/fedora"),
            "{text}"
        );
    }

    #[test]
    fn policy_search_lists_skip_unconfigured_registries() {
        let p = policy("search_registries = [\"quay.io\", \"docker.io\"]\n");
        assert_eq!(resolver().search_registries(&p), vec!["docker.io"]);
        assert_eq!(
            resolver().search_registries(&Policy::default()),
            vec!["registry.example.com", "docker.io"]
        );
    }
}
