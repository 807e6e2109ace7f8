//! The client's response: an upstream answer with its headers rewritten to portcullis's
//! names, its body streamed (blobs verified against their digest) or read whole (manifests
//! verified and offered to the cache, tag lists paginated); or a manifest straight from the
//! cache; plus the policy's warning, if any.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

use crate::body::{boxed, empty, full, AbortReason, IdleTimeout, ProxyBody, Reported, Verified};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::pipeline::plan::Target;
use crate::pipeline::verdict::Verdict;
use crate::reference::Reference;
use crate::route::Route;
use crate::store::manifests::{CachedManifest, ManifestKey};
use crate::upstream::location::{self, Header};
use crate::upstream::{read_limited, Upstream, UpstreamError};

use super::send::is_hop_by_hop;
use super::{Proxy, API_VERSION, CLIENT_CHALLENGE, MAX_MANIFEST, RESOLVED_HEADER};

/// Tag lists are buffered only to paginate them for registries that do not.
const MAX_TAG_LIST: usize = 16 * 1024 * 1024;

/// An error body read to judge it; distribution's are a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// distribution 2.x parses the reference of a manifest `DELETE` as a digest, so a tag gets
/// `DIGEST_INVALID`: it does not delete tags, which is what the spec's `UNSUPPORTED` says.
fn refuses_tag_delete(body: &[u8]) -> bool {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    value["errors"]
        .as_array()
        .is_some_and(|errors| errors.iter().any(|e| e["code"] == "DIGEST_INVALID"))
}

/// What the client asked for, beyond the route: the method, the tag page, and whether it
/// sent a `Range` (only then may a 206 pass unverified).
pub(super) struct Asked<'a> {
    pub method: &'a Method,
    pub page: &'a crate::listing::tags::PageRequest,
    pub ranged: bool,
}

/// Turn an upstream response into the client's response; a verified manifest is also
/// returned for the cache.
pub(super) async fn respond(
    route: &Route,
    raw_name: &str,
    target: &Target,
    upstream: &Upstream,
    metrics: &Arc<Metrics>,
    asked: &Asked<'_>,
    resp: Response<Incoming>,
) -> Result<(Response<ProxyBody>, Option<CachedManifest>), ProxyError> {
    let (mut parts, body) = resp.into_parts();
    let repo = target.repository.as_str();
    let registry = upstream.host();
    // A blob's content may come from a CDN portcullis was redirected to; a Location or Link
    // there means nothing to the client and would not be relative to the registry.
    let blob_content = matches!(route, Route::Blob { .. }) && parts.status.is_success();
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    for (k, v) in &parts.headers {
        if is_hop_by_hop(k) || k == header::WWW_AUTHENTICATE {
            continue;
        }
        let kind = if blob_content && (k == header::LOCATION || k == header::LINK) {
            continue;
        } else if k == header::LOCATION {
            Some(Header::Location)
        } else if k == header::LINK {
            Some(Header::Link)
        } else {
            None
        };
        match kind {
            Some(kind) => headers.append(
                k.clone(),
                rewrite_location(upstream, kind, v, repo, raw_name)?,
            ),
            None => headers.append(k.clone(), v.clone()),
        };
    }
    if parts.status == StatusCode::UNAUTHORIZED {
        // The client must authenticate to portcullis, never to the upstream's token service.
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CLIENT_CHALLENGE),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&target.to_string()) {
        headers.insert(RESOLVED_HEADER, v);
    }
    parts.headers = headers;
    let method = asked.method;
    let timeout = upstream.config.body_timeout;
    let ok = parts.status == StatusCode::OK;
    let digest = match route {
        Route::Blob { digest, .. } => Some(digest.as_str()),
        Route::Manifest {
            reference: Reference::Digest(d),
            ..
        } => Some(d.as_str()),
        _ => None,
    };
    if digest.is_some() && method == Method::GET {
        check_verifiable(registry, parts.status, asked.ranged)?;
    }
    let reported = |body| {
        boxed(Reported::new(
            body,
            registry,
            digest.unwrap_or("-"),
            metrics.clone(),
        ))
    };
    let mut cacheable = None;
    let tag_delete = matches!(
        route,
        Route::Manifest {
            reference: Reference::Tag(_),
            ..
        }
    ) && method == Method::DELETE;
    let body = match route {
        _ if tag_delete && parts.status == StatusCode::BAD_REQUEST => {
            let bytes = read_limited(body, MAX_ERROR_BODY, registry).await?;
            if refuses_tag_delete(&bytes) {
                return Err(ProxyError::TagDeleteUnsupported {
                    registry: registry.to_owned(),
                });
            }
            full(bytes)
        }
        Route::Tags { .. } if ok && method == Method::GET && asked.page.is_paged() => {
            let bytes = read_limited(body, MAX_TAG_LIST, registry).await?;
            match crate::listing::tags::paginate(&bytes, asked.page, raw_name) {
                Some((paged, link)) => {
                    parts.headers.remove(header::CONTENT_LENGTH);
                    parts.headers.remove(header::LINK);
                    if let Some(link) = link {
                        parts.headers.insert(header::LINK, link);
                    }
                    full(paged)
                }
                None => full(bytes),
            }
        }
        Route::Manifest { reference, .. } if ok && method == Method::GET => {
            let bytes = read_limited(body, MAX_MANIFEST, registry).await?;
            // By digest, the bytes must be the digest asked for; by tag, the digest the
            // registry announces (which the client pins the pull to) must be the bytes'.
            let expected = match reference {
                Reference::Digest(d) => Some(d.as_str()),
                Reference::Tag(_) => parts
                    .headers
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok()),
            };
            if let Some(expected) = expected {
                if let Err(e) = verify_manifest(registry, expected, &bytes) {
                    metrics.body_aborted(registry, AbortReason::DigestMismatch.as_str());
                    return Err(e);
                }
            }
            if let Reference::Digest(_) = reference {
                cacheable = Some(CachedManifest {
                    body: bytes.clone(),
                    content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                });
            }
            full(bytes)
        }
        Route::Blob { digest, .. } if ok && method == Method::GET => reported(boxed(
            Verified::new(IdleTimeout::new(body, timeout), digest.as_str()),
        )),
        _ => reported(boxed(IdleTimeout::new(body, timeout))),
    };
    Ok((Response::from_parts(parts, body), cacheable))
}

/// A content-addressed GET may only succeed with a body that is checked against its digest
/// (a 200), or with the part of it the client asked for (a 206 to a `Range`). Any other 2xx,
/// a 206 nobody asked for above all, would pass bytes to the client unchecked.
fn check_verifiable(registry: &str, status: StatusCode, ranged: bool) -> Result<(), UpstreamError> {
    let verifiable = !status.is_success()
        || status == StatusCode::OK
        || (status == StatusCode::PARTIAL_CONTENT && ranged);
    if verifiable {
        return Ok(());
    }
    Err(UpstreamError::Unverifiable {
        registry: registry.to_owned(),
        status,
        request: if ranged {
            "a ranged GET"
        } else {
            "a GET without Range"
        },
    })
}

fn verify_manifest(registry: &str, expected: &str, bytes: &Bytes) -> Result<(), ProxyError> {
    let actual = match expected.split_once(':').map(|(a, _)| a) {
        Some("sha256") => format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        Some("sha512") => format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes))),
        _ => return Ok(()),
    };
    if actual != expected {
        return Err(ProxyError::ManifestDigestMismatch {
            registry: registry.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Upload sessions and pagination links point at the upstream's repository path; rewrite
/// them to the client's name so the client keeps talking to portcullis. One that points
/// anywhere else fails the request ([`crate::upstream::location`]).
fn rewrite_location(
    upstream: &Upstream,
    kind: Header,
    value: &HeaderValue,
    upstream_repo: &str,
    client_name: &str,
) -> Result<HeaderValue, UpstreamError> {
    let foreign = |location| UpstreamError::ForeignLocation {
        registry: upstream.host().to_owned(),
        header: kind.name(),
        location,
    };
    let rewritten = location::rewrite(
        kind,
        value.as_bytes(),
        &upstream.config.endpoint,
        upstream_repo,
        client_name,
    )
    .map_err(foreign)?;
    HeaderValue::from_str(&rewritten).map_err(|_| {
        foreign(location::ForeignLocation {
            location: rewritten.clone(),
            reason: location::Reason::Unparsable,
        })
    })
}

/// Attach a policy warning. No client shows it; the audit trail and metrics are the record.
pub(crate) fn with_warning(mut resp: Response<ProxyBody>, verdict: Verdict) -> Response<ProxyBody> {
    if let Some(text) = verdict.warning() {
        let text = text.replace(['"', '\\'], "'");
        if let Ok(v) = HeaderValue::from_str(&format!("299 portcullis \"{text}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

impl Proxy {
    /// A digest-addressed manifest already verified and cached for this repository.
    pub(super) async fn cached_manifest(
        &self,
        route: &Route,
        target: &Target,
        method: &Method,
    ) -> Option<Response<ProxyBody>> {
        let Route::Manifest {
            reference: Reference::Digest(d),
            ..
        } = route
        else {
            return None;
        };
        if !matches!(*method, Method::GET | Method::HEAD) {
            return None;
        }
        let key = ManifestKey {
            registry: target.registry.clone(),
            repository: target.repository.to_string(),
            digest: d.to_string(),
        };
        let hit = self.manifests.get(&key).await;
        let result = if hit.is_some() { "hit" } else { "miss" };
        self.metrics
            .cache
            .with_label_values(&["manifest", result])
            .inc();
        let hit = hit?;
        let mut resp = Response::new(if *method == Method::HEAD {
            empty()
        } else {
            full(hit.body.clone())
        });
        let headers = resp.headers_mut();
        if let Some(ct) = &hit.content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(hit.body.len()));
        if let Ok(v) = HeaderValue::from_str(d.as_str()) {
            headers.insert("docker-content-digest", v);
        }
        headers.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        if let Ok(v) = HeaderValue::from_str(&target.to_string()) {
            headers.insert(RESOLVED_HEADER, v);
        }
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verifiable_answers_to_content_addressed_gets_pass() {
        let check = |status: u16, ranged| {
            check_verifiable("r", StatusCode::from_u16(status).expect("status"), ranged).is_ok()
        };
        assert!(check(200, false));
        assert!(check(200, true), "a 200 to a Range is verified as a whole");
        assert!(check(206, true));
        assert!(!check(206, false), "a 206 nobody asked for");
        for other in [201, 203, 204] {
            assert!(!check(other, false), "{other}");
            assert!(!check(other, true), "{other}");
        }
        assert!(check(404, false) && check(307, false) && check(500, true));
    }

    #[test]
    fn only_distributions_digest_invalid_means_tag_deletes_are_unsupported() {
        let body = br#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#;
        assert!(refuses_tag_delete(body));
        assert!(!refuses_tag_delete(
            br#"{"errors":[{"code":"NAME_INVALID"}]}"#
        ));
        assert!(!refuses_tag_delete(b"not json"));
        assert!(!refuses_tag_delete(b""));
    }

    #[test]
    fn manifest_digests_are_checked() {
        let body = Bytes::from_static(b"{}");
        let good = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        assert!(verify_manifest("r", &good, &body).is_ok());
        let bad = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            verify_manifest("r", &bad, &body),
            Err(ProxyError::ManifestDigestMismatch { .. })
        ));
    }
}
