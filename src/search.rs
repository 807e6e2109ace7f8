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
        registries: &[String],
        upstreams: &Upstreams,
        metrics: &Metrics,
        req: &Request<Incoming>,
        visible: &(dyn Fn(Operation, &str, &str) -> bool + Sync),
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let query = Query::parse(req.uri().query())?;
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
                    let Some(page) = crate::catalog::fetch_page(
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
