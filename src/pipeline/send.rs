//! Sending one request to one registry: the upstream's path and token scope, the headers
//! that may cross (never hop-by-hop ones, never the client's credentials), and the body,
//! streamed or (for manifests) read whole and bounded. The answer goes to
//! [`super::respond`].

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::{Body as _, Incoming};
use tracing::warn;

use crate::body::Counted;
use crate::body::{boxed, empty, full, ProxyBody};
use crate::error::ProxyError;
use crate::pipeline::plan::Target;
use crate::reference::{Name, Reference};
use crate::route::Route;
use crate::store::manifests::ManifestKey;
use crate::upstream::Outgoing;

use super::respond::{respond, Asked};
use super::{Proxy, MAX_MANIFEST};

/// Hop-by-hop headers (RFC 9110 7.6.1) and those portcullis sets itself.
pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

impl Proxy {
    /// Send one request to one registry and turn its answer into the client's response.
    pub(crate) async fn forward<B>(
        &self,
        route: &Route,
        raw_name: &str,
        target: &Target,
        req: Request<B>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: IntoProxyBody,
    {
        let upstream = self
            .upstreams
            .get(&target.registry)
            .ok_or_else(|| ProxyError::RegistryNotAllowed(target.registry.clone()))?;
        let (parts, body) = req.into_parts();
        let method = parts.method.clone();
        let repo = target.repository.as_str();
        let mut scopes = vec![scope(repo, &method)];
        let query = match route {
            Route::UploadStart { .. } => self.mount_query(parts.uri.query(), target, &mut scopes),
            _ => parts.uri.query().map(str::to_owned),
        };
        let path = upstream_path(route, repo);
        let path_and_query = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path,
        };
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (k, v) in &parts.headers {
            if !is_hop_by_hop(k) && k != header::AUTHORIZATION {
                headers.append(k.clone(), v.clone());
            }
        }
        let body = body.into_proxy_body();
        let replayable = body.is_end_stream();
        // A client that stops sending mid-upload is cut after the registry's body timeout,
        // as a stalled upstream is: the upstream's answer is only timed once the body is in.
        let (body, client_failure) = if replayable {
            (body, None)
        } else {
            let (body, failure) = crate::body::watched(crate::body::IdleTimeout::new(
                body,
                upstream.config.body_timeout,
            ));
            (boxed(body), Some(failure))
        };
        let uploaded = self
            .metrics
            .bytes
            .with_label_values(&["upload", &target.registry]);
        let body = boxed(Counted::new(body, uploaded));
        let manifest_put = matches!(route, Route::Manifest { .. }) && method == Method::PUT;
        let body = if replayable {
            empty()
        } else if manifest_put {
            // Manifests are small and later checked by policy: read them whole, bounded.
            let bytes = collect_limited(body, MAX_MANIFEST).await?;
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            full(bytes)
        } else {
            body
        };
        let session =
            matches!(route, Route::Upload { .. }).then(|| (path_and_query.clone(), scopes.clone()));
        let out = Outgoing {
            method: method.clone(),
            path_and_query,
            headers,
            body,
            replayable,
            scopes,
            identity: upstream.identity_for(parts.headers.get(header::AUTHORIZATION)),
        };
        let cache_key = match route {
            Route::Manifest {
                reference: Reference::Digest(d),
                ..
            } if method == Method::GET
                && upstream.identity_is_shared(parts.headers.get(header::AUTHORIZATION)) =>
            {
                Some(ManifestKey {
                    registry: target.registry.clone(),
                    repository: target.repository.to_string(),
                    digest: d.to_string(),
                })
            }
            _ => None,
        };
        let resp = match upstream.send(out).await {
            Ok(resp) => resp,
            Err(e) => match client_failure.as_ref().and_then(|f| f.get()) {
                Some(why) => {
                    if let Some((path_and_query, scopes)) = session {
                        let identity =
                            upstream.identity_for(parts.headers.get(header::AUTHORIZATION));
                        cancel_upload(upstream, path_and_query, scopes, identity, why).await;
                    }
                    return Err(ProxyError::ClientBody(why.clone()));
                }
                None => return Err(e.into()),
            },
        };
        let page = crate::listing::tags::PageRequest::parse(parts.uri.query());
        let asked = Asked {
            method: &method,
            page: &page,
            ranged: parts.headers.contains_key(header::RANGE),
        };
        let (resp, manifest) = respond(
            route,
            raw_name,
            target,
            upstream,
            &self.metrics,
            &asked,
            resp,
        )
        .await?;
        if let (Some(key), Some(manifest)) = (cache_key, manifest) {
            self.manifests.insert(key, manifest).await;
        }
        Ok(resp)
    }

    /// Cross-repository mounts name the source in the client's terms; the upstream needs
    /// its own. A source on another registry cannot be mounted: drop the mount and let the
    /// registry answer 202 so the client uploads instead (the spec's fallback).
    fn mount_query(
        &self,
        query: Option<&str>,
        target: &Target,
        scopes: &mut Vec<String>,
    ) -> Option<String> {
        let query = query?;
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let source = pairs
            .iter()
            .find(|(k, _)| k == "from")
            .and_then(|(_, v)| Name::parse(v).ok())
            .and_then(|n| self.resolver.for_push(&n).ok())
            .filter(|src| src.registry == target.registry);
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            match (k.as_str(), &source) {
                ("from", Some(src)) => {
                    scopes.push(format!("repository:{}:pull", src.repository));
                    out.append_pair("from", src.repository.as_str());
                }
                ("from" | "mount", None) => {}
                _ => {
                    out.append_pair(k, v);
                }
            }
        }
        Some(out.finish())
    }
}

/// A client's upload that stopped mid-body leaves the upstream's session holding part of
/// it, which no client will resume: cancel it, as the client would have, so the registry
/// does not keep it until its own purge. (distribution answers 404: a session whose size no
/// longer matches its signed `_state` is dead to it already, and its purge removes the rest.)
async fn cancel_upload(
    upstream: &crate::upstream::Upstream,
    path_and_query: String,
    scopes: Vec<String>,
    identity: crate::upstream::auth::Identity,
    why: &str,
) {
    let host = upstream.config.host.as_str();
    let out = Outgoing {
        method: Method::DELETE,
        path_and_query,
        headers: HeaderMap::new(),
        body: empty(),
        replayable: true,
        scopes,
        identity,
    };
    match upstream.send(out).await {
        Ok(resp) => warn!(
            registry = %host,
            status = resp.status().as_u16(),
            reason = %why,
            "client body failed mid-upload; asked the upstream to cancel the upload session"
        ),
        Err(e) => warn!(
            registry = %host,
            reason = %why,
            error = %e,
            "client body failed mid-upload; cancelling the upstream upload session failed"
        ),
    }
}

fn upstream_path(route: &Route, repo: &str) -> String {
    match route {
        Route::Manifest { reference, .. } => format!("/v2/{repo}/manifests/{reference}"),
        Route::Blob { digest, .. } => format!("/v2/{repo}/blobs/{digest}"),
        Route::UploadStart { .. } => format!("/v2/{repo}/blobs/uploads/"),
        Route::Upload { session, .. } => format!("/v2/{repo}/blobs/uploads/{session}"),
        Route::Tags { .. } => format!("/v2/{repo}/tags/list"),
        Route::Referrers { digest, .. } => format!("/v2/{repo}/referrers/{digest}"),
        Route::Base | Route::Catalog | Route::V1Ping | Route::V1Search => "/v2/".to_owned(),
    }
}

/// The token scope a request needs (distribution's `repository:<name>:<actions>`).
fn scope(repo: &str, method: &Method) -> String {
    let actions = match *method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "pull,push",
    };
    format!("repository:{repo}:{actions}")
}

/// Read a client body whole, refusing more than `limit` bytes.
pub(crate) async fn collect_limited(
    mut body: ProxyBody,
    limit: usize,
) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.map_err(|e| ProxyError::ClientBody(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ProxyError::ManifestTooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The client's body, or none when a request is replayed against the next search registry.
pub trait IntoProxyBody {
    fn into_proxy_body(self) -> ProxyBody;
}

impl IntoProxyBody for ProxyBody {
    fn into_proxy_body(self) -> ProxyBody {
        self
    }
}

impl IntoProxyBody for Incoming {
    fn into_proxy_body(self) -> ProxyBody {
        boxed(self)
    }
}

impl IntoProxyBody for Option<Incoming> {
    fn into_proxy_body(self) -> ProxyBody {
        self.map(boxed).unwrap_or_else(empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_method() {
        assert_eq!(scope("a/b", &Method::HEAD), "repository:a/b:pull");
        assert_eq!(scope("a/b", &Method::PATCH), "repository:a/b:pull,push");
        assert_eq!(scope("a/b", &Method::DELETE), "repository:a/b:delete");
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded_but_accept_is() {
        assert!(is_hop_by_hop(&header::CONNECTION));
        assert!(is_hop_by_hop(&header::HOST));
        assert!(!is_hop_by_hop(&header::ACCEPT));
    }
}
