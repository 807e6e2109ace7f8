//! `portcullis policy explain`: what the gate would decide for one operation on one image
//! reference, which fully qualified name it resolves to, and why.

use std::fmt::Write as _;

use crate::config::Config;
use crate::policy::signature::trust::Trust;
use crate::policy::signature::{evaluate, requirements_for, ImageRef};
use crate::policy::{Operation, Policy, ShortName, Subject};
use crate::reference::{fully_qualified, ImageReference, Name};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    Name(#[from] crate::reference::NameError),
}

pub fn explain(
    config: &Config,
    policy: &Policy,
    op: Operation,
    reference: &str,
) -> Result<String, ExplainError> {
    let parts = ImageReference::parse(reference)?;
    let name = &parts.name;
    // A bare name is its `latest` tag; `name@digest` has no tag, as a pull by digest.
    let tag = match (&parts.tag, &parts.digest) {
        (Some(t), _) => Some(t.as_str()),
        (None, Some(_)) => None,
        (None, None) => Some("latest"),
    };
    let digest = parts.digest.as_ref().map(|d| d.as_str());
    let mut out = String::new();
    if tag.is_some() && digest.is_none() && policy.has_digest_rules() {
        let _ = writeln!(
            out,
            "note: digest rules are decided on the digest of the manifest the registry serves for this tag; \
             give name:tag@digest to include them"
        );
    }
    let candidates: Vec<(String, String)> = match name.clone() {
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
        if op == Operation::Pull {
            if let Some(trust) = policy.trust() {
                signatures(&mut out, trust, &registry, &repository, tag, digest);
            }
        }
    }
    Ok(out)
}

/// What the signature policy requires of this image, and where its signatures would be
/// read from. The signatures themselves are read at pull time, for the digest served.
fn signatures(
    out: &mut String,
    trust: &Trust,
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) {
    let mut reference = format!("{registry}/{repository}");
    if let Some(t) = tag {
        let _ = write!(reference, ":{t}");
    }
    if let Some(d) = digest {
        let _ = write!(reference, "@{d}");
    }
    let Ok(image) = ImageRef::parse(&reference) else {
        let _ = writeln!(
            out,
            "signature policy: {reference} cannot be judged; a pull is refused\n"
        );
        return;
    };
    let (scope, reqs) = requirements_for(&trust.policy, &image);
    let kinds: Vec<&str> = reqs.iter().map(evaluate::kind).collect();
    let _ = writeln!(
        out,
        "signature policy ({}): scope {scope:?} requires, all of: {}",
        trust.policy_file,
        kinds.join(", ")
    );
    let needs = evaluate::needs_for(reqs);
    if needs.simple_signing {
        match trust.registries.lookaside_for(&image) {
            Some((at, url)) => {
                let _ = writeln!(
                    out,
                    "  simple signatures are read from {url} (registries.d scope {at:?})"
                );
            }
            None => {
                let _ = writeln!(out, "  no registries.d lookaside covers it: no simple signature can be found, so signedBy refuses");
            }
        }
    }
    if needs.sigstore {
        let (at, used) = trust.registries.use_sigstore_attachments_for(&image);
        if used {
            let _ = writeln!(out, "  sigstore signatures are read from the sha256-<digest>.sig tag (registries.d scope {:?})", at.unwrap_or_default());
        } else {
            let _ = writeln!(out, "  use-sigstore-attachments is not set for it in registries.d: sigstoreSigned finds no signature and refuses");
        }
    }
    let _ = writeln!(
        out,
        "  decided at pull time on the signatures of the manifest digest served\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_rule_is_explained_for_the_tag_that_serves_it() {
        let config = Config::parse_str(
            "[[registry]]\nhost = \"registry.example.com\"\nendpoint = \"https://127.0.0.1:1\"\n",
        )
        .expect("config");
        let digest = format!("sha256:{}", "b".repeat(64));
        let policy = crate::policy::parse(
            "p.toml",
            &format!(
                "[[rule]]\nid = \"bad\"\naction = \"deny\"\nmessage = \"known bad\"\ndigest = \"{digest}\"\n"
            ),
        )
        .expect("policy");
        let by_tag = explain(
            &config,
            &policy,
            Operation::Pull,
            "registry.example.com/team/app:1",
        )
        .expect("explain");
        assert!(by_tag.contains("digest rules are decided"), "{by_tag}");
        let both = explain(
            &config,
            &policy,
            Operation::Pull,
            &format!("registry.example.com/team/app:1@{digest}"),
        )
        .expect("explain");
        assert!(both.contains("deny") && both.contains("bad"), "{both}");
    }

    #[test]
    fn a_pull_under_a_signature_policy_names_its_scope_requirements_and_store() {
        let config = Config::parse_str(
            "[[registry]]\nhost = \"registry.example.com\"\nendpoint = \"https://127.0.0.1:1\"\n",
        )
        .expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("policy.json"),
            format!(
                r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"registry.example.com/team":[{{"type":"insecureAcceptAnything"}},{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}/src/policy/signature/verify/testdata/trusted.gpg"}}]}}}}}}"#,
                env!("CARGO_MANIFEST_DIR")
            ),
        )
        .expect("write");
        std::fs::write(
            dir.path().join("sigs.yaml"),
            "docker:\n  registry.example.com:\n    lookaside: https://sigs.example.com/store\n",
        )
        .expect("write");
        let policy = crate::policy::load(&[dir.path().to_path_buf()]).expect("policy");
        let text = explain(
            &config,
            &policy,
            Operation::Pull,
            "registry.example.com/team/app:1",
        )
        .expect("explain");
        assert!(
            text.contains(r#"scope "registry.example.com/team" requires, all of: insecureAcceptAnything, signedBy"#)
                && text.contains("read from https://sigs.example.com/store"),
            "{text}"
        );
        let text = explain(
            &config,
            &policy,
            Operation::Pull,
            "registry.example.com/other/app:1",
        )
        .expect("explain");
        assert!(
            text.contains(r#"scope "default" requires, all of: reject"#),
            "{text}"
        );
    }

    #[test]
    fn explains_a_confirmed_public_push_with_its_rule() {
        let config = Config::embedded_defaults();
        let policy = crate::policy::live::Sources::default()
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
