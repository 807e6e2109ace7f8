//! `/v2/_catalog` of portcullis: the catalogs of the search registries, concatenated in
//! search order with every name fully qualified, so a name from the catalog pulls from the
//! registry that listed it. Pagination (`n`, `last`) runs over the concatenation; `last`
//! is a fully qualified name and tells which registry to continue in.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{empty, full, ProxyBody};
use crate::error::ProxyError;
use crate::upstream::{read_limited, Outgoing, Upstream, UpstreamError, Upstreams};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const MAX_CATALOG_RESPONSE: usize = 16 * 1024 * 1024;

#[derive(serde::Deserialize)]
struct CatalogPage {
    #[serde(default)]
    repositories: Vec<String>,
}

/// One page of a registry's catalog.
pub struct Page {
    pub repositories: Vec<String>,
    /// The registry said more follow (a `Link` header).
    pub more: bool,
}

/// Fetch one catalog page, `n` names after `last`. `None` when the registry does not let
/// portcullis list (401, 403, 404): what may not be listed is simply not shown.
pub async fn fetch_page(
    upstream: &Upstream,
    n: usize,
    last: Option<&str>,
    authorization: Option<&HeaderValue>,
) -> Result<Option<Page>, UpstreamError> {
    let mut pq = format!("/v2/_catalog?n={n}");
    if let Some(l) = last {
        pq.push_str("&last=");
        pq.extend(form_urlencoded::byte_serialize(l.as_bytes()));
    }
    let out = Outgoing {
        method: Method::GET,
        path_and_query: pq,
        headers: HeaderMap::new(),
        body: empty(),
        replayable: true,
        scopes: vec!["registry:catalog:*".to_owned()],
        identity: upstream.identity_for(authorization),
    };
    let resp = upstream.send(out).await?;
    let status = resp.status();
    if matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ) {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(UpstreamError::Status {
            registry: upstream.host().to_owned(),
            status,
        });
    }
    let more = resp.headers().contains_key(header::LINK);
    let body = read_limited(resp.into_body(), MAX_CATALOG_RESPONSE, upstream.host()).await?;
    let page: CatalogPage = serde_json::from_slice(&body)
        .map_err(|e| upstream.protocol_error(format!("catalog: {e}")))?;
    Ok(Some(Page {
        repositories: page.repositories,
        more,
    }))
}

pub async fn serve(
    registries: &[String],
    qualify: bool,
    upstreams: &Upstreams,
    req: &Request<Incoming>,
    visible: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Response<ProxyBody>, ProxyError> {
    let (n, last) = page_params(req.uri().query())?;
    let (start, mut upstream_last) = match &last {
        None => (0, None),
        Some(l) if !qualify => (0, Some(l.clone())),
        Some(l) => {
            let (host, rest) = l.split_once('/').ok_or_else(|| {
                ProxyError::BadRequest(format!("last={l:?} is not a fully qualified name"))
            })?;
            let index = registries.iter().position(|r| r == host).ok_or_else(|| {
                ProxyError::BadRequest(format!("last={l:?} names no search registry"))
            })?;
            (index, Some(rest.to_owned()))
        }
    };
    let mut names: Vec<String> = Vec::new();
    let mut more = false;
    'registries: for (i, registry) in registries.iter().enumerate().skip(start) {
        let Some(upstream) = upstreams.get(registry).filter(|_| visible(registry, "")) else {
            continue;
        };
        loop {
            if names.len() >= n {
                more = true;
                break 'registries;
            }
            let authorization = req.headers().get(header::AUTHORIZATION);
            let Some(page) = fetch_page(
                upstream,
                n - names.len(),
                upstream_last.take().as_deref(),
                authorization,
            )
            .await?
            else {
                continue 'registries;
            };
            let has_next = page.more;
            let got = page.repositories.len();
            upstream_last = page.repositories.last().cloned();
            names.extend(
                page.repositories
                    .into_iter()
                    .filter(|r| visible(registry, r))
                    .map(|r| {
                        if qualify {
                            format!("{registry}/{r}")
                        } else {
                            r
                        }
                    }),
            );
            if !has_next || got == 0 {
                upstream_last = None;
                if names.len() >= n && i + 1 < registries.len() {
                    more = true;
                    break 'registries;
                }
                continue 'registries;
            }
        }
    }
    names.truncate(n);
    let body = serde_json::to_vec(&serde_json::json!({ "repositories": names }))
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let mut resp = Response::new(full(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let (true, Some(last)) = (more, names.last()) {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        if let Ok(v) =
            HeaderValue::from_str(&format!("</v2/_catalog?last={last}&n={n}>; rel=\"next\""))
        {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

fn page_params(query: Option<&str>) -> Result<(usize, Option<String>), ProxyError> {
    let mut n = DEFAULT_PAGE;
    let mut last = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "n" => {
                n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        ProxyError::BadRequest(format!("n={v:?} is not a positive number"))
                    })?
                    .min(MAX_PAGE)
            }
            "last" if !v.is_empty() => last = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok((n, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_parameters() {
        assert_eq!(page_params(None).ok(), Some((DEFAULT_PAGE, None)));
        assert_eq!(
            page_params(Some("n=5&last=docker.io%2Flibrary%2Fa")).ok(),
            Some((5, Some("docker.io/library/a".into())))
        );
        assert_eq!(page_params(Some("n=100000")).ok(), Some((MAX_PAGE, None)));
        assert!(page_params(Some("n=0")).is_err());
        assert!(page_params(Some("n=x")).is_err());
    }
}
