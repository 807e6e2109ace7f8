//! The client's response: an upstream answer with its headers rewritten to portcullis's
//! names, its body streamed (blobs verified against their digest) or read whole (manifests
//! verified and offered to the cache, tag lists paginated); or a manifest straight from the
//! cache; plus the policy's warning, if any.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

use crate::body::{boxed, empty, full, IdleTimeout, ProxyBody, Verified};
use crate::cache::{CachedManifest, ManifestKey};
use crate::error::ProxyError;
use crate::gate::Verdict;
use crate::reference::Reference;
use crate::resolve::Target;
use crate::route::Route;
use crate::upstream::{read_limited, Upstream};

use super::send::is_hop_by_hop;
use super::{Proxy, API_VERSION, CLIENT_CHALLENGE, MAX_MANIFEST, RESOLVED_HEADER};

/// Tag lists are buffered only to paginate them for registries that do not.
const MAX_TAG_LIST: usize = 16 * 1024 * 1024;

/// Turn an upstream response into the client's response; a verified manifest is also
/// returned for the cache.
pub(super) async fn respond(
    route: &Route,
    raw_name: &str,
    target: &Target,
    upstream: &Upstream,
    method: &Method,
    page: &crate::tags::PageRequest,
    resp: Response<Incoming>,
) -> Result<(Response<ProxyBody>, Option<CachedManifest>), ProxyError> {
    let (mut parts, body) = resp.into_parts();
    let repo = target.repository.as_str();
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    for (k, v) in &parts.headers {
        if is_hop_by_hop(k) || k == header::WWW_AUTHENTICATE {
            continue;
        }
        if k == header::LOCATION || k == header::LINK {
            headers.append(k.clone(), rewrite_location(v, repo, raw_name));
        } else {
            headers.append(k.clone(), v.clone());
        }
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
    let registry = upstream.host();
    let timeout = upstream.config.body_timeout;
    let ok = parts.status == StatusCode::OK;
    let mut cacheable = None;
    let body = match route {
        Route::Tags { .. } if ok && method == Method::GET && page.is_paged() => {
            let bytes = read_limited(body, MAX_TAG_LIST, registry).await?;
            match crate::tags::paginate(&bytes, page, raw_name) {
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
            if let Reference::Digest(d) = reference {
                verify_manifest(registry, d.as_str(), &bytes)?;
                cacheable = Some(CachedManifest {
                    body: bytes.clone(),
                    content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                });
            }
            full(bytes)
        }
        Route::Blob { digest, .. } if ok && method == Method::GET => boxed(Verified::new(
            IdleTimeout::new(body, timeout),
            digest.as_str(),
        )),
        _ => boxed(IdleTimeout::new(body, timeout)),
    };
    Ok((Response::from_parts(parts, body), cacheable))
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
/// them to the client's name so the client keeps talking to portcullis. The origin is
/// dropped: a relative reference resolves against portcullis.
pub fn rewrite_location(
    value: &HeaderValue,
    upstream_repo: &str,
    client_name: &str,
) -> HeaderValue {
    let Ok(s) = value.to_str() else {
        return value.clone();
    };
    let from = format!("/v2/{upstream_repo}/");
    let Some(at) = s.find(&from) else {
        return value.clone();
    };
    // Keep a Link header's `<` and everything after the path; drop any scheme://host.
    let prefix = if s.starts_with('<') { "<" } else { "" };
    let rewritten = format!("{prefix}/v2/{client_name}/{}", &s[at + from.len()..]);
    HeaderValue::from_str(&rewritten).unwrap_or_else(|_| value.clone())
}

/// Attach a policy warning. No client shows it; the audit trail and metrics are the record.
pub(crate) fn with_warning(mut resp: Response<ProxyBody>, verdict: Verdict) -> Response<ProxyBody> {
    if let Verdict::Warn(text) = verdict {
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
    fn upload_locations_are_rewritten_to_the_client_name() {
        let v = HeaderValue::from_static(
            "https://127.0.0.1:5001/v2/team/app/blobs/uploads/abc?_state=xyz",
        );
        let out = rewrite_location(&v, "team/app", "corp.example.com/team/app");
        assert_eq!(
            out,
            "/v2/corp.example.com/team/app/blobs/uploads/abc?_state=xyz"
        );
        let rel = HeaderValue::from_static("/v2/library/fedora/blobs/uploads/u");
        assert_eq!(
            rewrite_location(&rel, "library/fedora", "fedora"),
            "/v2/fedora/blobs/uploads/u"
        );
    }

    #[test]
    fn tag_pagination_links_are_rewritten() {
        let v =
            HeaderValue::from_static(r#"</v2/library/fedora/tags/list?last=b&n=2>; rel="next""#);
        assert_eq!(
            rewrite_location(&v, "library/fedora", "fedora"),
            r#"</v2/fedora/tags/list?last=b&n=2>; rel="next""#
        );
    }

    #[test]
    fn foreign_locations_are_left_alone() {
        let v = HeaderValue::from_static("https://cdn.example/blob");
        assert_eq!(rewrite_location(&v, "team/app", "x/team/app"), v);
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
