//! Blobs under a signature policy: read only as part of an image the policy accepted.
//!
//! Signatures are checked at the manifest, but a client that knows a layer's digest can
//! ask for the blob and never for the manifest (or through another repository of the same
//! registry). So where the scope of a repository does not accept unsigned images, a blob
//! `GET` is forwarded only when an accepted manifest of that repository, under the current
//! policy generation, lists it: an accepted manifest's config and layers are recorded as it
//! is answered. A `HEAD` reveals no content, and every push starts with one, so it passes.
//!
//! The record is this process's, bounded, and idles out an hour after its last use; a pull
//! that outlives it, or a policy reload, reads the manifest again (docker and containerd do
//! on retry), and the refusal says so.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Denial, DenialAction, ProxyError};
use crate::pipeline::plan::Target;
use crate::pipeline::verdict::Verdict;
use crate::policy::signature::containers_policy::{requirements_for, Requirement};
use crate::policy::signature::ImageRef;
use crate::policy::{Action, Operation};
use crate::route::Route;

use super::super::{Ask, Proxy};

/// About 300 bytes an entry: 50,000 is 15 MiB at most, a few thousand images' layers.
const MAX_BLOBS: u64 = 50_000;
const IDLE: Duration = Duration::from_secs(3600);

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    generation: u64,
    /// `registry/repository`, as [`Target`] prints it.
    repository: String,
    digest: String,
}

/// The blobs of accepted manifests.
pub(crate) struct Accepted {
    blobs: moka::sync::Cache<Key, ()>,
}

impl Accepted {
    pub fn new() -> Accepted {
        Accepted {
            blobs: moka::sync::Cache::builder()
                .max_capacity(MAX_BLOBS)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    /// Records the config and layers `manifest` lists (nothing for an index: its members
    /// are recorded when they are read).
    pub fn record(&self, generation: u64, target: &Target, manifest: &[u8]) {
        let repository = target.to_string();
        for digest in listed_blobs(manifest) {
            let key = Key {
                generation,
                repository: repository.clone(),
                digest,
            };
            // A manifest read again (every pull by tag) finds its blobs recorded: a read is
            // cheaper than replacing the entry, and resets its idle time all the same.
            if self.blobs.get(&key).is_none() {
                self.blobs.insert(key, ());
            }
        }
    }

    /// Was `digest` listed by a manifest accepted in `target` under this generation? A hit
    /// resets the entry's idle time.
    fn admits(&self, generation: u64, target: &Target, digest: &str) -> bool {
        self.blobs
            .get(&Key {
                generation,
                repository: target.to_string(),
                digest: digest.to_owned(),
            })
            .is_some()
    }
}

impl Proxy {
    /// A blob `GET` under a signature policy: refused unless the repository's scope accepts
    /// unsigned images, or an accepted manifest of it lists the blob. The refusal is a
    /// verdict of the trail, audited and counted like the manifest's.
    pub(in crate::pipeline) fn admit_blob(
        &self,
        ask: &Ask<'_>,
        target: &Target,
    ) -> Result<(), ProxyError> {
        let Route::Blob { digest, .. } = ask.route else {
            return Ok(());
        };
        if *ask.method != http::Method::GET || ask.op != Operation::Pull {
            return Ok(());
        }
        let Some(trust) = ask.policy.trust() else {
            return Ok(());
        };
        let reference = format!("{target}@{digest}");
        // Looked up by repository: a blob has no tag, and its digest is no manifest's.
        let scope = ImageRef::parse(&reference)
            .map(|image| requirements_for(&trust.policy, &image))
            .map_err(|e| {
                ProxyError::Refused(format!(
                    "{reference}: not a reference the signature policy can judge: {e}"
                ))
            })?;
        let (scope, reqs) = scope;
        let open = !reqs.is_empty()
            && reqs
                .iter()
                .all(|r| matches!(r, Requirement::InsecureAcceptAnything));
        if open
            || self
                .signed
                .accepted
                .admits(trust.generation, target, digest.as_str())
        {
            return Ok(());
        }
        let message = format!(
            "signature policy scope {scope:?}: blob {digest} is not part of an image accepted here; pull the image by its manifest (tag or digest) first"
        );
        let verdict = Verdict {
            action: Action::Deny,
            confirmed: false,
            rule: Some(Arc::from(format!("signature:{scope}"))),
            message: message.clone(),
            op: ask.op,
            reference: reference.clone(),
            digest: Some(digest.to_string()),
        };
        ask.trail.decided(verdict.clone());
        Err(ProxyError::Denied(Denial {
            reference,
            rule: verdict.rule_label().to_owned(),
            action: DenialAction::Deny,
            message,
        }))
    }
}

/// The config and layer digests of an image manifest (OCI or Docker v2); nothing for
/// anything else.
fn listed_blobs(manifest: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    match serde_json::from_slice::<Manifest>(manifest) {
        Ok(m) => m
            .config
            .into_iter()
            .chain(m.layers)
            .map(|d| d.digest)
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Repository;

    fn target(repo: &str) -> Target {
        Target {
            registry: "one.test".into(),
            repository: Repository::parse(repo).expect("repository"),
        }
    }

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l1"},{"digest":"sha256:l2"}]}"#;

    #[test]
    fn an_accepted_manifest_admits_its_config_and_layers_in_its_repository_and_generation_only() {
        let accepted = Accepted::new();
        accepted.record(7, &target("team/app"), MANIFEST);
        for d in ["sha256:c", "sha256:l1", "sha256:l2"] {
            assert!(accepted.admits(7, &target("team/app"), d), "{d}");
        }
        assert!(!accepted.admits(7, &target("team/app"), "sha256:other"));
        assert!(!accepted.admits(7, &target("team/elsewhere"), "sha256:l1"));
        assert!(!accepted.admits(8, &target("team/app"), "sha256:l1"));
    }

    #[test]
    fn an_index_or_garbage_lists_no_blob() {
        assert!(listed_blobs(br#"{"manifests":[{"digest":"sha256:m"}]}"#).is_empty());
        assert!(listed_blobs(b"not json").is_empty());
    }
}
