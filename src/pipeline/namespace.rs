//! containerd's `?ns=<registry>`: the registry a mirror request is really for.
//!
//! containerd sends mirror requests for *any* registry to a `[host]` in `hosts.toml`, with
//! the registry it means appended as `ns`. On the mirror endpoint it therefore names the
//! registry; elsewhere the path names it already, and an `ns` that disagrees is refused.
//! Either way it is portcullis's to read and never goes upstream: a request is never served
//! from a registry other than the one it names.

use http::{Request, Uri};

use crate::error::ProxyError;
use crate::reference::normalize_registry;

use super::intent::with_query;

/// The `ns` a request carries (normalised: `docker.io` for its aliases), and the request
/// without it.
pub(super) fn take_ns<B>(req: Request<B>) -> Result<(Option<String>, Request<B>), ProxyError> {
    let Some(query) = req.uri().query() else {
        return Ok((None, req));
    };
    let mut values = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "ns")
        .map(|(_, v)| normalize_registry(&v));
    let Some(ns) = values.next() else {
        return Ok((None, req));
    };
    if values.any(|other| other != ns) {
        return Err(ProxyError::BadRequest(
            "the request names several registries in ns=".to_owned(),
        ));
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = without_key(&parts.uri, "ns")?;
    Ok((Some(ns), Request::from_parts(parts, body)))
}

/// `uri` with every `key=...` pair removed from its query, the rest kept as sent.
fn without_key(uri: &Uri, key: &str) -> Result<Uri, ProxyError> {
    let Some(query) = uri.query() else {
        return Ok(uri.clone());
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            form_urlencoded::parse(name.as_bytes())
                .next()
                .map_or(name != key, |(k, _)| k != key)
        })
        .collect();
    with_query(uri, &kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(uri: &str) -> (Option<String>, String) {
        let req = Request::builder().uri(uri).body(()).expect("request");
        let (ns, req) = take_ns(req).expect("ns");
        (ns, req.uri().to_string())
    }

    #[test]
    fn ns_is_read_and_never_forwarded() {
        assert_eq!(
            take("/v2/team/app/manifests/1?ns=registry.example.com"),
            (
                Some("registry.example.com".to_owned()),
                "/v2/team/app/manifests/1".to_owned()
            )
        );
        assert_eq!(
            take("/v2/team/app/tags/list?n=2&ns=index.docker.io&last=a"),
            (
                Some("docker.io".to_owned()),
                "/v2/team/app/tags/list?n=2&last=a".to_owned()
            )
        );
        // Encoded, it is still read and removed; two different ones are refused.
        assert_eq!(
            take("/v2/a/manifests/1?%6Es=registry.example.com&ns=registry.example.com"),
            (
                Some("registry.example.com".to_owned()),
                "/v2/a/manifests/1".to_owned()
            )
        );
        let two = Request::builder()
            .uri("/v2/a/manifests/1?%6Es=evil.example.net&ns=registry.example.com")
            .body(())
            .expect("request");
        assert!(take_ns(two).is_err());
        assert_eq!(
            take("/v2/a/manifests/1?n=1"),
            (None, "/v2/a/manifests/1?n=1".to_owned())
        );
    }
}
