//! The OCI 1.1 referrers API in front of registries that lack it.
//!
//! `GET /v2/<name>/referrers/<digest>` goes to the upstream first: a registry with the API
//! answers it and the answer passes untouched. One without it (404, 405) gets the
//! referrers tag schema read on its behalf: the image index tagged `<alg>-<hex>` in the
//! same repository ([`crate::pipeline::referrers::index`]), or an empty index.
//!
//! A manifest PUT with a `subject` that the upstream accepted without `OCI-Subject` (it has
//! no API) updates that index on the upstream, and only then does the client get
//! `OCI-Subject`: a client that does not see it maintains the index itself, as the spec
//! says. A DELETE of a manifest with a subject takes its entry out again.
//!
//! Updates of one subject's index are serialized within this process. Across replicas
//! they are not: two pushes of referrers of one subject through two portcullis at the same
//! instant can both read the old index and the later PUT wins, losing the other entry (the
//! same race clients using the tag schema themselves have).

pub mod index;

use std::hash::{Hash, Hasher};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};
use tracing::warn;

use crate::body::{boxed, full, IdleTimeout, ProxyBody};
use crate::error::ProxyError;
use crate::pipeline::plan::{Plan, Target};
use crate::reference::{Digest, Reference};
use crate::route::Route;
use crate::upstream::auth::Identity;
use crate::upstream::{read_limited, Outgoing, Upstream, UpstreamError};
use index::{Index, INDEX_MEDIA_TYPE};

use super::intent::query_value;
use super::sources::{Allowed, Try};
use super::{
    collect_limited, with_warning, Ask, IntoProxyBody, Proxy, MAX_MANIFEST, RESOLVED_HEADER,
};

const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
/// What a manifest may be fetched as, to learn its subject before it is deleted.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
const LOCK_STRIPES: usize = 64;

/// Serializes the read-modify-write of one subject's index. Striped, so that memory stays
/// bounded whatever the number of subjects; two subjects sharing a stripe only wait.
pub(super) struct Locks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Locks {
    pub(super) fn new() -> Locks {
        Locks {
            stripes: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    async fn lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        self.stripes[stripe].lock().await
    }
}

/// Where a subject's index lives and who reads or writes it.
struct Site<'a> {
    upstream: &'a Upstream,
    target: &'a Target,
    identity: Identity,
}

impl Proxy {
    /// `GET`/`HEAD /v2/<name>/referrers/<digest>`: a pull of the subject's repository,
    /// decided by the policy for each registry before it is asked.
    pub(super) async fn referrers(
        &self,
        ask: &Ask<'_>,
        raw_name: &str,
        plan: Plan,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Route::Referrers { digest, .. } = ask.route else {
            return Err(ProxyError::BadRequest("not a referrers request".to_owned()));
        };
        let (mirrors, targets) = match plan {
            Plan::One(t) => (false, vec![t]),
            Plan::Search(ts) => (false, ts),
            Plan::Mirrors(ts) => (true, ts),
        };
        let (parts, _) = req.into_parts();
        let filter = query_value(parts.uri.query(), "artifactType");
        let mut allowed = Allowed::new(self, ask, &targets);
        let mut first_allowed = None;
        while let Some(Try {
            target,
            verdict,
            last,
        }) = allowed.next()
        {
            let req = Request::from_parts(parts.clone(), ()).map(|()| None::<Incoming>);
            match self
                .referrers_at(ask.route, raw_name, target, digest, filter.as_deref(), req)
                .await
            {
                Ok(Some(resp)) => {
                    ask.trail.served(target);
                    return Ok(with_warning(resp, verdict));
                }
                Ok(None) => {
                    first_allowed.get_or_insert((target, verdict));
                }
                Err(e) if mirrors && !last => {
                    warn!(mirror = %target, error = %e, "mirror failed; trying the next source");
                }
                Err(e) => return Err(e),
            }
        }
        match (first_allowed, allowed.denied) {
            // No registry knows of a referrer: the spec's empty list.
            (Some((target, verdict)), _) => {
                ask.trail.served(target);
                Ok(with_warning(
                    index_response(target, &Index::empty(), filter.as_deref()),
                    verdict,
                ))
            }
            (None, Some(denial)) => Err(denial),
            (None, None) => Err(ProxyError::RegistryNotAllowed(raw_name.to_owned())),
        }
    }

    /// One registry's referrers of `subject`: its own API's answer, or its tag-schema
    /// index; `None` when it has neither API nor index.
    async fn referrers_at(
        &self,
        route: &Route,
        raw_name: &str,
        target: &Target,
        subject: &Digest,
        filter: Option<&str>,
        req: Request<Option<Incoming>>,
    ) -> Result<Option<Response<ProxyBody>>, ProxyError> {
        let identity = self.identity(target, req.headers().get(header::AUTHORIZATION))?;
        let resp = Box::pin(self.forward(route, raw_name, target, req)).await?;
        if !matches!(
            resp.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            // The registry has the API (or failed, or wants credentials): its answer.
            return Ok(Some(resp));
        }
        let upstream = self.upstream(target)?;
        let site = Site {
            upstream,
            target,
            identity,
        };
        Ok(read_index(&site, subject)
            .await?
            .map(|index| index_response(target, &index, filter)))
    }

    /// A manifest PUT: sent upstream as any push, then its subject's index updated when the
    /// upstream has no referrers API. Anything else is forwarded.
    pub(super) async fn push_with_referrers<B>(
        &self,
        route: &Route,
        raw_name: &str,
        target: &Target,
        req: Request<B>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: IntoProxyBody,
    {
        let Route::Manifest { reference, .. } = route else {
            return self.forward(route, raw_name, target, req).await;
        };
        if req.method() != Method::PUT {
            return self.forward(route, raw_name, target, req).await;
        }
        let upstream = self.upstream(target)?;
        let identity = self.identity(target, req.headers().get(header::AUTHORIZATION))?;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (parts, body) = req.into_parts();
        // forward reads a manifest whole anyway; read here, the bytes are also the entry.
        let body = boxed(IdleTimeout::new(
            body.into_proxy_body(),
            upstream.config.body_timeout,
        ));
        let bytes = collect_limited(body, MAX_MANIFEST).await?;
        let req = Request::from_parts(parts, full(bytes.clone()));
        let resp = Box::pin(self.forward(route, raw_name, target, req)).await?;
        let digest = match reference {
            Reference::Digest(d) => d.to_string(),
            Reference::Tag(_) => format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        };
        let site = Site {
            upstream,
            target,
            identity,
        };
        Ok(self
            .after_push(&site, &digest, &bytes, content_type.as_deref(), resp)
            .await)
    }

    async fn after_push(
        &self,
        site: &Site<'_>,
        digest: &str,
        manifest: &[u8],
        content_type: Option<&str>,
        mut resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        if !needs_index(&resp) {
            return resp;
        }
        // The upstream accepted the manifest, so it judged the JSON; one portcullis cannot
        // read as a referrer is simply not one.
        let Ok(Some(referrer)) = index::referrer(manifest, digest, content_type) else {
            return resp;
        };
        let subject = referrer.subject.clone();
        let descriptor = referrer.descriptor;
        match self
            .edit_index(site, &subject, |index| index.add(descriptor))
            .await
        {
            Ok(()) => {
                if let Ok(v) = HeaderValue::from_str(subject.as_str()) {
                    resp.headers_mut().insert(OCI_SUBJECT, v);
                }
            }
            Err(e) => self.index_failed(site, &e),
        }
        resp
    }

    /// A manifest DELETE by digest: its subject is learnt first (it cannot be read once
    /// gone), and its entry leaves the subject's index once the upstream deleted it.
    pub(super) async fn delete_with_referrers(
        &self,
        route: &Route,
        raw_name: &str,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Route::Manifest {
            reference: Reference::Digest(digest),
            ..
        } = route
        else {
            return self.forward(route, raw_name, target, req).await;
        };
        let upstream = self.upstream(target)?;
        let site = Site {
            upstream,
            target,
            identity: self.identity(target, req.headers().get(header::AUTHORIZATION))?,
        };
        let subject = match read_manifest(&site, digest).await {
            Ok(manifest) => manifest.as_deref().and_then(index::subject_of),
            Err(e) => {
                warn!(registry = %target.registry, error = %e, "cannot read a manifest before its delete; its referrers entry stays");
                None
            }
        };
        let resp = Box::pin(self.forward(route, raw_name, target, req)).await?;
        if let (Some(subject), true) = (subject, resp.status().is_success()) {
            let removed = self
                .edit_index(&site, &subject, |index| index.remove(digest.as_str()))
                .await;
            if let Err(e) = removed {
                self.index_failed(&site, &e);
            }
        }
        Ok(resp)
    }

    /// Read, change and write back one subject's index, one change at a time.
    async fn edit_index(
        &self,
        site: &Site<'_>,
        subject: &Digest,
        edit: impl FnOnce(&mut Index) -> bool,
    ) -> Result<(), UpstreamError> {
        let key = format!(
            "{}/{}@{subject}",
            site.target.registry, site.target.repository
        );
        let _serialized = self.referrer_locks.lock(&key).await;
        let mut index = read_index(site, subject)
            .await?
            .unwrap_or_else(Index::empty);
        if !edit(&mut index) {
            return Ok(());
        }
        let body = index.to_bytes();
        if body.len() > MAX_MANIFEST {
            return Err(site.upstream.protocol_error(format!(
                "the referrers index of {subject} would exceed {MAX_MANIFEST} bytes"
            )));
        }
        let repo = site.target.repository.as_str();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(INDEX_MEDIA_TYPE),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let out = Outgoing {
            method: Method::PUT,
            path_and_query: format!("/v2/{repo}/manifests/{}", index::tag(subject)),
            headers,
            body: full(body),
            replayable: false,
            scopes: vec![format!("repository:{repo}:pull,push")],
            identity: site.identity.clone(),
        };
        let resp = site.upstream.send(out).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(UpstreamError::Status {
                registry: site.target.registry.clone(),
                status: resp.status(),
            });
        }
        Ok(())
    }

    fn index_failed(&self, site: &Site<'_>, e: &UpstreamError) {
        warn!(
            registry = %site.target.registry,
            repository = %site.target.repository,
            error = %e,
            "the manifest is in the upstream but its referrers index was not updated; answered without OCI-Subject"
        );
        self.metrics
            .referrers_index_failures
            .with_label_values(&[self.metrics.registry_label(Some(&site.target.registry))])
            .inc();
    }

    fn upstream(&self, target: &Target) -> Result<&Upstream, ProxyError> {
        self.upstreams
            .get(&target.registry)
            .map(|u| &**u)
            .ok_or_else(|| ProxyError::RegistryNotAllowed(target.registry.clone()))
    }

    fn identity(
        &self,
        target: &Target,
        authorization: Option<&HeaderValue>,
    ) -> Result<Identity, ProxyError> {
        Ok(self.upstream(target)?.identity_for(authorization))
    }
}

/// An accepted manifest PUT from a registry without the referrers API (no `OCI-Subject`).
fn needs_index(resp: &Response<ProxyBody>) -> bool {
    resp.status() == StatusCode::CREATED && !resp.headers().contains_key(OCI_SUBJECT)
}

/// The subject's tag-schema index on the upstream; `None` when the tag does not exist.
async fn read_index(site: &Site<'_>, subject: &Digest) -> Result<Option<Index>, UpstreamError> {
    let tag = index::tag(subject);
    let Some(bytes) = get_manifest(site, &tag, INDEX_MEDIA_TYPE).await? else {
        return Ok(None);
    };
    Index::parse(&bytes).map(Some).map_err(|e| {
        site.upstream
            .protocol_error(format!("referrers index {tag}: {e}"))
    })
}

async fn read_manifest(site: &Site<'_>, digest: &Digest) -> Result<Option<Bytes>, UpstreamError> {
    let bytes = get_manifest(site, digest.as_str(), MANIFEST_TYPES).await?;
    // Only what hashes to its digest may name a subject whose index is then edited.
    let verified = bytes.filter(|b| {
        digest.algorithm() != "sha256" || hex::encode(Sha256::digest(b)) == digest.hex()
    });
    Ok(verified)
}

/// GET one manifest, bounded in size and time; `None` for a 404.
async fn get_manifest(
    site: &Site<'_>,
    reference: &str,
    accept: &'static str,
) -> Result<Option<Bytes>, UpstreamError> {
    let repo = site.target.repository.as_str();
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
    let out = Outgoing {
        method: Method::GET,
        path_and_query: format!("/v2/{repo}/manifests/{reference}"),
        headers,
        body: crate::body::empty(),
        replayable: true,
        scopes: vec![format!("repository:{repo}:pull")],
        identity: site.identity.clone(),
    };
    let upstream = site.upstream;
    let resp = upstream.send(out).await?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status => {
            return Err(UpstreamError::Status {
                registry: upstream.host().to_owned(),
                status,
            })
        }
    }
    let after = upstream.config.body_timeout;
    let read = read_limited(resp.into_body(), MAX_MANIFEST, upstream.host());
    match tokio::time::timeout(after, read).await {
        Ok(bytes) => bytes.map(Some),
        Err(_) => Err(UpstreamError::Timeout {
            registry: upstream.host().to_owned(),
            after,
        }),
    }
}

/// The client's answer from a tag-schema index.
fn index_response(target: &Target, index: &Index, filter: Option<&str>) -> Response<ProxyBody> {
    let (body, filtered) = match filter {
        Some(t) => (index.filtered(t).to_bytes(), true),
        None => (index.to_bytes(), false),
    };
    let len = body.len();
    let mut resp = Response::new(full(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(INDEX_MEDIA_TYPE),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if filtered {
        headers.insert(FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    if let Ok(v) = HeaderValue::from_str(&target.to_string()) {
        headers.insert(RESOLVED_HEADER, v);
    }
    resp
}
