//! `docker search` across every search registry, with fully qualified names (what Project
//! Atomic's patched docker showed).
//!
//! Each search registry is asked in parallel with its own timeout: a registry with a v1
//! search API (docker.io's index) directly, a plain v2 registry through its catalog, which
//! is cached so that a search does not walk a large catalog every time. Results are ordered
//! by search-registry priority, then stars, then name. A registry that fails is skipped,
//! counted and named in a `Warning` header; only when all fail does the search fail.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::body::{full, ProxyBody};
use crate::config::SearchMode;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::policy::Operation;
use crate::reference::DOCKER_HUB;
use crate::upstream::{read_limited, Upstream, UpstreamError, Upstreams};

const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 100;
const CATALOG_PAGE: usize = 1000;
/// A catalog larger than this is cut (and logged): search is a convenience, not a dump.
const MAX_CATALOG: usize = 200_000;
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchResult {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub star_count: u64,
    #[serde(default)]
    pub is_official: bool,
    #[serde(default)]
    pub is_automated: bool,
    #[serde(default, skip_deserializing)]
    pub index_name: String,
    #[serde(default, skip_deserializing)]
    pub registry_name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SearchResponse {
    num_results: usize,
    num_pages: usize,
    page: usize,
    page_size: usize,
    query: String,
    results: Vec<SearchResult>,
}

#[derive(Deserialize)]
struct V1Response {
    #[serde(default)]
    results: Vec<SearchResult>,
}

pub struct Search {
    catalogs: moka::future::Cache<String, Arc<Vec<String>>>,
    timeout: Duration,
}

/// The search query as docker sends it.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub term: String,
    pub limit: usize,
    pub page: usize,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Query, ProxyError> {
        let mut q = Query {
            term: String::new(),
            limit: DEFAULT_LIMIT,
            page: 1,
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let number = || {
                v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    ProxyError::BadRequest(format!("{k}={v:?} is not a positive number"))
                })
            };
            match k.as_ref() {
                "q" => q.term = v.trim().to_ascii_lowercase(),
                "n" => q.limit = number()?.min(MAX_LIMIT),
                "page" => q.page = number()?,
                _ => {}
            }
        }
        if q.term.is_empty() {
            return Err(ProxyError::BadRequest(
                "search needs a term (q=...)".to_owned(),
            ));
        }
        Ok(q)
    }

    /// Does a repository path match? A term with a namespace matches the path, a plain term
    /// any component, both as substrings (the index's behaviour for names).
    fn matches(&self, repository: &str) -> bool {
        repository.contains(&self.term)
    }
}

/// Who asked, and which registry they addressed: decides which registries answer a search
/// and how the names are written, so that every client prints names that can be pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked<'a> {
    /// The registry a forward-proxy tunnel (or a mirror `ns`) is for.
    pub addressed: Option<&'a str>,
    /// containers/image (podman) prints `<the registry it asked>/<name>`; dockerd prints
    /// the name as given. Known by its User-Agent, `containers/<version> (...)`.
    pub prefixes_names: bool,
}

impl<'a> Asked<'a> {
    pub fn of<B>(req: &Request<B>, addressed: Option<&'a str>) -> Asked<'a> {
        let prefixes_names = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| {
                ua.starts_with("containers/") || ua.contains("github.com/containers/image")
            });
        Asked {
            addressed,
            prefixes_names,
        }
    }

    /// The registries to ask, from the search list, and the query without a registry
    /// prefix. A search addressed to one registry is answered by that registry alone,
    /// except `docker search` through docker.io (what dockerd asks for any unqualified
    /// term): that one searches every search registry, as Atomic's docker did. podman
    /// searches each of its own registries in turn, so it gets docker.io's results only.
    /// On the registry endpoint, a term that starts with a configured registry
    /// (`podman search <endpoint>/quay.io/etcd`) is a search of that registry.
    fn registries(
        &self,
        search_list: &[String],
        configured: &dyn Fn(&str) -> bool,
        query: &mut Query,
    ) -> Vec<String> {
        match self.addressed {
            Some(DOCKER_HUB) if !self.prefixes_names => search_list.to_vec(),
            Some(registry) => vec![registry.to_owned()],
            None => {
                let prefix = query
                    .term
                    .split_once('/')
                    .filter(|(first, rest)| !rest.is_empty() && configured(first));
                match prefix {
                    Some((registry, rest)) => {
                        let registry = registry.to_owned();
                        query.term = rest.to_owned();
                        vec![registry]
                    }
                    None => search_list.to_vec(),
                }
            }
        }
    }

    /// A fully qualified result name as this client must be answered: relative to the
    /// registry it addressed when it prefixes names itself.
    fn written(&self, qualified: String) -> String {
        match (self.prefixes_names, self.addressed) {
            (true, Some(registry)) => qualified
                .strip_prefix(registry)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(str::to_owned)
                .unwrap_or(qualified),
            _ => qualified,
        }
    }
}

impl Search {
    pub fn new(catalog_ttl: Duration, timeout: Duration) -> Search {
        Search {
            catalogs: moka::future::Cache::builder()
                .max_capacity(64)
                .time_to_live(catalog_ttl)
                .build(),
            timeout,
        }
    }

    pub async fn serve(
        &self,
        search_list: &[String],
        asked: Asked<'_>,
        upstreams: &Upstreams,
        metrics: &Metrics,
        req: &Request<Incoming>,
        visible: &(dyn Fn(Operation, &str, &str) -> bool + Sync),
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut query = Query::parse(req.uri().query())?;
        let configured = |r: &str| upstreams.get(r).is_some();
        let registries = asked.registries(search_list, &configured, &mut query);
        // A registry the policy closes to search is not asked; it is not a failure either.
        let registries: Vec<String> = registries
            .iter()
            .filter(|r| visible(Operation::Search, r, ""))
            .cloned()
            .collect();
        let authorization = req.headers().get(header::AUTHORIZATION);
        let searches = registries
            .iter()
            .filter_map(|r| upstreams.get(r))
            .map(|upstream| async {
                let found =
                    tokio::time::timeout(self.timeout, self.one(upstream, &query, authorization))
                        .await;
                let found = found.unwrap_or_else(|_| {
                    Err(UpstreamError::Timeout {
                        registry: upstream.host().to_owned(),
                        after: self.timeout,
                    })
                });
                (upstream.host().to_owned(), found)
            });
        let mut results = Vec::new();
        let mut failures = Vec::new();
        for (registry, found) in join_all(searches).await {
            match found {
                Ok(mut found) => {
                    // What a pull would be denied is not shown.
                    found.retain(|r| {
                        r.name
                            .split_once('/')
                            .is_some_and(|(reg, repo)| visible(Operation::Pull, reg, repo))
                    });
                    // Priority first (the order of `registries`), then stars, then name.
                    found.sort_by(|a, b| {
                        b.star_count
                            .cmp(&a.star_count)
                            .then_with(|| a.name.cmp(&b.name))
                    });
                    results.extend(found);
                }
                Err(e) => {
                    warn!(registry, error = %e, "search registry failed; answering without it");
                    metrics
                        .search_failures
                        .with_label_values(&[metrics.registry_label(Some(&registry))])
                        .inc();
                    failures.push(e.to_string());
                }
            }
        }
        if !failures.is_empty() && failures.len() == registries.len() {
            return Err(ProxyError::SearchFailed(failures.join("; ")));
        }
        for r in &mut results {
            r.name = asked.written(std::mem::take(&mut r.name));
        }
        let total = results.len();
        let start = (query.page - 1).saturating_mul(query.limit);
        let page: Vec<SearchResult> = results.into_iter().skip(start).take(query.limit).collect();
        let body = SearchResponse {
            num_results: total,
            num_pages: total.div_ceil(query.limit),
            page: query.page,
            page_size: query.limit,
            query: query.term.clone(),
            results: page,
        };
        let body = serde_json::to_vec(&body).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        let mut resp = Response::new(full(Bytes::from(body)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for failure in failures {
            let text = format!(
                "299 portcullis \"search skipped {}\"",
                failure.replace(['"', '\\'], "'")
            );
            if let Ok(v) = HeaderValue::from_str(&text) {
                resp.headers_mut().append(header::WARNING, v);
            }
        }
        Ok(resp)
    }

    async fn one(
        &self,
        upstream: &Upstream,
        query: &Query,
        authorization: Option<&HeaderValue>,
    ) -> Result<Vec<SearchResult>, UpstreamError> {
        let registry = upstream.host();
        let mut results = match &upstream.config.search {
            SearchMode::Off => return Ok(Vec::new()),
            SearchMode::V1(endpoint) => self.v1(upstream, endpoint, query).await?,
            SearchMode::Catalog => {
                let catalog = self.catalog(upstream, authorization).await?;
                catalog
                    .iter()
                    .filter(|r| query.matches(r))
                    .map(|r| SearchResult::named(r.clone()))
                    .collect()
            }
        };
        for r in &mut results {
            // docker.io's index answers "fedora" for library images: qualify every name.
            let repo = if registry == DOCKER_HUB && !r.name.contains('/') {
                format!("library/{}", r.name)
            } else {
                r.name.clone()
            };
            r.name = format!("{registry}/{repo}");
            r.index_name = registry.to_owned();
            r.registry_name = registry.to_owned();
        }
        Ok(results)
    }

    async fn v1(
        &self,
        upstream: &Upstream,
        endpoint: &url::Url,
        query: &Query,
    ) -> Result<Vec<SearchResult>, UpstreamError> {
        let mut url = endpoint
            .join("/v1/search")
            .map_err(|e| upstream.protocol_error(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("q", &query.term)
            .append_pair("n", &MAX_LIMIT.to_string());
        let resp = upstream.get_configured_url(url.as_str()).await?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status {
                registry: upstream.host().to_owned(),
                status: resp.status(),
            });
        }
        let body = read_limited(resp.into_body(), MAX_RESPONSE, upstream.host()).await?;
        let parsed: V1Response = serde_json::from_slice(&body)
            .map_err(|e| upstream.protocol_error(format!("search response: {e}")))?;
        Ok(parsed.results)
    }

    /// The whole catalog of a registry, cached with a TTL; concurrent searches share one walk.
    async fn catalog(
        &self,
        upstream: &Upstream,
        authorization: Option<&HeaderValue>,
    ) -> Result<Arc<Vec<String>>, UpstreamError> {
        // Keyed by identity too: what one client may list is not shown to another.
        let key = format!(
            "{} {}",
            upstream.host(),
            upstream.identity_for(authorization).cache_key()
        );
        self.catalogs
            .try_get_with(key, async {
                let mut all = Vec::new();
                let mut last: Option<String> = None;
                loop {
                    let Some(page) = crate::listing::catalog::fetch_page(
                        upstream,
                        CATALOG_PAGE,
                        last.as_deref(),
                        authorization,
                    )
                    .await?
                    else {
                        return Ok(Arc::new(Vec::new()));
                    };
                    let more = page.more;
                    let got = page.repositories.len();
                    last = page.repositories.last().cloned();
                    all.extend(page.repositories);
                    if !more || got == 0 {
                        break;
                    }
                    if all.len() >= MAX_CATALOG {
                        warn!(
                            registry = upstream.host(),
                            max = MAX_CATALOG,
                            "catalog too large for search; cut"
                        );
                        break;
                    }
                }
                Ok(Arc::new(all))
            })
            .await
            .map_err(|e: Arc<UpstreamError>| (*e).clone())
    }
}

impl SearchResult {
    fn named(name: String) -> SearchResult {
        SearchResult {
            name,
            description: String::new(),
            star_count: 0,
            is_official: false,
            is_automated: false,
            index_name: String::new(),
            registry_name: String::new(),
        }
    }
}

/// `GET /v1/_ping`: dockerd asks before searching and accepts any answer.
pub fn ping() -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from_static(b"true")));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_parsed_and_bounded() {
        let q = Query::parse(Some("q=Fedora&n=1000")).expect("query");
        assert_eq!(
            q,
            Query {
                term: "fedora".into(),
                limit: MAX_LIMIT,
                page: 1
            }
        );
        assert_eq!(
            Query::parse(Some("q=a")).expect("query").limit,
            DEFAULT_LIMIT
        );
        assert!(Query::parse(Some("n=5")).is_err(), "a term is required");
        assert!(Query::parse(Some("q=a&n=0")).is_err());
        assert!(Query::parse(Some("q=a&page=x")).is_err());
    }

    fn asked(ua: &str, addressed: Option<&'static str>) -> Asked<'static> {
        let req = Request::builder()
            .header(header::USER_AGENT, ua)
            .body(())
            .expect("request");
        Asked::of(&req, addressed)
    }

    const DOCKERD: &str = "docker/20.10.24+dfsg1 go/go1.19.8 os/linux arch/amd64";
    const PODMAN: &str = "containers/5.23.1 (github.com/containers/image)";

    fn asks(asked: Asked<'_>, term: &str) -> (Vec<String>, String) {
        let list = vec!["registry.example.com".to_owned(), DOCKER_HUB.to_owned()];
        let configured = |r: &str| ["registry.example.com", "quay.io", DOCKER_HUB].contains(&r);
        let mut q = Query::parse(Some(&format!("q={term}"))).expect("query");
        let registries = asked.registries(&list, &configured, &mut q);
        (registries, q.term)
    }

    #[test]
    fn a_search_addressed_to_one_registry_asks_that_registry_alone() {
        let all = vec!["registry.example.com".to_owned(), DOCKER_HUB.to_owned()];
        // dockerd's `docker search fedora` goes to docker.io: every search registry.
        assert_eq!(asks(asked(DOCKERD, Some(DOCKER_HUB)), "fedora").0, all);
        // podman asks each of its registries itself.
        assert_eq!(
            asks(asked(PODMAN, Some(DOCKER_HUB)), "fedora").0,
            [DOCKER_HUB]
        );
        for ua in [DOCKERD, PODMAN] {
            assert_eq!(
                asks(asked(ua, Some("registry.example.com")), "app").0,
                ["registry.example.com"]
            );
            // The registry endpoint: a configured registry prefix addresses it.
            assert_eq!(
                asks(asked(ua, None), "quay.io/etcd"),
                (vec!["quay.io".to_owned()], "etcd".to_owned())
            );
            assert_eq!(
                asks(asked(ua, None), "team/app"),
                (all.clone(), "team/app".to_owned())
            );
        }
    }

    #[test]
    fn names_are_written_so_that_each_client_prints_a_pullable_name() {
        let name = || "registry.example.com/team/app".to_owned();
        // podman prefixes the registry it asked.
        assert_eq!(
            asked(PODMAN, Some("registry.example.com")).written(name()),
            "team/app"
        );
        assert_eq!(
            asked(PODMAN, Some(DOCKER_HUB)).written("docker.io/library/alpine".to_owned()),
            "library/alpine"
        );
        // On the endpoint it prefixes the endpoint, which takes fully qualified names.
        assert_eq!(asked(PODMAN, None).written(name()), name());
        // dockerd prints what it is given.
        assert_eq!(asked(DOCKERD, Some(DOCKER_HUB)).written(name()), name());
        assert_eq!(asked("curl/7.88.1", None).written(name()), name());
    }

    #[test]
    fn terms_match_names_and_namespaces() {
        let q = Query::parse(Some("q=ns/sub")).expect("query");
        assert!(q.matches("ns/sub/foo"));
        assert!(!q.matches("other/foo"));
        let q = Query::parse(Some("q=fedora")).expect("query");
        assert!(q.matches("library/fedora") && q.matches("team/fedora-minimal"));
    }

    #[test]
    fn empty_results_still_serialise_what_docker_decodes() {
        let body = SearchResponse {
            num_results: 0,
            num_pages: 0,
            page: 1,
            page_size: 25,
            query: "x".into(),
            results: vec![],
        };
        let json = serde_json::to_value(&body).expect("json");
        for key in [
            "num_results",
            "num_pages",
            "page",
            "page_size",
            "query",
            "results",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
