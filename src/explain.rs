//! `portcullis policy explain`: what the gate would decide for one operation on one image
//! reference, which fully qualified name it resolves to, and why.

use std::fmt::Write as _;

use crate::config::Config;
use crate::policy::{Operation, Policy, ShortName, Subject};
use crate::reference::{fully_qualified, Name, Reference};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    Name(#[from] crate::reference::NameError),
}

/// Split `name[:tag][@digest]`.
fn split(reference: &str) -> Result<(&str, Option<Reference>), ExplainError> {
    if let Some((name, digest)) = reference.split_once('@') {
        return Ok((name, Some(Reference::parse(digest)?)));
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(colon) => {
            let at = slash + colon;
            Ok((
                &reference[..at],
                Some(Reference::parse(&reference[at + 1..])?),
            ))
        }
        None => Ok((reference, None)),
    }
}

pub fn explain(
    config: &Config,
    policy: &Policy,
    op: Operation,
    reference: &str,
) -> Result<String, ExplainError> {
    let (name, tag_or_digest) = split(reference)?;
    let (tag, digest) = match &tag_or_digest {
        Some(Reference::Tag(t)) => (Some(t.as_str()), None),
        Some(Reference::Digest(d)) => (None, Some(d.as_str())),
        None => (Some("latest"), None),
    };
    let mut out = String::new();
    let candidates: Vec<(String, String)> = match Name::parse(name)? {
        Name::Qualified {
            registry,
            repository,
        } => vec![(registry, repository.to_string())],
        Name::Short(repo) if op == Operation::Push => match &config.resolve.push {
            Some(r) => {
                let (registry, repository) = Name::Short(repo).qualify(r);
                vec![(registry, repository.to_string())]
            }
            None => {
                let _ = writeln!(out, "{name}: a short name is pushed to the default push registry, and none is configured");
                return Ok(out);
            }
        },
        Name::Short(repo) => match policy.resolve_short(&repo, &config.resolve.search) {
            ShortName::Alias {
                registry,
                repository,
            } => {
                let _ = writeln!(
                    out,
                    "{name} is an alias for {}",
                    fully_qualified(&registry, &repository)
                );
                vec![(registry, repository.to_string())]
            }
            ShortName::Ambiguous { message, .. } => {
                let _ = writeln!(out, "refused: {message}");
                return Ok(out);
            }
            ShortName::Search(list) => {
                let names: Vec<String> = list.iter().map(|(r, p)| fully_qualified(r, p)).collect();
                let _ = writeln!(out, "{name} is searched in order: {}", names.join(", "));
                list.into_iter().map(|(r, p)| (r, p.to_string())).collect()
            }
        },
    };
    for (registry, repository) in candidates {
        if !config.registries.contains_key(&registry) {
            let _ = writeln!(out, "{registry}/{repository}: registry {registry} is not configured; it is never contacted\n");
            continue;
        }
        let subject = Subject {
            op,
            registry: &registry,
            repository: &repository,
            tag,
            digest,
        };
        let _ = writeln!(out, "{}", policy.explain(&subject));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_tag_and_digest() {
        assert_eq!(
            split("localhost:5000/a:1").ok().map(|(n, _)| n),
            Some("localhost:5000/a")
        );
        assert!(matches!(split("a").ok(), Some(("a", None))));
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            split(&format!("a/b@{digest}")).ok(),
            Some(("a/b", Some(Reference::Digest(_))))
        ));
    }

    #[test]
    fn explains_a_confirmed_public_push_with_its_rule() {
        let config = Config::embedded_defaults();
        let policy = crate::gate::Sources::default()
            .load()
            .expect("embedded policy");
        let text =
            explain(&config, &policy, Operation::Push, "docker.io/someone/app:1").expect("explain");
        assert!(
            text.contains("confirm") && text.contains("confirm-public-push"),
            "{text}"
        );
        let text =
            explain(&config, &policy, Operation::Pull, "evil.example.net/x").expect("explain");
        assert!(text.contains("not configured"), "{text}");
    }
}
