//! Blob reads answered by the blob cache ([`crate::store::blobs`]), after the policy's
//! decision: a hit from disk (hashed again as it is served), a fetch in flight joined, or a
//! new fetch that every client asking meanwhile shares.
//!
//! A digest names content, not access. A hit is served without asking only where the blob
//! was seen before (this registry and repository, as an identity every client shares);
//! anywhere else, and always for a client acting as itself (`pass_client_credentials`),
//! the upstream must first answer a `HEAD` of the blob there, with the client's
//! credentials, or its refusal is the answer.

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tracing::warn;

use crate::body::{empty, ProxyBody};
use crate::error::ProxyError;
use crate::pipeline::plan::Target;
use crate::route::Route;
use crate::store::blobs::fill::{Begin, FillHandle};
use crate::store::blobs::{read, BlobCache};

use super::Proxy;

impl Proxy {
    /// The cache and the blob's hex digest, when the cache is the one to answer this read:
    /// a `GET` of a sha256 blob.
    pub(super) fn blob_cache_for(
        &self,
        route: &Route,
        method: &Method,
    ) -> Option<(Arc<BlobCache>, String)> {
        let cache = self.blobs.as_ref()?;
        let Route::Blob { digest, .. } = route else {
            return None;
        };
        if *method != Method::GET {
            return None;
        }
        let hex = digest.as_str().strip_prefix("sha256:")?;
        Some((cache.clone(), hex.to_owned()))
    }

    pub(super) async fn cached_blob(
        &self,
        cache: Arc<BlobCache>,
        hex: String,
        route: &Route,
        raw_name: &str,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let shared = self
            .upstreams
            .get(&target.registry)
            .is_some_and(|u| u.identity_is_shared(req.headers().get(header::AUTHORIZATION)));
        let here = target.to_string();
        let digest = format!("sha256:{hex}");
        let range = req.headers().get(header::RANGE).cloned();
        if let Some((path, size)) = cache.get(&hex) {
            if !(shared && cache.seen_in(&hex, &here)) {
                // Seen elsewhere, or this client acts as itself: the upstream says first
                // whether this repository, for this client, has it.
                if let Some(refused) = self.confirm(route, raw_name, target, req.headers()).await? {
                    return Ok(refused);
                }
                if shared {
                    cache.saw_in(&hex, &here);
                }
            }
            match range.as_ref() {
                None => match tokio::fs::File::open(&path).await {
                    Ok(file) => {
                        self.count_blob_cache("hit");
                        let corrupt = self.metrics.blob_cache_corrupt.clone();
                        let (evicting, h) = (cache.clone(), hex.clone());
                        let body = read::verified(file, &digest, move || {
                            warn!(digest = %h, "cached blob does not match its digest; evicted");
                            corrupt.inc();
                            evicting.evict(&h);
                        });
                        return Ok(answer(StatusCode::OK, size, &digest, None, body));
                    }
                    // Evicted between the lookup and the open: a miss.
                    Err(_) => cache.evict(&hex),
                },
                Some(range) => {
                    let part = match byte_range(range, size) {
                        Some((start, end)) => read::range(path, start, end)
                            .await
                            .map(|body| (start, end, body))
                            .map_err(
                                |e| warn!(error = %e, "blob cache read failed; asking upstream"),
                            )
                            .ok(),
                        None => None,
                    };
                    if let Some((start, end, body)) = part {
                        self.count_blob_cache("hit");
                        let content_range = format!("bytes {start}-{end}/{size}");
                        return Ok(answer(
                            StatusCode::PARTIAL_CONTENT,
                            end - start + 1,
                            &digest,
                            Some(content_range),
                            body,
                        ));
                    }
                }
            }
        }
        if range.is_some() {
            self.count_blob_cache("miss");
            // Part of a blob not cached: the upstream answers it, as without a cache.
            return self.forward(route, raw_name, target, req).await;
        }
        let origin = shared.then_some(here.as_str());
        let begun = match cache.begin(&hex, origin) {
            Ok(begun) => begun,
            Err(e) => {
                // A cache that cannot write (a full disk) costs the cache, not the pull.
                warn!(error = %e, "blob cache fill not started; asking upstream");
                self.count_blob_cache("miss");
                return self.forward(route, raw_name, target, req).await;
            }
        };
        match begun {
            Begin::Follower(fill) => {
                if !(shared && fill.origin.as_deref() == Some(here.as_str())) {
                    if let Some(refused) =
                        self.confirm(route, raw_name, target, req.headers()).await?
                    {
                        return Ok(refused);
                    }
                }
                match fill.size().await {
                    Some(size) => {
                        self.count_blob_cache("coalesced");
                        let body = read::follow(fill, size);
                        Ok(answer(StatusCode::OK, size, &digest, None, body))
                    }
                    // The shared fetch failed before it started: this client asks on its
                    // own, and gets the upstream's own answer.
                    None => self.forward(route, raw_name, target, req).await,
                }
            }
            Begin::Leader(handle) => {
                self.count_blob_cache("miss");
                let lead = self.lead(handle, &digest, route, raw_name, target, req);
                let resp = lead.await?;
                if shared && resp.status() == StatusCode::OK {
                    cache.saw_in(&hex, &here);
                }
                Ok(resp)
            }
        }
    }

    /// Fetches the blob for everyone: the upstream's body goes to the file, and this client
    /// reads behind it like the others.
    async fn lead(
        &self,
        mut handle: FillHandle,
        digest: &str,
        route: &Route,
        raw_name: &str,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let resp = self.forward(route, raw_name, target, req).await?;
        let size = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (Some(size), StatusCode::OK) = (size, resp.status()) else {
            // Not a blob to keep (an error, a redirect it did not follow, no length): the
            // answer as it is, and the followers ask on their own.
            return Ok(resp);
        };
        if size > handle.max_bytes() {
            // It would evict everything and then itself.
            return Ok(resp);
        }
        handle.start(size);
        let fill = handle.fill();
        let mut body = resp.into_body();
        tokio::spawn(async move {
            // The body is checked against the digest as it streams (respond.rs): an error
            // here, a mismatch included, means nothing is committed.
            while let Some(frame) = body.frame().await {
                let data = match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    Err(e) => {
                        warn!(error = %e, "blob fetch for the cache failed");
                        return;
                    }
                };
                if let Err(e) = handle.write(&data).await {
                    warn!(error = %e, "blob cache write failed");
                    return;
                }
            }
            if let Err(e) = handle.commit().await {
                warn!(error = %e, "blob cache commit failed");
            }
        });
        Ok(answer(
            StatusCode::OK,
            size,
            digest,
            None,
            read::follow(fill, size),
        ))
    }

    /// A `HEAD` of the blob as this client: its upstream answer when that is a refusal.
    async fn confirm(
        &self,
        route: &Route,
        raw_name: &str,
        target: &Target,
        headers: &HeaderMap,
    ) -> Result<Option<Response<ProxyBody>>, ProxyError> {
        let mut head = Request::new(None::<Incoming>);
        *head.method_mut() = Method::HEAD;
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            head.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        let resp = self.forward(route, raw_name, target, head).await?;
        if resp.status().is_success() {
            return Ok(None);
        }
        Ok(Some(resp.map(|_| empty())))
    }

    fn count_blob_cache(&self, result: &str) {
        self.metrics
            .cache
            .with_label_values(&["blobs", result])
            .inc();
    }
}

fn answer(
    status: StatusCode,
    length: u64,
    digest: &str,
    content_range: Option<String>,
    body: ProxyBody,
) -> Response<ProxyBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(digest) {
        h.insert("docker-content-digest", v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(v) = content_range.and_then(|r| HeaderValue::from_str(&r).ok()) {
        h.insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// One satisfiable `bytes=` range of a blob of `size` bytes, inclusive; anything else
/// (several ranges, a suffix past the start, nonsense) is left to the upstream.
fn byte_range(value: &HeaderValue, size: u64) -> Option<(u64, u64)> {
    let spec = value.to_str().ok()?.strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.checked_sub(n.min(size))?, size - 1)
        }
        (start, "") => (start.parse().ok()?, size - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && end < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_satisfiable_range_is_read_from_the_cache_and_anything_else_is_not() {
        let r = |s: &str| byte_range(&HeaderValue::from_str(s).expect("header"), 100);
        assert_eq!(r("bytes=0-9"), Some((0, 9)));
        assert_eq!(r("bytes=90-"), Some((90, 99)));
        assert_eq!(r("bytes=-10"), Some((90, 99)));
        assert_eq!(r("bytes=50-500"), Some((50, 99)));
        assert_eq!(r("bytes=100-"), None);
        assert_eq!(r("bytes=9-0"), None);
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
    }
}
