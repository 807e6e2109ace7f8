//! The request pipeline of the registry endpoint: route, resolve, forward, respond.
//!
//! Reads top to bottom: [`Proxy::handle`] parses the route, [`Proxy::repository`] resolves the
//! name to a [`Plan`], [`Proxy::forward`] sends it upstream through [`crate::upstream`], and
//! [`respond`](respond::respond) turns the upstream answer into the client's response (header
//! rewriting, streaming, digest verification). Errors become responses only in [`crate::error`].
//!
//! This file is the pipeline itself; the steps it calls each have a file of their own:
//! - `request.rs`: what a request asks for (policy operation, tag, digest, user), read off
//!   the route and headers;
//! - `send.rs`: one request to one registry (upstream path, token scope, headers, body);
//! - `respond.rs`: the upstream's answer, or the manifest cache's, as the client's response;
//! - `listing.rs`: `/v2/_catalog`, showing only what the policy lets a client see;
//! - `record.rs`: where blobs were seen, for private-push protection;
//! - `access.rs`: the access line, written when the response body has ended.
//!
//! Pushes whose policy needs their content are staged in [`crate::pipeline::push`].

mod access;
mod cached;
mod intent;
mod listing;
mod mount;
mod namespace;
mod outcome;
pub mod plan;
pub mod push;
mod record;
pub mod referrers;
mod respond;
mod send;
mod served;
pub(crate) mod signed;
mod sources;
#[cfg(test)]
mod tests;
mod uploads;
pub mod verdict;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tracing::warn;

use crate::body::{full, ProxyBody};
use crate::config::Config;
use crate::error::ProxyError;
use crate::listing::search::Search;
use crate::metrics::Metrics;
use crate::pipeline::plan::{Plan, Resolver, Target};
use crate::pipeline::verdict::{Check, Gate};
use crate::policy::live::LivePolicy;
use crate::policy::{Operation, Policy};
use crate::reference::{Name, Repository, DOCKER_HUB};
use crate::route::{self, Route};
use crate::store::audit::Audit;
use crate::store::blobs::BlobCache;
use crate::store::manifests::ManifestCache;
use crate::store::provenance::Provenance;
use crate::store::stage::Stage;
use crate::upstream::{Upstream, UpstreamError, Upstreams};

use intent::{
    basic_user, check_method, content_addressed, operation, policy_operation, route_digest,
    route_tag, Intent,
};
use outcome::{Decided, Outcome, Trail, Unrecorded};
use push::PushStager;
use sources::InOrder;
// Re-exported so the rest of the crate keeps naming them `crate::pipeline::...`.
pub(crate) use respond::with_warning;
pub(crate) use send::collect_limited;
pub use send::IntoProxyBody;
pub(crate) use uploads::check_chunk;

pub use crate::error::CLIENT_CHALLENGE;
/// Names the fully qualified image every repository response was served from.
pub const RESOLVED_HEADER: HeaderName = HeaderName::from_static("portcullis-resolved-name");
/// The distribution spec suggests registries accept manifests of at least 4 MiB.
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Both the `/v2/` answer and cached manifests announce the API version.
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// Where a request came in: the listener (a metric label) and, for intercepted and mirror
/// traffic, the registry the client believes it is talking to. Names in such requests are
/// relative to that registry (`/v2/library/alpine/...` on `registry-1.docker.io`).
#[derive(Clone, Debug)]
pub struct Inbound {
    pub listener: &'static str,
    pub registry: Option<Arc<str>>,
}

impl Inbound {
    pub fn endpoint() -> Inbound {
        Inbound {
            listener: "registry",
            registry: None,
        }
    }
}

/// What the gate needs to know about a request, whichever registry it goes to.
pub(crate) struct Ask<'a> {
    /// The policy this request took when it started; every decision of it uses this one.
    pub policy: &'a Policy,
    /// What the stages learn of this request, for its outcome.
    pub trail: &'a Trail,
    pub op: Operation,
    pub route: &'a Route,
    /// As the client sent it (a `HEAD` decided on what is served goes upstream as `GET`).
    pub method: &'a Method,
    pub peer: SocketAddr,
}

impl<'a> Ask<'a> {
    pub fn check(&'a self, target: &'a Target) -> Check<'a> {
        Check {
            policy: self.policy,
            trail: self.trail,
            op: self.op,
            target,
            tag: route_tag(self.route),
            digest: route_digest(self.route),
            peer: self.peer,
        }
    }
}

/// The listener name of the mirror endpoint, where containerd's `ns` names the registry.
pub const MIRROR: &str = "mirror";

/// Where a request's names are relative to: containerd's `ns` if it sent one, and the
/// registry that makes the names relative (intercepted host, mirror `ns`).
struct Scoped<'a> {
    ns: Option<&'a str>,
    scope: Option<&'a str>,
}

/// The stores a proxy writes to: the audit trail, and for private-push protection the
/// provenance store and the push stage (`None` in tests that do not need them).
pub struct Stores {
    pub audit: Arc<Audit>,
    pub provenance: Option<Arc<Provenance>>,
    pub stage: Option<Arc<Stage>>,
    pub blobs: Option<Arc<BlobCache>>,
}

impl Stores {
    /// No audit file, no provenance, no staging.
    pub fn none() -> Stores {
        Stores {
            audit: Arc::new(Audit::disabled()),
            provenance: None,
            stage: None,
            blobs: None,
        }
    }
}

pub struct Proxy {
    /// Treat docker.io single-component names (`library/<x>`) as short names that resolve
    /// across the search registries (Atomic's --add-registry for stock docker).
    hub_search: bool,
    resolver: Resolver,
    upstreams: Upstreams,
    manifests: ManifestCache,
    search: Search,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) live: Arc<LivePolicy>,
    pub(crate) gate: Gate,
    audit: Arc<Audit>,
    pub(crate) provenance: Option<Arc<Provenance>>,
    /// Push staging, when private-push protection has a stage to keep uploads in.
    stager: Option<PushStager>,
    referrer_locks: referrers::Locks,
    uploads: uploads::Uploads,
    /// The signature policy's signature reads and decisions.
    signed: signed::Signed,
    /// Verified blobs on disk, when `cache.blobs_max_bytes` allows.
    blobs: Option<Arc<BlobCache>>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        live: Arc<LivePolicy>,
        stores: Stores,
    ) -> Result<Proxy, UpstreamError> {
        let stager = stores
            .stage
            .map(|stage| PushStager::new(stage, stores.provenance.clone(), metrics.clone()));
        Ok(Proxy {
            hub_search: config.forward.docker_hub_search,
            resolver: Resolver::new(&config.resolve, config.registries.keys().cloned()),
            upstreams: Upstreams::new(config, metrics.clone())?,
            metrics,
            manifests: ManifestCache::new(config.cache.manifest_bytes),
            search: Search::new(config.resolve.catalog_ttl, config.resolve.search_timeout),
            live,
            gate: Gate::new(config.policy.confirm_window),
            audit: stores.audit,
            provenance: stores.provenance,
            stager,
            referrer_locks: referrers::Locks::new(),
            uploads: uploads::Uploads::new(),
            signed: signed::Signed::new(signed::STORE_TIMEOUT).map_err(|e| UpstreamError::Tls {
                registry: "signature stores".to_owned(),
                message: e.to_string(),
            })?,
            blobs: stores.blobs,
        })
    }

    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        inbound: Inbound,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>> {
        // The closing `request` line (info) is the access log and carries everything about
        // the request; the span (debug) adds the same context to what is logged inside it
        // when debugging. An info span formatted every field a second time: logging was a
        // fifth of the instructions per request in callgrind.
        let span = tracing::debug_span!(
            "request",
            %peer,
            method = %req.method(),
            path = req.uri().path(),
        );
        Box::pin(tracing::Instrument::instrument(
            self.handle_inner(req, peer, inbound),
            span,
        ))
    }

    /// The stages, top to bottom: the intent (what was asked), the policy the request is
    /// decided by, dispatch through plan and verdict to the upstream, and the outcome,
    /// recorded once.
    async fn handle_inner(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        inbound: Inbound,
    ) -> Response<ProxyBody> {
        let in_flight = self
            .metrics
            .in_flight
            .with_label_values(&[inbound.listener]);
        in_flight.inc();
        let route = route::parse(req.uri().path());
        let intent = Intent {
            peer,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            version: req.version(),
            listener: inbound.listener,
            operation: operation(route.as_ref().ok(), req.method()),
            user: basic_user(req.headers()),
            started: Instant::now(),
        };
        let trail = Trail::default();
        let unrecorded = Unrecorded::new(&intent, &trail, &self.metrics, &self.audit);
        let result = match route {
            Ok(route) => {
                // The one policy this request is decided by, whatever reloads meanwhile.
                let policy = self.live.current();
                self.dispatch(route, req, &inbound, &intent, &policy, &trail)
                    .await
            }
            Err(e) => Err(ProxyError::from_route(e, &intent.method)),
        };
        unrecorded.disarm();
        let decided = Decided::of(&result, &trail);
        let resp = result.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                let (method, path) = (&intent.method, &intent.path);
                warn!(%peer, %method, %path, error = %e, "request failed");
            }
            e.into_response()
        });
        // A HEAD answer has no body, whoever wrote it (an error, `/v2/`); over HTTP/2
        // sending one is a protocol error and the client sees a reset instead of the
        // status. The headers (Content-Length included) stay, as for a GET.
        let resp = if intent.method == Method::HEAD {
            resp.map(|_| crate::body::empty())
        } else {
            resp
        };
        let outcome = Outcome::new(intent, resp, decided, trail);
        let resp = outcome.record(&self.metrics, &self.audit).await;
        in_flight.dec();
        resp
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        inbound: &Inbound,
        intent: &Intent,
        policy: &Policy,
        trail: &Trail,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // containerd's `ns` is read here, once, and never goes upstream.
        let (ns, req) = namespace::take_ns(req)?;
        let scope = self.scope(inbound, ns.as_deref()).inspect_err(|_| {
            if let Some(named) = ns.as_deref().or(inbound.registry.as_deref()) {
                trail.named(named);
            }
        })?;
        if let Some(registry) = scope {
            trail.named(registry);
        }
        match route {
            Route::Base => Ok(self.base(&req)),
            Route::Catalog if ns.is_some() && scope.is_none() => Err(ProxyError::BadRequest(
                "ns= names a registry only on the mirror endpoint".to_owned(),
            )),
            Route::Catalog => Box::pin(self.catalog(&req, scope, policy)).await,
            Route::V1Ping => Ok(crate::listing::search::ping()),
            Route::V1Search => {
                let registries = self.resolver.search_registries(policy);
                let visible = |op: Operation, registry: &str, repository: &str| {
                    policy.permits_name(op, registry, repository)
                };
                let asked = crate::listing::search::Asked::of(&req, scope);
                let search = self.search.serve(
                    &registries,
                    asked,
                    &self.upstreams,
                    &self.metrics,
                    &req,
                    &visible,
                );
                Box::pin(search).await
            }
            _ => {
                let scoped = Scoped {
                    ns: ns.as_deref(),
                    scope,
                };
                self.repository(route, req, &scoped, intent, policy, trail)
                    .await
            }
        }
    }

    /// `GET /v2/`: challenge for credentials when an upstream wants the client's own.
    fn base(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let wants_credentials = self
            .resolver_registries()
            .any(|u| u.wants_client_credentials());
        if wants_credentials && !req.headers().contains_key(header::AUTHORIZATION) {
            return ProxyError::Unauthorized.into_response();
        }
        let mut resp = Response::new(full(Bytes::from_static(b"{}")));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        resp
    }

    /// A name relative to the registry an intercepted client talks to. With `hub_search`,
    /// docker.io's `library/<x>` (what docker sends for `docker pull x`) becomes the short
    /// name `x`: nothing distinguishes it from an explicit `docker.io/library/x`, which is
    /// why this is an option.
    fn scoped_name(&self, registry: &str, raw: &str) -> Result<Name, ProxyError> {
        let repository = Repository::parse(raw)?;
        if self.hub_search && registry == DOCKER_HUB {
            if let Some(short) = raw.strip_prefix("library/").filter(|r| !r.contains('/')) {
                return Ok(Name::Short(Repository::parse(short)?));
            }
        }
        Ok(Name::Qualified {
            registry: registry.to_owned(),
            repository,
        })
    }

    fn resolver_registries(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.all()
    }

    /// A request about one repository: its name, the plan resolution makes of it, and the
    /// plan carried out (one registry, a search, or mirrors).
    async fn repository(
        &self,
        route: Route,
        mut req: Request<Incoming>,
        scoped: &Scoped<'_>,
        intent: &Intent,
        policy: &Policy,
        trail: &Trail,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let raw_name = route.name().unwrap_or_default().to_owned();
        let name = self.name(&raw_name, scoped, trail)?;
        check_method(&route, req.method())?;
        let method = req.method().clone();
        let plan = self.plan(&route, &method, &name, policy)?;
        let ask = Ask {
            policy,
            trail,
            op: policy_operation(&route, &method),
            route: &route,
            method: &method,
            peer: intent.peer,
        };
        if matches!(route, Route::Referrers { .. }) {
            return Box::pin(self.referrers(&ask, &raw_name, plan, req)).await;
        }
        // Decided on the digest of what is served: the upstream is asked for the body even
        // when the client only asked for the headers.
        let served = served::needs_served_digest(&route, &method, policy);
        let head = served && method == Method::HEAD;
        if head {
            *req.method_mut() = Method::GET;
        }
        let order = InOrder {
            ask: &ask,
            raw_name: &raw_name,
            name: &name,
            served,
            head,
        };
        match plan {
            Plan::One(target) => Box::pin(self.one(&order, &target, scoped.scope, req)).await,
            Plan::Search(targets) => Box::pin(self.search(&order, &targets, req)).await,
            Plan::Mirrors(targets) => Box::pin(self.mirrors(&order, &targets, req)).await,
        }
    }

    /// The name a request is about, relative to its scope; an `ns` must agree with it.
    fn name(&self, raw_name: &str, scoped: &Scoped<'_>, trail: &Trail) -> Result<Name, ProxyError> {
        let (ns, scope) = (scoped.ns, scoped.scope);
        let name = match scope {
            None => Name::parse(raw_name)?,
            Some(registry) => self.scoped_name(registry, raw_name)?,
        };
        if let Name::Qualified { registry, .. } = &name {
            trail.named(registry);
        }
        if let (Some(ns), None) = (ns, scope) {
            // The path names the registry here.
            match &name {
                Name::Qualified { registry, .. } if registry.as_str() == ns => {}
                _ => {
                    return Err(ProxyError::BadRequest(format!(
                        "ns={ns} does not name the registry of {raw_name}"
                    )))
                }
            }
        }
        Ok(name)
    }

    /// Which registries a request goes to: writes to the push registry, content-addressed
    /// reads of a short name where its manifest came from, other reads by resolution.
    fn plan(
        &self,
        route: &Route,
        method: &Method,
        name: &Name,
        policy: &Policy,
    ) -> Result<Plan, ProxyError> {
        if !reads(route, method) {
            return Ok(Plan::One(self.resolver.for_push(name)?));
        }
        if content_addressed(route) {
            let blob_head = *method == Method::HEAD && matches!(route, Route::Blob { .. });
            return self
                .resolver
                .for_blob(name, policy)
                .map_err(|e| refused_head(e, blob_head, || true));
        }
        self.resolver
            .for_pull(name, policy, route_digest(route).is_some())
    }

    /// A request to the one registry of its plan: decided, then written (push, delete) or
    /// read (from staging, the manifest cache, or the registry).
    async fn one(
        &self,
        order: &InOrder<'_>,
        target: &Target,
        scope: Option<&str>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (ask, route, raw_name) = (order.ask, order.ask.route, order.raw_name);
        let method = req.method().clone();
        let blob_head = method == Method::HEAD && matches!(route, Route::Blob { .. });
        let verdict = self.gate.check(&ask.check(target)).map_err(|e| {
            refused_head(e, blob_head, || self.gate.refuses_push(ask.policy, target))
        })?;
        self.admit_blob(ask, target)?;
        // From here every answer, good or failed, is about this registry.
        ask.trail.served(target);
        if ask.op == Operation::Push {
            let push = self.push(ask, raw_name, target, scope, req);
            return Ok(with_warning(Box::pin(push).await?, verdict));
        }
        if ask.op == Operation::Delete && matches!(route, Route::Manifest { .. }) {
            let delete = self.delete_with_referrers(route, raw_name, target, req);
            return Ok(with_warning(Box::pin(delete).await?, verdict));
        }
        if let Some(stager) = &self.stager {
            if let Some(resp) = stager.blob(ask, target, &method).await {
                return Ok(resp);
            }
        }
        if let Some((cache, hex)) = self.blob_cache_for(route, &method) {
            let cached = self.cached_blob(cache, hex, route, raw_name, target, req);
            let resp = Box::pin(cached).await?;
            if resp.status().is_success() {
                self.resolver.remember(order.name, &target.registry);
                self.record_provenance(ask.policy, route, target);
            }
            return Ok(with_warning(resp, verdict));
        }
        // A manifest judged on what is served (digest rules, signatures) is not answered
        // from the cache: the cache holds what was served, not what was decided.
        if !order.served {
            if let Some(resp) = self.cached_manifest(route, target, &method).await {
                return Ok(with_warning(resp, verdict));
            }
        }
        let authorization = order
            .served
            .then(|| req.headers().get(header::AUTHORIZATION).cloned())
            .flatten();
        // Boxed, like every large future here: an async fn's future holds the futures it
        // awaits, and each level of nesting copies them again. Inline, the request future
        // was 50 KB and moving it was a tenth of the per-request instructions; boxed at this
        // level it is under 4 KB.
        let resp = Box::pin(self.forward(route, raw_name, target, req)).await?;
        let (resp, verdict) = if order.served {
            let judged =
                self.judge_served(ask, target, ask.policy, resp, order.head, authorization);
            let (resp, by_digest) = Box::pin(judged).await?;
            (resp, by_digest.unwrap_or(verdict))
        } else {
            (resp, verdict)
        };
        if reads(route, &method) && resp.status().is_success() {
            self.resolver.remember(order.name, &target.registry);
            self.record_provenance(ask.policy, route, target);
        }
        Ok(with_warning(resp, verdict))
    }

    /// The registry a request's names are relative to: the intercepted host, or on the
    /// mirror endpoint the registry containerd names with `ns` (docker.io without it).
    fn scope<'a>(
        &self,
        inbound: &'a Inbound,
        ns: Option<&'a str>,
    ) -> Result<Option<&'a str>, ProxyError> {
        match (inbound.listener, ns, inbound.registry.as_deref()) {
            (MIRROR, Some(ns), _) => match self.upstreams.get(ns) {
                Some(_) => Ok(Some(ns)),
                None => Err(ProxyError::RegistryNotAllowed(ns.to_owned())),
            },
            (_, Some(ns), Some(registry)) if ns != registry => Err(ProxyError::BadRequest(
                format!("ns={ns} does not name the registry this connection is for ({registry})"),
            )),
            (_, _, registry) => Ok(registry),
        }
    }
}

/// Reads of a repository (manifests, blobs, tags, referrers); upload requests are writes,
/// whatever their method.
fn reads(route: &Route, method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && !matches!(route, Route::Upload { .. } | Route::UploadStart { .. })
}

/// A refused blob `HEAD` becomes "unknown" when a push there is refused too (`push_refused`),
/// so that a client starting a push goes on to the upload and is told why.
fn refused_head(e: ProxyError, blob_head: bool, push_refused: impl FnOnce() -> bool) -> ProxyError {
    if blob_head && e.is_denial() && push_refused() {
        ProxyError::RefusedHead(e.to_string())
    } else {
        e
    }
}
