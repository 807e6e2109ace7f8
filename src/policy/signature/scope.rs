//! Docker-transport scopes: which scope keys an image is looked up under, most specific
//! first, and which keys are well-formed. Shared by containers-policy.json(5) and
//! containers-registries.d(5), which use the same precedence.

use crate::reference::{
    normalize_registry, ImageReference, NameError, Reference, Repository, DOCKER_HUB,
};

/// A fully expanded docker reference: `docker.io/library/alpine:3`, never `alpine:3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: Repository,
    /// None is containers/image's "unknown digest" case: looked up by repository only.
    pub reference: Option<Reference>,
}

impl ImageRef {
    /// Parses a reference as a user types it and expands it the way docker does
    /// (`alpine` is `docker.io/library/alpine`). A tag together with a digest is refused, as
    /// containers/image refuses it: which of the two a scope should match is undefined.
    pub fn parse(s: &str) -> Result<ImageRef, NameError> {
        let parsed = ImageReference::parse(s)?;
        let reference = match (parsed.tag, parsed.digest) {
            (Some(_), Some(_)) => {
                return Err(NameError::InvalidName(crate::reference::detail(
                    s,
                    "a reference with both a tag and a digest has no policy scope",
                )))
            }
            (Some(tag), None) => Some(Reference::Tag(tag)),
            (None, Some(digest)) => Some(Reference::Digest(digest)),
            (None, None) => None,
        };
        let (registry, repository) = parsed.name.qualify(DOCKER_HUB);
        Ok(ImageRef {
            registry,
            repository,
            reference,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// containers/image's `PolicyConfigurationIdentity`: `name:tag` or `name@digest`.
    pub fn identity(&self) -> String {
        match &self.reference {
            None => self.name(),
            Some(Reference::Tag(tag)) => format!("{}:{tag}", self.name()),
            Some(Reference::Digest(digest)) => format!("{}@{digest}", self.name()),
        }
    }

    /// The scope keys to try, most specific first: the identity, the repository, each
    /// parent namespace, `host[:port]`, then `*.domain` wildcards from longest to shortest
    /// (the port dropped). The transport default `""` is not included. This is
    /// containers/image's `PolicyConfigurationIdentity` followed by
    /// `DockerReferenceNamespaces`.
    pub fn scope_candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.reference.is_some() {
            out.push(self.identity());
        }
        let mut name = self.name();
        loop {
            out.push(name.clone());
            match name.rfind('/') {
                Some(slash) => name.truncate(slash),
                None => break,
            }
        }
        let mut host = name.split(':').next().unwrap_or_default();
        while let Some(dot) = host.find('.') {
            host = &host[dot + 1..];
            out.push(format!("*.{host}"));
        }
        out
    }
}

/// `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` components joined by '.', the domain grammar
/// of distribution/reference.
fn is_domain_name(s: &str) -> bool {
    s.split('.').all(|c| {
        let b = c.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    })
}

/// distribution/reference's `DomainRegexp` (without bracketed IPv6): a domain name with an
/// optional `:port`.
pub(crate) fn is_domain(s: &str) -> bool {
    match s.split_once(':') {
        Some((domain, port)) => {
            is_domain_name(domain) && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => is_domain_name(s),
    }
}

/// Whether `first` would be read as a registry host rather than a repository component.
fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

/// Checks a docker scope key. containers/image's docker transport accepts any string here
/// (its `ValidatePolicyConfigurationScope` is a FIXME that returns nil), but lookups only
/// ever try fully expanded names, so a key like `busybox` or `docker.io/busybox:1` silently
/// never matches. Such keys are refused, with the spelling that would match.
pub(crate) fn validate_docker_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Ok(());
    }
    if let Some(domain) = scope.strip_prefix("*.") {
        if domain.contains(':') {
            return Err(format!(
                "invalid scope {scope:?}: a wildcard never matches a port; use \"*.{}\"",
                domain.split(':').next().unwrap_or_default()
            ));
        }
        if !is_domain_name(domain) {
            return Err(format!(
                "invalid scope {scope:?}: a wildcard must be \"*.\" followed by a domain"
            ));
        }
        return Ok(());
    }
    if scope.contains('*') {
        return Err(format!(
            "invalid scope {scope:?}: '*' is only allowed as a leading \"*.\""
        ));
    }
    let first = scope.split('/').next().unwrap_or_default();
    if !looks_like_host(first) {
        return Err(format!(
            "invalid scope {scope:?}: scopes must be fully expanded, starting with a registry host (docker.io/library/busybox, not busybox)"
        ));
    }
    if !scope.contains('/') {
        return if is_domain(scope) {
            Ok(())
        } else {
            Err(format!(
                "invalid scope {scope:?}: not a valid registry host"
            ))
        };
    }
    let parsed =
        ImageReference::parse(scope).map_err(|e| format!("invalid scope {scope:?}: {e}"))?;
    if parsed.tag.is_some() && parsed.digest.is_some() {
        return Err(format!(
            "invalid scope {scope:?}: a scope may have a tag or a digest, not both"
        ));
    }
    let (host, rest) = scope.split_once('/').unwrap_or((scope, ""));
    let registry = normalize_registry(host);
    let mut canonical = if parsed.tag.is_some() || parsed.digest.is_some() {
        // An image: docker.io/alpine:3 is looked up as docker.io/library/alpine:3.
        let (registry, repository) = parsed.name.qualify(DOCKER_HUB);
        format!("{registry}/{repository}")
    } else {
        // A repository or a namespace: docker.io/someone is a namespace, kept as written.
        let path = rest.split(['@']).next().unwrap_or_default();
        format!("{registry}/{path}")
    };
    if let Some(tag) = &parsed.tag {
        canonical = format!("{canonical}:{tag}");
    }
    if let Some(digest) = &parsed.digest {
        canonical = format!("{canonical}@{digest}");
    }
    if canonical != scope {
        return Err(format!(
            "invalid scope {scope:?}: scopes must be written fully expanded; this one matches as {canonical:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_io_short_names_expand_before_lookup() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            r.scope_candidates(),
            [
                "docker.io/library/busybox",
                "docker.io/library",
                "docker.io",
                "*.io"
            ]
        );
        let r = ImageRef::parse("index.docker.io/foo/bar:1").unwrap();
        assert_eq!(r.identity(), "docker.io/foo/bar:1");
    }

    // The cases of containers/image docker/policyconfiguration/naming_test.go
    // (TestDockerReferenceNamespaces), ports included.
    #[test]
    fn namespaces_follow_containers_image() {
        let r = ImageRef::parse("example.com:8443/ns/repo:tag").unwrap();
        assert_eq!(
            r.scope_candidates(),
            [
                "example.com:8443/ns/repo:tag",
                "example.com:8443/ns/repo",
                "example.com:8443/ns",
                "example.com:8443",
                "*.com"
            ]
        );
        let r = ImageRef::parse("localhost/a").unwrap();
        assert_eq!(r.scope_candidates(), ["localhost/a", "localhost"]);
        assert!(ImageRef::parse(
            "a.b/c:t@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        )
        .is_err());
    }

    #[test]
    fn scope_syntax() {
        for ok in [
            "",
            "docker.io",
            "localhost:5000",
            "*.example.com",
            "*.com",
            "docker.io/library",
            "docker.io/someone",
            "docker.io/library/busybox",
            "docker.io/library/busybox:latest",
            "quay.io/ns/repo@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(validate_docker_scope(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("busybox", "fully expanded"),
            ("library/busybox", "fully expanded"),
            ("docker.io/busybox:1", "matches as \"docker.io/library/busybox:1\""),
            ("index.docker.io/library/x", "matches as \"docker.io/library/x\""),
            ("*.example.com:5000", "never matches a port"),
            ("*", "only allowed"),
            ("foo.*.com", "only allowed"),
            ("*.", "followed by a domain"),
            ("Quay.io/x", "matches as \"quay.io/x\""),
            ("quay.io/Upper", "lowercase"),
            ("quay.io/x:t@sha256:0000000000000000000000000000000000000000000000000000000000000000", "not both"),
            ("-bad.io", "not a valid registry host"),
        ] {
            let err = validate_docker_scope(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
