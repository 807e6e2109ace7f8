//! Digest rules decided on what is served, not on what was asked.
//!
//! A manifest pulled by tag is the same content as the manifest pulled by its digest, and a
//! digest rule blocks content whatever it is called: dockerd itself falls back to the tag
//! when its by-digest GET is refused. So when the policy names digests, a manifest
//! requested by tag is fetched whole (a `HEAD` becomes a `GET` upstream, the body is
//! dropped afterwards), hashed, and decided again with that digest before any of it is
//! answered. The answer's `Docker-Content-Digest` is then the verified one.

use http::{HeaderValue, Method, Response};
use sha2::{Digest as _, Sha256};

use crate::body::{empty, full, ProxyBody};
use crate::error::ProxyError;
use crate::pipeline::plan::Target;
use crate::pipeline::verdict::{Check, Verdict};
use crate::policy::{Action, Policy, Subject};
use crate::reference::Reference;
use crate::route::Route;

use super::{collect_limited, Ask, Proxy, MAX_MANIFEST};

/// Does this read have to be decided on the digest of its answer?
pub(super) fn needs_served_digest(route: &Route, method: &Method, policy: &Policy) -> bool {
    let Route::Manifest { reference, .. } = route else {
        return false;
    };
    matches!(*method, Method::GET | Method::HEAD)
        && match reference {
            Reference::Tag(_) => policy.has_digest_rules() || policy.trust().is_some(),
            // The signature policy judges manifests pulled by digest too.
            Reference::Digest(_) => policy.trust().is_some(),
        }
}

impl Proxy {
    /// Decide a manifest answer by its digest. `head` says the client asked with `HEAD`
    /// (and the upstream was asked with `GET`): its body is dropped once decided.
    pub(super) async fn judge_served(
        &self,
        ask: &Ask<'_>,
        target: &Target,
        policy: &Policy,
        resp: Response<ProxyBody>,
        head: bool,
        authorization: Option<HeaderValue>,
    ) -> Result<(Response<ProxyBody>, Option<Verdict>), ProxyError> {
        if !resp.status().is_success() {
            return Ok((if head { resp.map(|_| empty()) } else { resp }, None));
        }
        let (mut parts, body) = resp.into_parts();
        let bytes = collect_limited(body, MAX_MANIFEST).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let check = Check {
            digest: Some(&digest),
            ..ask.check(target)
        };
        let subject = |digest| Subject {
            op: check.op,
            registry: &target.registry,
            repository: target.repository.as_str(),
            tag: check.tag,
            digest,
        };
        let by_digest = policy.evaluate(&subject(Some(&digest)));
        // The decision by tag was taken (and audited) before the request went upstream;
        // only a different rule is a new decision. A read by digest was decided with it.
        let by_tag = check.tag.is_some()
            && !matches!(
                ask.route,
                Route::Manifest {
                    reference: Reference::Digest(_),
                    ..
                }
            );
        let verdict = if by_tag && by_digest.rule_id != policy.evaluate(&subject(None)).rule_id {
            Some(self.gate.enforce(by_digest, &check)?)
        } else {
            None
        };
        let read = crate::pipeline::signed::Read {
            target,
            digest: &digest,
            manifest: &bytes,
            authorization: authorization.as_ref(),
        };
        let signed = Box::pin(self.judge_signed(ask, &read)).await?;
        let verdict = match (verdict, signed) {
            // A warning or a confirmed rule says more than the signature's acceptance.
            (Some(v), _) if v.action != Action::Allow => Some(v),
            (v, s) => s.or(v),
        };
        if let Ok(v) = HeaderValue::from_str(&digest) {
            parts.headers.insert("docker-content-digest", v);
        }
        let body = if head { empty() } else { full(bytes) };
        Ok((Response::from_parts(parts, body), verdict))
    }
}
