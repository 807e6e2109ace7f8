//! Push gating that needs content: labels, annotations and provenance.
//!
//! When the policy has content-based `[[private]]` rules for a public destination, the push
//! is **staged**: portcullis answers the uploads itself ([`crate::store::stage`]), reads the
//! manifest when it arrives (it comes last), decides, and only then sends the blobs and the
//! manifest upstream. A rejected push therefore leaves no byte of the image at the
//! destination. Everything else about a push is decided by name at its first request
//! ([`crate::pipeline::verdict::Gate::check`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize as _;
use tracing::{info, warn};

use crate::body::{boxed, empty, full, ProxyBody};
use crate::error::ProxyError;
use crate::pipeline::plan::Target;

use crate::metrics::Metrics;
use crate::pipeline::verdict::{Gate, Verdict};
use crate::pipeline::{Ask, MAX_MANIFEST};
use crate::policy::PushContent;
use crate::route::Route;
use crate::store::provenance::{Provenance, ProvenanceError, Seen};
use crate::store::stage::{self, Stage, StageError, SESSION_PREFIX};
use crate::upstream::{read_limited, Outgoing, Upstream};

/// What a manifest references and says about itself.
#[derive(Debug, Default, PartialEq)]
pub struct ManifestFacts {
    pub config: Option<String>,
    pub blobs: Vec<String>,
    pub annotations: HashMap<String, String>,
}

/// Image config labels as the config blob has them. Not oci-spec's `ImageConfiguration`: it
/// requires `architecture`, `os` and `rootfs`, which no registry checks in a config blob, so a
/// config without them would parse as "no labels" and slip past a label rule.
#[derive(serde::Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawImageConfig>,
}

#[derive(serde::Deserialize)]
struct RawImageConfig {
    #[serde(default, rename = "Labels")]
    labels: Option<HashMap<String, String>>,
}

impl ManifestFacts {
    /// An image manifest (OCI or docker v2 schema 2) or an index (OCI or docker manifest
    /// list). An index has no config or layers of its own. The shape decides which it is: a
    /// document with `config` or `layers` is read as an image manifest and must be one, so a
    /// malformed image manifest cannot pass as an index with nothing to check.
    pub fn parse(bytes: &[u8]) -> Result<ManifestFacts, ProxyError> {
        let invalid =
            |e: serde_json::Error| ProxyError::BadRequest(format!("manifest is not valid: {e}"));
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
        let is_image = doc.get("config").is_some() || doc.get("layers").is_some();
        if !is_image && doc.get("manifests").is_some() {
            let index = ImageIndex::deserialize(&doc).map_err(invalid)?;
            return Ok(ManifestFacts {
                annotations: index.annotations().clone().unwrap_or_default(),
                ..ManifestFacts::default()
            });
        }
        let manifest = ImageManifest::deserialize(&doc).map_err(invalid)?;
        let config = manifest.config().digest().to_string();
        let mut blobs: Vec<String> = manifest
            .layers()
            .iter()
            .map(|l| l.digest().to_string())
            .collect();
        blobs.push(config.clone());
        Ok(ManifestFacts {
            config: Some(config),
            blobs,
            annotations: manifest.annotations().clone().unwrap_or_default(),
        })
    }
}

/// What the provenance store knows of a push's staged blobs.
#[derive(Debug, Default)]
struct SeenContent {
    private_only: bool,
    /// Fully qualified names the blobs were seen under, for `[[private]]` `name` patterns.
    names: Vec<String>,
}

/// What private-push protection asks the provenance store (a trait so that a failing store
/// can be tested).
pub(crate) trait Lookup {
    fn private_only(&self, digest: &str) -> Result<bool, ProvenanceError>;
    fn names(&self, digest: &str) -> Result<Vec<String>, ProvenanceError>;
}

impl Lookup for Provenance {
    fn private_only(&self, digest: &str) -> Result<bool, ProvenanceError> {
        Provenance::private_only(self, digest)
    }

    fn names(&self, digest: &str) -> Result<Vec<String>, ProvenanceError> {
        Provenance::names(self, digest)
    }
}

/// Provenance and names of `staged`; any store error is the caller's to refuse on.
fn seen_content(
    store: &dyn Lookup,
    uses_provenance: bool,
    staged: &[String],
) -> Result<SeenContent, ProvenanceError> {
    let mut seen = SeenContent::default();
    for digest in staged {
        if uses_provenance && store.private_only(digest)? {
            seen.private_only = true;
        }
        for name in store.names(digest)? {
            if !seen.names.contains(&name) {
                seen.names.push(name);
            }
        }
    }
    Ok(seen)
}

/// Image config labels (`config.Labels`).
pub fn labels(config: &[u8]) -> HashMap<String, String> {
    serde_json::from_slice::<RawConfig>(config)
        .ok()
        .and_then(|c| c.config)
        .and_then(|c| c.labels)
        .unwrap_or_default()
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A staged upload's body, cut when the client stops sending for the registry's body
/// timeout, so a stalled client never holds a session (or its file) open for good.
fn client_body(upstream: &Upstream, body: Incoming) -> ProxyBody {
    boxed(crate::body::IdleTimeout::new(
        body,
        upstream.config.body_timeout,
    ))
}

/// The push a staged upload belongs to.
fn owner(ask: &Ask<'_>, target: &Target) -> stage::Owner {
    stage::Owner {
        client: ask.peer.ip(),
        repository: target.repository.to_string(),
    }
}

fn stage_error(e: StageError) -> ProxyError {
    match e {
        StageError::DigestMismatch { .. } | StageError::UnsupportedDigest(_) => {
            ProxyError::DigestMismatch(e.to_string())
        }
        StageError::UnknownSession(_) => ProxyError::UploadUnknown(e.to_string()),
        // The client stalled or went away mid-upload: its fault, not staging's.
        StageError::Body(why) => {
            warn!(reason = %why, "staged upload stopped mid-body; its session and file are dropped");
            ProxyError::ClientBody(why)
        }
        other => ProxyError::Staging(other.to_string()),
    }
}

fn upload_response(
    status: StatusCode,
    location: String,
    id: Option<&str>,
    size: Option<u64>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Some(id) = id.and_then(|i| HeaderValue::from_str(i).ok()) {
        h.insert("docker-upload-uuid", id);
    }
    if let Some(size) = size {
        let range = format!("0-{}", size.saturating_sub(1));
        if let Ok(v) = HeaderValue::from_str(&range) {
            h.insert(header::RANGE, v);
        }
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

/// What staging made of a push request.
pub(crate) enum Staged {
    /// Staged: portcullis answered it (an upload kept locally).
    Answered(Response<ProxyBody>),
    /// The manifest of a staged push, judged and its blobs sent: it goes upstream now, and
    /// [`PushStager::published`] is told how that went.
    Publish(Publication),
    /// Not staged: it goes upstream as it came.
    Forward(Request<Incoming>),
}

/// A staged push whose content the policy allowed: its manifest, read whole, and the blobs
/// sent ahead of it.
pub(crate) struct Publication {
    pub manifest: Request<ProxyBody>,
    pub blobs: Blobs,
    /// The content decision, when a `[[private]]` rule took one.
    pub verdict: Option<Verdict>,
}

/// The blobs of a published manifest.
pub(crate) struct Blobs {
    /// Every blob the manifest references, for provenance.
    all: Vec<String>,
    /// The ones this push staged (the destination had the others).
    staged: Vec<String>,
}

/// One push request as staging sees it.
pub(crate) struct Push<'a> {
    pub route: &'a Route,
    pub raw_name: &'a str,
    pub target: &'a Target,
    pub ask: &'a Ask<'a>,
    /// The destination.
    pub upstream: &'a Upstream,
}

/// The one owner of push staging: the stage the uploads are kept in and the provenance
/// store the content decision reads and the published push writes.
pub(crate) struct PushStager {
    stage: Arc<Stage>,
    provenance: Option<Arc<Provenance>>,
    metrics: Arc<Metrics>,
}

impl PushStager {
    pub fn new(
        stage: Arc<Stage>,
        provenance: Option<Arc<Provenance>>,
        metrics: Arc<Metrics>,
    ) -> PushStager {
        PushStager {
            stage,
            provenance,
            metrics,
        }
    }

    /// Serve a push request locally when the push is staged, or judge a staged push's
    /// manifest; anything else is [`Staged::Forward`]ed as it came.
    pub async fn stage(
        &self,
        push: &Push<'_>,
        gate: &Gate,
        req: Request<Incoming>,
    ) -> Result<Staged, ProxyError> {
        let (route, raw_name, target, ask) = (push.route, push.raw_name, push.target, push.ask);
        let stage = &self.stage;
        let staging = ask.policy.private_needs_content(&target.registry);
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_owned);
        let uploads = format!("/v2/{raw_name}/blobs/uploads");
        let done = |digest: &str| {
            let mut resp = upload_response(
                StatusCode::CREATED,
                format!("/v2/{raw_name}/blobs/{digest}"),
                None,
                None,
            );
            if let Ok(v) = HeaderValue::from_str(digest) {
                resp.headers_mut().insert("docker-content-digest", v);
            }
            resp
        };
        let resp = match route {
            Route::UploadStart { .. } if staging => {
                let id = stage
                    .start(&target.registry, owner(ask, target))
                    .map_err(|e| ProxyError::TooManyRequests(e.to_string()))?;
                let body = client_body(push.upstream, req.into_body());
                match query_param(query.as_deref(), "digest") {
                    // A monolithic upload in the POST itself.
                    Some(digest) => {
                        stage
                            .finish(&id, &digest, body)
                            .await
                            .map_err(stage_error)?;
                        done(&digest)
                    }
                    None => {
                        let size = stage.append(&id, body).await.map_err(stage_error)?;
                        upload_response(
                            StatusCode::ACCEPTED,
                            format!("{uploads}/{id}"),
                            Some(&id),
                            Some(size),
                        )
                    }
                }
            }
            Route::Upload { session, .. } if session.starts_with(SESSION_PREFIX) => {
                let location = format!("{uploads}/{session}");
                if method == Method::PATCH || method == Method::PUT {
                    // Out of order or retried: refused before a byte is appended, as for
                    // forwarded uploads.
                    let held = stage.status(session).ok_or_else(|| {
                        ProxyError::UploadUnknown(format!("upload {session} is unknown"))
                    })?;
                    crate::pipeline::check_chunk(req.headers(), held)?;
                }
                match method {
                    Method::PATCH => {
                        let size = stage
                            .append(session, client_body(push.upstream, req.into_body()))
                            .await
                            .map_err(stage_error)?;
                        upload_response(StatusCode::ACCEPTED, location, Some(session), Some(size))
                    }
                    Method::PUT => {
                        let digest = query_param(query.as_deref(), "digest").ok_or_else(|| {
                            ProxyError::DigestMismatch(
                                "the final PUT of an upload needs ?digest=".to_owned(),
                            )
                        })?;
                        stage
                            .finish(
                                session,
                                &digest,
                                client_body(push.upstream, req.into_body()),
                            )
                            .await
                            .map_err(stage_error)?;
                        done(&digest)
                    }
                    Method::DELETE => {
                        if !stage.cancel(session) {
                            return Err(ProxyError::UploadUnknown(format!(
                                "upload {session} is unknown"
                            )));
                        }
                        upload_response(StatusCode::NO_CONTENT, location, None, None)
                    }
                    _ => {
                        let size = stage.status(session).ok_or_else(|| {
                            ProxyError::UploadUnknown(format!("upload {session} is unknown"))
                        })?;
                        upload_response(StatusCode::NO_CONTENT, location, Some(session), Some(size))
                    }
                }
            }
            Route::Manifest { .. } if staging && method == Method::PUT => {
                return self.publish(push, gate, req).await.map(Staged::Publish);
            }
            _ => return Ok(Staged::Forward(req)),
        };
        self.count_staged();
        Ok(Staged::Answered(resp))
    }

    /// A blob HEAD/GET that a staged push is waiting on (docker checks every upload).
    pub async fn blob(
        &self,
        ask: &Ask<'_>,
        target: &Target,
        method: &Method,
    ) -> Option<Response<ProxyBody>> {
        let Route::Blob { digest, .. } = ask.route else {
            return None;
        };
        let stage = &self.stage;
        let blob = stage.owned(&target.registry, digest.as_str(), &owner(ask, target))?;
        let body = if *method == Method::HEAD {
            empty()
        } else {
            stage::read(&blob).await.ok()?
        };
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.size));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
            h.insert("docker-content-digest", v);
        }
        Some(resp)
    }

    /// The manifest of a staged push: decide on its content, then send its staged blobs
    /// upstream and hand the manifest back to go after them, or drop them all.
    async fn publish(
        &self,
        push: &Push<'_>,
        gate: &Gate,
        req: Request<Incoming>,
    ) -> Result<Publication, ProxyError> {
        let (target, ask, upstream) = (push.target, push.ask, push.upstream);
        let stage = &*self.stage;
        let (parts, body) = req.into_parts();
        let body = client_body(upstream, body);
        let bytes = crate::pipeline::collect_limited(body, MAX_MANIFEST).await?;
        let facts = ManifestFacts::parse(&bytes)?;
        let staged: Vec<String> = facts
            .blobs
            .iter()
            .filter(|d| {
                stage
                    .owned(&target.registry, d, &owner(ask, target))
                    .is_some()
            })
            .cloned()
            .collect();
        let labels = match &facts.config {
            Some(config) => labels(&self.read_blob(stage, upstream, ask, target, config).await?),
            None => HashMap::new(),
        };
        let policy = ask.policy;
        // Only staged blobs count: the destination already has every other blob.
        let seen = match self.seen(policy, &staged) {
            Ok(seen) => seen,
            Err(e) => {
                self.drop_staged(stage, target, &staged);
                return Err(e);
            }
        };
        let content = PushContent {
            registry: &target.registry,
            repository: target.repository.as_str(),
            labels: Some(&labels),
            annotations: Some(&facts.annotations),
            private_provenance: seen.private_only,
            sources: &seen.names,
        };
        let verdict = match policy.private_push(&content) {
            None => None,
            Some(decision) => match gate.enforce(decision, &ask.check(target)) {
                Ok(v) => Some(v),
                Err(denied) => {
                    self.drop_staged(stage, target, &staged);
                    return Err(denied);
                }
            },
        };
        for digest in &staged {
            self.send_staged(stage, upstream, target, digest).await?;
        }
        Ok(Publication {
            manifest: Request::from_parts(parts, full(bytes)),
            blobs: Blobs {
                all: facts.blobs,
                staged,
            },
            verdict,
        })
    }

    /// The destination took a published manifest (`accepted`): the staged blobs are done
    /// with, and its blobs are recorded as seen there. A refused manifest leaves its blobs
    /// staged, for the client's retry.
    pub fn published(
        &self,
        blobs: &Blobs,
        target: &Target,
        policy: &crate::policy::Policy,
        accepted: bool,
    ) {
        if accepted {
            for d in &blobs.staged {
                self.stage.remove(&target.registry, d);
            }
            if let Some(store) = &self.provenance {
                let seen = if policy.is_public(&target.registry) {
                    Seen::Public
                } else {
                    Seen::Private
                };
                let named = target.to_string();
                if let Err(e) = store.record_many_named(&blobs.all, seen, &named) {
                    warn!(error = %e, "cannot record blob provenance");
                }
            }
        }
        self.count_staged();
    }

    fn count_staged(&self) {
        self.metrics
            .staged_bytes
            .set(i64::try_from(self.stage.used_bytes()).unwrap_or(i64::MAX));
    }

    /// Where the staged blobs of a push were seen. A store that cannot answer leaves a
    /// `[[private]]` rule undecided, and an undecided rule refuses the push: it never lets
    /// it through unjudged.
    fn seen(
        &self,
        policy: &crate::policy::Policy,
        staged: &[String],
    ) -> Result<SeenContent, ProxyError> {
        let Some(store) = &self.provenance else {
            return Ok(SeenContent::default());
        };
        seen_content(&**store, policy.private_uses_provenance(), staged).map_err(|e| {
            self.metrics.policy_undecided.inc();
            warn!(error = %e, "provenance store failed; refusing the push it was asked about");
            ProxyError::Refused(format!(
                "push refused: the private-push rules cannot be evaluated ({e}); retry later or ask an administrator"
            ))
        })
    }

    fn drop_staged(&self, stage: &Stage, target: &Target, staged: &[String]) {
        for d in staged {
            stage.remove(&target.registry, d);
        }
        self.count_staged();
        info!(target = %target, blobs = staged.len(), "push refused; staged blobs dropped, nothing sent");
    }

    /// A config blob, from the stage or from the destination.
    async fn read_blob(
        &self,
        stage: &Stage,
        upstream: &Upstream,
        ask: &Ask<'_>,
        target: &Target,
        digest: &str,
    ) -> Result<Bytes, ProxyError> {
        if let Some(blob) = stage.owned(&target.registry, digest, &owner(ask, target)) {
            let body = stage::read(&blob).await.map_err(stage_error)?;
            return crate::pipeline::collect_limited(body, MAX_MANIFEST).await;
        }
        let resp = upstream
            .send(self.outgoing(
                upstream,
                Method::GET,
                format!("/v2/{}/blobs/{digest}", target.repository),
                empty(),
                "pull",
            ))
            .await?;
        if !resp.status().is_success() {
            return Err(ProxyError::BadRequest(format!(
                "config blob {digest} is neither uploaded nor at {}",
                target.registry
            )));
        }
        Ok(read_limited(resp.into_body(), MAX_MANIFEST, upstream.host()).await?)
    }

    fn outgoing(
        &self,
        upstream: &Upstream,
        method: Method,
        path_and_query: String,
        body: ProxyBody,
        actions: &str,
    ) -> Outgoing {
        let repo = path_and_query
            .trim_start_matches("/v2/")
            .split("/blobs/")
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Outgoing {
            replayable: method != Method::PUT,
            method,
            path_and_query,
            headers,
            body,
            scopes: vec![format!("repository:{repo}:{actions}")],
            identity: upstream.identity_for(None),
        }
    }

    /// Upload one staged blob to the destination (unless it already has it).
    async fn send_staged(
        &self,
        stage: &Stage,
        upstream: &Upstream,
        target: &Target,
        digest: &str,
    ) -> Result<(), ProxyError> {
        let Some(blob) = stage.blob(&target.registry, digest) else {
            return Ok(());
        };
        let repo = target.repository.as_str();
        let head = upstream
            .send(self.outgoing(
                upstream,
                Method::HEAD,
                format!("/v2/{repo}/blobs/{digest}"),
                empty(),
                "pull",
            ))
            .await?;
        if head.status().is_success() {
            return Ok(());
        }
        let started = upstream
            .send(self.outgoing(
                upstream,
                Method::POST,
                format!("/v2/{repo}/blobs/uploads/"),
                empty(),
                "pull,push",
            ))
            .await?;
        let location = started
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|_| started.status() == StatusCode::ACCEPTED)
            .ok_or_else(|| {
                ProxyError::Staging(format!(
                    "{} did not start an upload ({})",
                    target.registry,
                    started.status()
                ))
            })?;
        // The blob goes wherever this says: only to the destination's own repository.
        let path =
            crate::upstream::location::upstream_path(location, &upstream.config.endpoint, repo)
                .map_err(|location| crate::upstream::UpstreamError::ForeignLocation {
                    registry: target.registry.clone(),
                    header: "Location",
                    location,
                })?;
        let sep = if path.contains('?') { '&' } else { '?' };
        let body = stage::read(&blob).await.map_err(stage_error)?;
        let mut out = self.outgoing(
            upstream,
            Method::PUT,
            format!("{path}{sep}digest={digest}"),
            body,
            "pull,push",
        );
        out.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(blob.size));
        let put = upstream.send(out).await?;
        if put.status() != StatusCode::CREATED {
            return Err(ProxyError::Staging(format!(
                "{} refused blob {digest} ({})",
                target.registry,
                put.status()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn manifest_facts_name_config_layers_and_annotations() {
        let (c, a) = (digest('c'), digest('a'));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":1}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{a}","size":1}}],
            "annotations":{{"k":"v"}}}}"#
        );
        let facts = ManifestFacts::parse(m.as_bytes()).expect("manifest");
        assert_eq!(facts.config.as_deref(), Some(c.as_str()));
        assert_eq!(facts.blobs, [a, c]);
        assert_eq!(facts.annotations.get("k").map(String::as_str), Some("v"));
        assert!(ManifestFacts::parse(b"nope").is_err());
    }

    #[test]
    fn docker_schema2_manifests_and_manifest_lists_parse() {
        let (c, a, b) = (digest('c'), digest('a'), digest('b'));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,"digest":"{c}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2,"digest":"{a}"}},
                      {{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":3,"digest":"{b}"}}]}}"#
        );
        let facts = ManifestFacts::parse(m.as_bytes()).expect("docker manifest");
        assert_eq!(facts.config.as_deref(), Some(c.as_str()));
        assert_eq!(facts.blobs, [a, b, c.clone()]);
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":7,"digest":"{c}",
            "platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        assert_eq!(
            ManifestFacts::parse(list.as_bytes()).expect("manifest list"),
            ManifestFacts::default()
        );
    }

    #[test]
    fn an_index_keeps_its_annotations_and_has_no_blobs() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1}}],
            "annotations":{{"org.example.team":"core"}}}}"#,
            digest('e')
        );
        let facts = ManifestFacts::parse(index.as_bytes()).expect("index");
        assert!(facts.config.is_none() && facts.blobs.is_empty());
        assert_eq!(
            facts
                .annotations
                .get("org.example.team")
                .map(String::as_str),
            Some("core")
        );
    }

    #[test]
    fn a_malformed_image_manifest_is_refused_not_read_as_an_index() {
        // `manifests` alongside a config without a digest: reading it as an index would
        // check nothing.
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":1}},
            "layers":[],"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1}}]}}"#,
            digest('e')
        );
        assert!(ManifestFacts::parse(m.as_bytes()).is_err());
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:c","size":1},"layers":[]}"#;
        assert!(ManifestFacts::parse(bad_digest.as_bytes()).is_err());
    }

    struct Failing;

    impl Lookup for Failing {
        fn private_only(&self, _: &str) -> Result<bool, ProvenanceError> {
            Err(ProvenanceError::Backlog {
                path: "/state/provenance.redb".into(),
                buffered: 65536,
            })
        }

        fn names(&self, _: &str) -> Result<Vec<String>, ProvenanceError> {
            Err(ProvenanceError::Backlog {
                path: "/state/provenance.redb".into(),
                buffered: 65536,
            })
        }
    }

    #[test]
    fn a_failing_provenance_store_is_an_error_never_not_private() {
        let staged = ["sha256:a".to_owned()];
        assert!(seen_content(&Failing, true, &staged).is_err());
        // Names are looked up for every private rule, so even without provenance rules a
        // failing store leaves the push undecided.
        assert!(seen_content(&Failing, false, &staged).is_err());
        assert!(seen_content(&Failing, true, &[]).is_ok());
    }

    #[test]
    fn staged_blobs_carry_their_provenance_and_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Provenance::open(dir.path(), 100).expect("store");
        store
            .record_named("sha256:a", Seen::Private, "corp.example.com/team/app")
            .expect("record");
        store
            .record_named("sha256:b", Seen::Public, "docker.io/library/alpine")
            .expect("record");
        let staged = ["sha256:a".to_owned(), "sha256:b".to_owned()];
        let seen = seen_content(&store, true, &staged).expect("seen");
        assert!(seen.private_only);
        assert_eq!(
            seen.names,
            ["corp.example.com/team/app", "docker.io/library/alpine"]
        );
        let public = seen_content(&store, true, &staged[1..]).expect("seen");
        assert!(!public.private_only);
    }

    #[test]
    fn labels_come_from_the_image_config() {
        let config = br#"{"architecture":"amd64","config":{"Labels":{"com.example.classification":"internal"}}}"#;
        assert_eq!(
            labels(config)
                .get("com.example.classification")
                .map(String::as_str),
            Some("internal")
        );
        assert!(labels(b"{}").is_empty());
    }
}
