//! Signature policy at the manifest: containers-policy.json(5) enforced for every client.
//!
//! A manifest read under a signature policy is fetched whole and hashed (a `HEAD` too, as
//! for digest rules, [`super::served`]), its signatures are fetched (a lookaside store for
//! `signedBy`, the `sha256-<hex>.sig` attachment for `sigstoreSigned`), and
//! [`evaluate`](crate::policy::signature::evaluate::evaluate) decides before any byte of it is
//! answered. A refusal is `403 DENIED` naming the scope, the requirement and the reason; a
//! store or registry that cannot be read is `503 UNAVAILABLE` (it decides nothing, so nothing
//! passes). Decisions are cached per policy generation, image and digest, bounded, so a
//! verified image costs one signature lookup per digest per TTL. The manifests an accepted
//! index lists pass by digest as part of it; a manifest pulled by digest on its own needs
//! its own signature, as containers/image requires.

pub(crate) mod blobs;
pub(crate) mod lookaside;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use hyper::body::Incoming;
use tracing::warn;

use crate::error::{Denial, DenialAction, ProxyError};
use crate::pipeline::plan::Target;
use crate::pipeline::verdict::Verdict;
use crate::policy::signature::evaluate::{self, Decision, Needs, Signatures};
use crate::policy::signature::trust::{Attachment, Trust};
use crate::policy::signature::verify::{cosign::SIGNATURE_ANNOTATION, cosign_tag};
use crate::policy::signature::ImageRef;
use crate::policy::Action;
use crate::reference::{Digest, Reference};
use crate::route::Route;

use super::{collect_limited, Ask, Proxy};
use lookaside::Lookaside;

/// How long one read of a signature store may take.
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a decision stands before its signatures are read again.
const VERDICT_TTL: Duration = Duration::from_secs(300);
const MAX_VERDICTS: u64 = 10_000;
/// The layers of one `.sig` manifest that are read; cosign writes one per signature.
const MAX_ATTACHMENTS: usize = 16;
/// A cosign payload is a few hundred bytes.
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_SIG_MANIFEST: usize = 256 * 1024;

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    generation: u64,
    /// The image as pulled (`registry/repository:tag` or `@digest`): identities are
    /// matched against it.
    image: String,
    digest: String,
}

/// The signature stage's state: the lookaside reader and the decisions made.
pub(crate) struct Signed {
    lookaside: Lookaside,
    verdicts: moka::future::Cache<Key, Arc<Decision>>,
    /// Manifests listed by an accepted index, by (generation, repository, digest).
    members: moka::future::Cache<Key, ()>,
    /// Blobs listed by accepted manifests: the only ones read where signatures are needed.
    pub accepted: blobs::Accepted,
}

impl Signed {
    pub fn new(timeout: Duration) -> Result<Signed, crate::tls::TlsError> {
        let tls = crate::tls::client_config(None, false)?;
        Ok(Signed {
            lookaside: Lookaside::new(tls, timeout),
            verdicts: bounded(),
            members: bounded(),
            accepted: blobs::Accepted::new(),
        })
    }
}

fn bounded<V: Clone + Send + Sync + 'static>() -> moka::future::Cache<Key, V> {
    moka::future::Cache::builder()
        .max_capacity(MAX_VERDICTS)
        .time_to_live(VERDICT_TTL)
        .build()
}

/// What the stage needs to know of the manifest read.
pub(crate) struct Read<'a> {
    pub target: &'a Target,
    pub digest: &'a str,
    pub manifest: &'a Bytes,
    /// The client's `Authorization`, for the attachment reads (the same identity upstream).
    pub authorization: Option<&'a HeaderValue>,
}

impl Proxy {
    /// Decide a manifest read under the signature policy. `None`: the policy has nothing to
    /// say about this image (no signature policy, or its scope accepts anything).
    pub(super) async fn judge_signed(
        &self,
        ask: &Ask<'_>,
        read: &Read<'_>,
    ) -> Result<Option<Verdict>, ProxyError> {
        let Some(trust) = ask.policy.trust() else {
            return Ok(None);
        };
        let Route::Manifest { reference, .. } = ask.route else {
            return Ok(None);
        };
        if let Reference::Tag(tag) = reference {
            if is_signature_attachment(tag, read.manifest) {
                // A signature is not itself signed: clients that verify (podman, cosign)
                // read it through here, and then its payloads. Only a manifest of signature
                // payloads passes so.
                self.signed
                    .accepted
                    .record(trust.generation, read.target, read.manifest);
                return Ok(None);
            }
        }
        let target = read.target;
        let pulled = match reference {
            Reference::Tag(t) => format!("{target}:{t}"),
            Reference::Digest(d) => format!("{target}@{d}"),
        };
        let image = ImageRef::parse(&pulled).map_err(|e| {
            ProxyError::Refused(format!(
                "{pulled}: not a reference the signature policy can judge: {e}"
            ))
        })?;
        let (scope, needs) = evaluate::needs(&trust.policy, &image);
        let key = Key {
            generation: trust.generation,
            image: pulled.clone(),
            digest: read.digest.to_owned(),
        };
        let member = Key {
            generation: trust.generation,
            image: target.to_string(),
            digest: read.digest.to_owned(),
        };
        let decision = if matches!(reference, Reference::Digest(_))
            && self.signed.members.contains_key(&member)
        {
            // Listed by an index this policy accepted: part of that verified image.
            None
        } else if let Some(cached) = self.signed.verdicts.get(&key).await {
            self.count_verdict_cache("hit");
            Some(cached)
        } else {
            self.count_verdict_cache("miss");
            let found = self.signatures(trust, &image, needs, read).await?;
            let decision = Arc::new(evaluate::evaluate(
                &trust.policy,
                &image,
                read.manifest,
                &Signatures {
                    simple_signing: &found.0,
                    sigstore: &found.1,
                },
                trust.as_ref(),
            ));
            self.signed.verdicts.insert(key, decision.clone()).await;
            Some(decision)
        };
        let Some(decision) = decision else {
            self.signed
                .accepted
                .record(trust.generation, target, read.manifest);
            return Ok(None);
        };
        if needs == Needs::default() && decision.is_accepted() {
            // insecureAcceptAnything: nothing was checked, so there is no verdict to record;
            // its blobs still pass where the repository's own scope wants signatures.
            self.signed
                .accepted
                .record(trust.generation, target, read.manifest);
            return Ok(None);
        }
        let verdict = verdict(ask, &pulled, read.digest, scope, &decision);
        ask.trail.decided(verdict.clone());
        if !decision.is_accepted() {
            return Err(ProxyError::Denied(Denial {
                reference: pulled,
                rule: verdict.rule_label().to_owned(),
                action: DenialAction::Deny,
                message: verdict.message,
            }));
        }
        self.signed
            .accepted
            .record(trust.generation, target, read.manifest);
        for child in index_members(read.manifest) {
            let member = Key {
                generation: trust.generation,
                image: target.to_string(),
                digest: child,
            };
            self.signed.members.insert(member, ()).await;
        }
        Ok(Some(verdict))
    }

    /// The signatures the scope needs, of both kinds. A store that cannot be read fails the
    /// request: no signature found must mean there is none.
    async fn signatures(
        &self,
        trust: &Trust,
        image: &ImageRef,
        needs: Needs,
        read: &Read<'_>,
    ) -> Result<(Vec<Bytes>, Vec<Attachment>), ProxyError> {
        let digest: Digest = read
            .digest
            .parse()
            .map_err(|e| ProxyError::Refused(format!("manifest digest {}: {e}", read.digest)))?;
        let repository = read.target.repository.as_str();
        let mut simple = Vec::new();
        let registry = read.target.registry.as_str();
        if needs.simple_signing {
            if let Some((_, base)) = trust.registries.lookaside_for(image) {
                let found = self
                    .signed
                    .lookaside
                    .signatures(base, repository, &digest)
                    .await
                    .map_err(|e| ProxyError::SignatureStore(e.to_string()));
                self.count_read(registry, "lookaside", found.as_ref().map(Vec::len));
                simple = found?;
            }
        }
        let mut attached = Vec::new();
        // As containers/image: attachments are read only where registries.d says to use
        // them (`use-sigstore-attachments`); elsewhere there are none to find.
        if needs.sigstore && trust.registries.use_sigstore_attachments_for(image).1 {
            let found = self.attachments(read, &digest).await;
            self.count_read(registry, "attachment", found.as_ref().map(Vec::len));
            attached = found?;
        }
        Ok((simple, attached))
    }

    /// The layers of the image's `sha256-<hex>.sig` manifest that carry a signature, each
    /// read by digest from the same repository (and checked against it).
    async fn attachments(
        &self,
        read: &Read<'_>,
        digest: &Digest,
    ) -> Result<Vec<Attachment>, ProxyError> {
        let name = read.target.repository.to_string();
        let unavailable = |e: ProxyError| {
            ProxyError::SignatureStore(format!(
                "signature attachment of {}@{digest}: {e}",
                read.target
            ))
        };
        let tag = cosign_tag(digest);
        let route = Route::Manifest {
            name: name.clone(),
            reference: Reference::Tag(tag),
        };
        let resp = self
            .forward(&route, &name, read.target, self.internal_get(read, true))
            .await
            .map_err(unavailable)?;
        if resp.status() == http::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !resp.status().is_success() {
            return Err(ProxyError::SignatureStore(format!(
                "signature attachment of {}@{digest}: the registry answered {}",
                read.target,
                resp.status()
            )));
        }
        let body = collect_limited(resp.into_body(), MAX_SIG_MANIFEST)
            .await
            .map_err(unavailable)?;
        let manifest: oci_spec::image::ImageManifest =
            serde_json::from_slice(&body).map_err(|e| {
                ProxyError::SignatureStore(format!(
                    "signature attachment of {}@{digest} is not an image manifest: {e}",
                    read.target
                ))
            })?;
        let mut found = Vec::new();
        for layer in manifest.layers().iter().take(MAX_ATTACHMENTS) {
            let Some(signature) = layer
                .annotations()
                .as_ref()
                .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            else {
                continue;
            };
            let Ok(blob) = layer.digest().to_string().parse::<Digest>() else {
                continue;
            };
            let route = Route::Blob {
                name: name.clone(),
                digest: blob,
            };
            // The blob answer is checked against its digest as it streams (respond.rs).
            let resp = self
                .forward(&route, &name, read.target, self.internal_get(read, false))
                .await
                .map_err(unavailable)?;
            if !resp.status().is_success() {
                warn!(layer = %layer.digest(), status = %resp.status(), "signature payload not readable; skipped");
                continue;
            }
            let payload = collect_limited(resp.into_body(), MAX_PAYLOAD)
                .await
                .map_err(unavailable)?;
            found.push(Attachment {
                payload,
                signature: signature.clone(),
            });
        }
        Ok(found)
    }

    fn count_verdict_cache(&self, result: &str) {
        self.metrics
            .cache
            .with_label_values(&["signature_verdicts", result])
            .inc();
    }

    /// One read of a signature store: how many signatures it found, or that it failed.
    fn count_read<E>(&self, registry: &str, store: &str, found: Result<usize, E>) {
        let result = match found {
            Ok(0) => "none",
            Ok(_) => "found",
            Err(_) => "error",
        };
        self.metrics
            .signature_reads
            .with_label_values(&[self.metrics.registry_label(Some(registry)), store, result])
            .inc();
    }

    fn internal_get(&self, read: &Read<'_>, manifest: bool) -> Request<Option<Incoming>> {
        let mut req = Request::new(None);
        *req.method_mut() = Method::GET;
        if manifest {
            req.headers_mut().insert(
                header::ACCEPT,
                HeaderValue::from_static(
                    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
                ),
            );
        }
        if let Some(auth) = read.authorization {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        req
    }
}

/// The decision as a verdict of the trail: audited, counted and logged with the others.
fn verdict(ask: &Ask<'_>, pulled: &str, digest: &str, scope: &str, decision: &Decision) -> Verdict {
    let (action, message) = match decision {
        Decision::Accepted { by, .. } => {
            let kinds: Vec<&str> = by.iter().map(|a| a.kind).collect();
            (
                Action::Allow,
                format!(
                    "signature policy scope {scope:?} accepted it ({})",
                    kinds.join(", ")
                ),
            )
        }
        Decision::Rejected {
            requirement,
            kind,
            reason,
            ..
        } => (
            Action::Deny,
            format!(
                "signature policy scope {scope:?}, requirement {} ({kind}): {reason}",
                requirement + 1
            ),
        ),
    };
    Verdict {
        action,
        confirmed: false,
        rule: Some(Arc::from(format!("signature:{scope}"))),
        message,
        op: ask.op,
        reference: pulled.to_owned(),
        digest: Some(digest.to_owned()),
    }
}

/// The media type of a cosign signature layer (its simple-signing payload).
const COSIGN_PAYLOAD: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// A `sha256-<hex>.sig` tag whose manifest holds nothing but signature payloads. Both, so
/// that naming an image's tag like an attachment does not get it past the policy: no
/// client runs a layer of this media type.
fn is_signature_attachment(tag: &str, manifest: &[u8]) -> bool {
    let Some(hex) = tag
        .strip_prefix("sha256-")
        .and_then(|t| t.strip_suffix(".sig"))
    else {
        return false;
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        layers: Vec<Layer>,
    }
    #[derive(serde::Deserialize)]
    struct Layer {
        #[serde(rename = "mediaType")]
        media_type: String,
    }
    match serde_json::from_slice::<Manifest>(manifest) {
        Ok(m) => {
            m.manifests.is_none()
                && !m.layers.is_empty()
                && m.layers.iter().all(|l| l.media_type == COSIGN_PAYLOAD)
        }
        Err(_) => false,
    }
}

/// The digests an index lists; nothing for any other manifest.
fn index_members(manifest: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    serde_json::from_slice::<Index>(manifest)
        .map(|i| i.manifests.into_iter().map(|d| d.digest).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.sig";

    #[test]
    fn only_a_manifest_of_signature_payloads_under_an_attachment_tag_skips_the_policy() {
        let sig = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"annotations":{"dev.cosignproject.cosign/signature":"MEU="}}]}"#;
        assert!(is_signature_attachment(TAG, sig));
        // An image whose tag merely looks like an attachment.
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}"#;
        assert!(!is_signature_attachment(TAG, image));
        let mixed = String::from_utf8_lossy(sig).replace(
            r#""layers":["#,
            r#""layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"#,
        );
        assert!(!is_signature_attachment(TAG, mixed.as_bytes()));
        let index = br#"{"schemaVersion":2,"manifests":[],"layers":[]}"#;
        assert!(!is_signature_attachment(TAG, index));
        assert!(!is_signature_attachment("sha256-abc.sig", sig));
        assert!(!is_signature_attachment("latest", sig));
        assert!(!is_signature_attachment(&TAG.replace(".sig", ".att"), sig));
    }

    #[test]
    fn an_index_lists_its_members_and_nothing_else_does() {
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:aa","size":1,"mediaType":"x"},{"digest":"sha256:bb","size":1,"mediaType":"x"}]}"#;
        assert_eq!(index_members(index), vec!["sha256:aa", "sha256:bb"]);
        assert!(index_members(b"{\"layers\":[]}").is_empty());
        assert!(index_members(b"not json").is_empty());
    }
}
