//! Where an upstream may send a client: the `Location` of upload sessions, pushed blobs and
//! manifests, and the `Link` of paginated lists.
//!
//! Clients follow these without asking, so a location is passed on only when it is on the
//! upstream's own origin and inside the repository the request named; it is then rewritten
//! to portcullis's name for that repository, with no origin, so the client keeps talking to
//! portcullis. Anything else (another host, port or scheme, credentials in the URL, a path
//! outside the repository, something that does not parse) is refused, and the request fails
//! rather than hand the client a way around the gate.
//!
//! Pure functions of their inputs, so they can be fuzzed.

use std::fmt;

use url::Url;

/// Which header a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// One URI reference.
    Location,
    /// A list of `<URI-reference>; param=value` (RFC 8288).
    Link,
}

impl Header {
    pub fn name(self) -> &'static str {
        match self {
            Header::Location => "Location",
            Header::Link => "Link",
        }
    }
}

/// Why a location was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not a URI reference (or not text), or a `Link` that is not `<...>; params`.
    Unparsable,
    /// Another scheme, host or port than the upstream's endpoint.
    OtherOrigin,
    /// A `user:password@` part: never passed on, even for the upstream's own host.
    Userinfo,
    /// The upstream's origin, but not under `/v2/<repository>/`.
    OutsideRepository,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Unparsable => "not a URI reference",
            Reason::OtherOrigin => "another origin than the registry's",
            Reason::Userinfo => "carries credentials",
            Reason::OutsideRepository => "outside the repository",
        })
    }
}

/// A location refused by [`rewrite`] or [`upstream_path`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location} ({reason})")]
pub struct ForeignLocation {
    /// What the upstream sent, with any query (presigned URLs carry secrets) redacted.
    pub location: String,
    pub reason: Reason,
}

impl ForeignLocation {
    fn new(location: &str, reason: Reason) -> ForeignLocation {
        let location = match location.split_once('?') {
            Some((before, _)) => format!("{before}?<redacted>"),
            None => location.to_owned(),
        };
        ForeignLocation { location, reason }
    }
}

/// Rewrite a `Location` or `Link` value from the upstream at `endpoint`, answering for
/// `upstream_repo`, to portcullis's `/v2/<client_name>/...`. Relative references resolve
/// against `endpoint`; dot segments (also percent-encoded ones) are resolved before the
/// repository is checked, so `..` cannot climb out of it. `Link` parameters are kept.
pub fn rewrite(
    header: Header,
    value: &[u8],
    endpoint: &Url,
    upstream_repo: &str,
    client_name: &str,
) -> Result<String, ForeignLocation> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Err(ForeignLocation::new(
            &String::from_utf8_lossy(value),
            Reason::Unparsable,
        ));
    };
    let one = |reference: &str| {
        let (rest, query) = resolve(reference, endpoint, upstream_repo)?;
        Ok(match query {
            Some(q) => format!("/v2/{client_name}/{rest}?{q}"),
            None => format!("/v2/{client_name}/{rest}"),
        })
    };
    match header {
        Header::Location => one(text.trim()),
        Header::Link => {
            let links =
                parse_links(text).ok_or_else(|| ForeignLocation::new(text, Reason::Unparsable))?;
            let mut out = Vec::with_capacity(links.len());
            for (target, params) in links {
                out.push(format!("<{}>{params}", one(target)?));
            }
            Ok(out.join(", "))
        }
    }
}

/// The path and query, on the upstream at `endpoint`, of a `Location` it sent for
/// `upstream_repo`: what portcullis itself sends next (an upload's final `PUT`).
pub fn upstream_path(
    value: &str,
    endpoint: &Url,
    upstream_repo: &str,
) -> Result<String, ForeignLocation> {
    let (rest, query) = resolve(value.trim(), endpoint, upstream_repo)?;
    Ok(match query {
        Some(q) => format!("/v2/{upstream_repo}/{rest}?{q}"),
        None => format!("/v2/{upstream_repo}/{rest}"),
    })
}

/// The part of the path after `/v2/<repo>/`, and the query, of a same-origin reference.
fn resolve(
    reference: &str,
    endpoint: &Url,
    repo: &str,
) -> Result<(String, Option<String>), ForeignLocation> {
    let refused = |reason| Err(ForeignLocation::new(reference, reason));
    if reference.is_empty() || reference.chars().any(|c| c.is_control()) {
        return refused(Reason::Unparsable);
    }
    let Ok(url) = endpoint.join(reference) else {
        return refused(Reason::Unparsable);
    };
    if !url.username().is_empty() || url.password().is_some() {
        return refused(Reason::Userinfo);
    }
    let same_origin = url.scheme() == endpoint.scheme()
        && url.host() == endpoint.host()
        && url.port_or_known_default() == endpoint.port_or_known_default();
    if !same_origin {
        return refused(Reason::OtherOrigin);
    }
    let prefix = format!("/v2/{repo}/");
    match url.path().strip_prefix(&prefix) {
        Some(rest) if !repo.is_empty() => Ok((rest.to_owned(), url.query().map(str::to_owned))),
        _ => refused(Reason::OutsideRepository),
    }
}

/// `<a>; rel="next", <b>; rel="prev"` as `[("a", "; rel=\"next\""), ("b", ...)]`.
fn parse_links(value: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = value.trim_start();
    while !rest.is_empty() {
        let after = rest.strip_prefix('<')?;
        let close = after.find('>')?;
        let target = &after[..close];
        let params_start = &after[close + 1..];
        // Parameters run to the next comma outside a quoted string.
        let mut end = params_start.len();
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in params_start.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        if quoted {
            return None;
        }
        let params = params_start[..end].trim_end();
        if !(params.is_empty() || params.trim_start().starts_with(';')) {
            return None;
        }
        out.push((target, params));
        rest = params_start[end..].trim_start_matches(',').trim_start();
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Url {
        Url::parse("https://registry.corp:5001").expect("url")
    }

    fn location(value: &str) -> Result<String, ForeignLocation> {
        rewrite(
            Header::Location,
            value.as_bytes(),
            &endpoint(),
            "team/app",
            "corp.example.com/team/app",
        )
    }

    fn reason(value: &str) -> Option<Reason> {
        location(value).err().map(|e| e.reason)
    }

    #[test]
    fn absolute_same_origin_locations_become_portcullis_paths() {
        assert_eq!(
            location("https://registry.corp:5001/v2/team/app/blobs/uploads/abc?_state=x%3D")
                .as_deref(),
            Ok("/v2/corp.example.com/team/app/blobs/uploads/abc?_state=x%3D")
        );
        assert_eq!(
            location("HTTPS://REGISTRY.CORP:5001/v2/team/app/blobs/sha256:aa").as_deref(),
            Ok("/v2/corp.example.com/team/app/blobs/sha256:aa"),
            "scheme and host compare case-insensitively"
        );
    }

    #[test]
    fn relative_locations_resolve_against_the_endpoint() {
        assert_eq!(
            location("/v2/team/app/blobs/uploads/u").as_deref(),
            Ok("/v2/corp.example.com/team/app/blobs/uploads/u")
        );
        // Relative to the endpoint's root, so a bare path segment is outside the repository.
        assert_eq!(reason("uploads/u"), Some(Reason::OutsideRepository));
    }

    #[test]
    fn default_ports_are_the_same_origin() {
        let hub = Url::parse("https://registry-1.docker.io").expect("url");
        let out = rewrite(
            Header::Location,
            b"https://registry-1.docker.io:443/v2/library/x/blobs/uploads/1",
            &hub,
            "library/x",
            "x",
        );
        assert_eq!(out.as_deref(), Ok("/v2/x/blobs/uploads/1"));
    }

    #[test]
    fn foreign_hosts_ports_and_schemes_are_refused() {
        assert_eq!(
            reason("https://evil.example.net/upload/abc"),
            Some(Reason::OtherOrigin)
        );
        assert_eq!(
            reason("https://evil.example.net/v2/team/app/blobs/uploads/abc"),
            Some(Reason::OtherOrigin)
        );
        assert_eq!(
            reason("https://registry.corp:5002/v2/team/app/blobs/uploads/abc"),
            Some(Reason::OtherOrigin),
            "same host, other port"
        );
        assert_eq!(
            reason("https://registry.corp/v2/team/app/blobs/uploads/abc"),
            Some(Reason::OtherOrigin),
            "same host, default port"
        );
        assert_eq!(
            reason("http://registry.corp:5001/v2/team/app/blobs/uploads/abc"),
            Some(Reason::OtherOrigin),
            "scheme change"
        );
        assert_eq!(
            reason("//evil.example.net/v2/team/app/blobs/uploads/abc"),
            Some(Reason::OtherOrigin),
            "scheme-relative"
        );
        assert_eq!(
            reason("/\\evil.example.net/v2/team/app/blobs/uploads/abc"),
            Some(Reason::OtherOrigin),
            "a backslash is a slash in an https URL"
        );
        assert_eq!(
            reason("ftp://registry.corp:5001/v2/team/app/x"),
            Some(Reason::OtherOrigin)
        );
    }

    #[test]
    fn credentials_in_a_location_are_refused() {
        assert_eq!(
            reason("https://user:pw@registry.corp:5001/v2/team/app/blobs/uploads/a"),
            Some(Reason::Userinfo)
        );
        assert_eq!(
            reason("https://registry.corp:5001@evil.example.net/v2/team/app/blobs/uploads/a"),
            Some(Reason::Userinfo)
        );
    }

    #[test]
    fn dot_segments_cannot_leave_the_repository() {
        assert_eq!(
            reason("/v2/team/app/../../other/repo/blobs/uploads/a"),
            Some(Reason::OutsideRepository)
        );
        assert_eq!(
            reason("/v2/team/app/%2e%2e/%2E%2E/other/blobs/uploads/a"),
            Some(Reason::OutsideRepository),
            "percent-encoded dots are dot segments too"
        );
        assert_eq!(
            location("/v2/team/app/blobs/../blobs/uploads/a").as_deref(),
            Ok("/v2/corp.example.com/team/app/blobs/uploads/a"),
            "dots that stay inside are resolved, not passed on"
        );
        assert_eq!(
            reason("/v2/team/application/blobs/uploads/a"),
            Some(Reason::OutsideRepository)
        );
        assert_eq!(
            reason("/v2/team/blobs/uploads/a"),
            Some(Reason::OutsideRepository)
        );
        assert_eq!(reason("/v2/"), Some(Reason::OutsideRepository));
    }

    #[test]
    fn encoded_characters_are_kept_not_decoded() {
        assert_eq!(
            location("/v2/team/app/blobs/uploads/a%2Fb?x=%26y").as_deref(),
            Ok("/v2/corp.example.com/team/app/blobs/uploads/a%2Fb?x=%26y")
        );
        assert_eq!(
            reason("/v2/team%2Fapp/blobs/uploads/a"),
            Some(Reason::OutsideRepository),
            "an encoded slash is not the repository's slash"
        );
    }

    #[test]
    fn unparsable_values_are_refused() {
        assert_eq!(reason(""), Some(Reason::Unparsable));
        assert_eq!(reason("https://[::1/x"), Some(Reason::Unparsable));
        assert_eq!(reason("/v2/team/app/\u{7f}"), Some(Reason::Unparsable));
        let not_text = rewrite(
            Header::Location,
            b"/v2/team/app/\xff",
            &endpoint(),
            "team/app",
            "x",
        );
        assert_eq!(not_text.map_err(|e| e.reason), Err(Reason::Unparsable));
    }

    #[test]
    fn refused_locations_redact_their_query() {
        let e = location("https://cdn.example/x?X-Amz-Signature=secret").expect_err("foreign");
        assert_eq!(e.location, "https://cdn.example/x?<redacted>");
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn link_headers_are_rewritten_with_their_parameters() {
        let link = |v: &str| {
            rewrite(
                Header::Link,
                v.as_bytes(),
                &endpoint(),
                "library/fedora",
                "fedora",
            )
        };
        assert_eq!(
            link(r#"</v2/library/fedora/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Ok(r#"</v2/fedora/tags/list?last=b&n=2>; rel="next""#)
        );
        assert_eq!(
            link(r#"<https://registry.corp:5001/v2/library/fedora/tags/list?n=2>; rel="next", </v2/library/fedora/tags/list>; title="a, b"; rel="first""#).as_deref(),
            Ok(r#"</v2/fedora/tags/list?n=2>; rel="next", </v2/fedora/tags/list>; title="a, b"; rel="first""#)
        );
        assert_eq!(
            link(r#"<https://evil.example.net/v2/library/fedora/tags/list>; rel="next""#)
                .map_err(|e| e.reason),
            Err(Reason::OtherOrigin)
        );
        assert_eq!(
            link(r#"</v2/library/fedora/tags/list>; rel="next", <https://evil.example.net/>; rel="prev""#)
                .map_err(|e| e.reason),
            Err(Reason::OtherOrigin),
            "one foreign link refuses the header"
        );
        for bad in [
            "/v2/library/fedora/tags/list",
            "<unclosed",
            r#"<a>; rel="open"#,
            "<a> junk",
            "",
        ] {
            assert_eq!(
                link(bad).map_err(|e| e.reason),
                Err(Reason::Unparsable),
                "{bad}"
            );
        }
    }

    #[test]
    fn upstream_paths_stay_on_the_upstream_repository() {
        assert_eq!(
            upstream_path(
                "https://registry.corp:5001/v2/team/app/blobs/uploads/a?_state=s",
                &endpoint(),
                "team/app"
            )
            .as_deref(),
            Ok("/v2/team/app/blobs/uploads/a?_state=s")
        );
        assert_eq!(
            upstream_path(
                "https://evil.example.net/v2/team/app/blobs/uploads/a",
                &endpoint(),
                "team/app"
            )
            .map_err(|e| e.reason),
            Err(Reason::OtherOrigin)
        );
    }
}
