//! What a request asks for, read off its route, method and headers: the policy's operation,
//! the tag or digest it names, the client's user name. Pure functions, so the pipeline in
//! [`super`] reads as decisions rather than pattern matches.

use http::{header, HeaderMap, Method};

use crate::error::ProxyError;
use crate::policy::Operation;
use crate::reference::{Name, Reference};
use crate::route::{self, Route};

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

/// The operation a request performs, for logs, metrics and (later) policy.
pub(super) fn operation(route: Option<&Route>, method: &Method) -> &'static str {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match route {
        None => "invalid",
        Some(Route::Base) => "ping",
        Some(Route::Catalog | Route::Tags { .. }) => "list",
        Some(Route::V1Ping | Route::V1Search) => "search",
        Some(_) if *method == Method::DELETE => "delete",
        Some(Route::Upload { .. } | Route::UploadStart { .. }) => "push",
        Some(_) if read => "pull",
        Some(_) => "push",
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

/// The registry a request names, for a metric label when nothing was resolved (refused, or
/// failed before resolution): the intercepted host, else the host at the start of a
/// qualified `/v2/<name>/...`. A short name names none.
pub(super) fn named_registry(intercepted: Option<&str>, path: &str) -> Option<String> {
    if let Some(host) = intercepted {
        return Some(host.to_owned());
    }
    match Name::parse(route::parse(path).ok()?.name()?).ok()? {
        Name::Qualified { registry, .. } => Some(registry),
        Name::Short(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::named_registry;

    #[test]
    fn the_named_registry_is_the_intercepted_host_or_the_qualified_one() {
        let cases = [
            (Some("quay.io"), "/v2/x/manifests/1", Some("quay.io")),
            (
                None,
                "/v2/evil.example.net/x/manifests/1",
                Some("evil.example.net"),
            ),
            (
                None,
                "/v2/index.docker.io/x/blobs/uploads/",
                Some("docker.io"),
            ),
            (None, "/v2/alpine/manifests/latest", None),
            (None, "/v2/", None),
            (None, "/v2/UPPER/manifests/x", None),
        ];
        for (intercepted, path, want) in cases {
            assert_eq!(
                named_registry(intercepted, path).as_deref(),
                want,
                "{intercepted:?} {path}"
            );
        }
    }
}
