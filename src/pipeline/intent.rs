//! The first stage: what a request asks for. The [`Intent`] (operation, method, path,
//! listener, peer) is read before anything can fail, so the outcome can always say what was
//! asked; the rest are pure functions over the route, method and headers (the policy's
//! operation, the tag or digest named, the client's user name), so the pipeline in
//! [`super`] reads as decisions rather than pattern matches.

use std::net::SocketAddr;
use std::time::Instant;

use http::{header, HeaderMap, Method, Version};

use crate::error::ProxyError;
use crate::policy::Operation;
use crate::reference::Reference;
use crate::route::Route;

/// What the request was, as the first stage read it: enough to log it whatever happens.
pub(crate) struct Intent {
    pub peer: SocketAddr,
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub listener: &'static str,
    pub operation: &'static str,
    /// The Basic-auth user name, if the client sent one (never its password).
    pub user: Option<String>,
    pub started: Instant,
}

/// The policy's operation for a request.
pub(super) fn policy_operation(route: &Route, method: &Method) -> Operation {
    match route {
        _ if *method == Method::DELETE && !matches!(route, Route::Upload { .. }) => {
            Operation::Delete
        }
        Route::Upload { .. } | Route::UploadStart { .. } => Operation::Push,
        Route::Tags { .. } | Route::Catalog => Operation::List,
        Route::V1Search | Route::V1Ping => Operation::Search,
        _ if matches!(*method, Method::GET | Method::HEAD) => Operation::Pull,
        _ => Operation::Push,
    }
}

pub(super) fn route_tag(route: &Route) -> Option<&str> {
    match route {
        Route::Manifest {
            reference: Reference::Tag(t),
            ..
        } => Some(t),
        _ => None,
    }
}

pub(super) fn route_digest(route: &Route) -> Option<&str> {
    match route {
        Route::Manifest {
            reference: Reference::Digest(d),
            ..
        }
        | Route::Blob { digest: d, .. }
        | Route::Referrers { digest: d, .. } => Some(d.as_str()),
        _ => None,
    }
}

/// `uri` with its query replaced by `query` (none when empty).
pub(super) fn with_query(uri: &http::Uri, query: &str) -> Result<http::Uri, ProxyError> {
    let path_and_query = if query.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{query}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?,
    );
    http::Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))
}

pub(super) fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The user name of a client's Basic credentials, for the audit trail (never the password).
pub(super) fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?;
    match crate::upstream::auth::Identity::from_client_basic(value)? {
        crate::upstream::auth::Identity::Client { username, .. } => Some(username),
        _ => None,
    }
}

/// Blobs and manifests by digest of a short name come from the registry that served the
/// pull's tag, without searching again.
pub(super) fn content_addressed(route: &Route) -> bool {
    matches!(
        route,
        Route::Blob { .. }
            | Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
    )
}

/// The operation a request performs, for logs and metrics: the policy's operation, so that
/// a label never says something else than what was decided (cancelling an upload is part of
/// a push), plus `ping` for `/v2/` and `invalid` for a path that is no API route.
pub(super) fn operation(route: Option<&Route>, method: &Method) -> &'static str {
    match route {
        None => "invalid",
        Some(Route::Base) => "ping",
        Some(route) => policy_operation(route, method).as_str(),
    }
}

pub(super) fn what(route: &Route) -> &'static str {
    match route {
        Route::Manifest { .. } => "manifest",
        Route::Blob { .. } => "blob",
        _ => "repository",
    }
}

pub(super) fn check_method(route: &Route, method: &Method) -> Result<(), ProxyError> {
    if route.allows(method) {
        Ok(())
    } else {
        Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            route: route.kind(),
        })
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::operation;
    use crate::reference::Name;
    use crate::route;

    #[test]
    fn the_logged_operation_is_the_decided_one() {
        let cases = [
            ("/v2/", Method::GET, "ping"),
            ("/v2/x/manifests/1", Method::GET, "pull"),
            ("/v2/x/manifests/1", Method::HEAD, "pull"),
            ("/v2/x/manifests/1", Method::PUT, "push"),
            ("/v2/x/manifests/1", Method::DELETE, "delete"),
            ("/v2/x/blobs/uploads/", Method::POST, "push"),
            // Cancelling an upload is part of a push, for the policy and for the label.
            ("/v2/x/blobs/uploads/abc", Method::DELETE, "push"),
            ("/v2/x/tags/list", Method::GET, "list"),
            ("/v2/_catalog", Method::GET, "list"),
            ("/v1/search", Method::GET, "search"),
        ];
        for (path, method, want) in cases {
            let route = crate::route::parse(path).ok();
            assert_eq!(operation(route.as_ref(), &method), want, "{method} {path}");
        }
        assert_eq!(operation(None, &Method::GET), "invalid");
    }

    /// The registry a refused request is counted under (`Trail::named`) is the one its
    /// name names once parsed: the qualified host, docker.io normalised, none for a short
    /// name or a path with no name. (The intercepted host comes from the connection.)
    #[test]
    fn the_named_registry_is_the_qualified_host_of_the_name() {
        let cases = [
            (
                "/v2/evil.example.net/x/manifests/1",
                Some("evil.example.net"),
            ),
            ("/v2/index.docker.io/x/blobs/uploads/", Some("docker.io")),
            ("/v2/alpine/manifests/latest", None),
            ("/v2/", None),
            ("/v2/UPPER/manifests/x", None),
        ];
        for (path, want) in cases {
            let named = route::parse(path)
                .ok()
                .and_then(|r| Name::parse(r.name()?).ok())
                .and_then(|n| match n {
                    Name::Qualified { registry, .. } => Some(registry),
                    Name::Short(_) => None,
                });
            assert_eq!(named.as_deref(), want, "{path}");
        }
    }
}
