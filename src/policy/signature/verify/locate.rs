//! Where signatures live, as containers/image looks for them: cosign attachments under a tag
//! derived from the manifest digest (`docker/docker_client.go` `sigstoreAttachmentTag`), and
//! GPG signatures in a lookaside store (`docker/registries_d.go` `lookasideStorageBaseURL` and
//! `lookasideStorageURL`, docs/signature-protocols.md).

use crate::reference::Digest;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error("invalid lookaside URL {url:?}: {message}")]
    BadBase { url: String, message: String },
    #[error("repository path {0:?} cannot name a lookaside location")]
    BadRepository(String),
}

/// The tag cosign attaches a manifest's signatures under: `sha256:<hex>` → `sha256-<hex>.sig`.
pub fn cosign_tag(manifest_digest: &Digest) -> String {
    format!(
        "{}-{}.sig",
        manifest_digest.algorithm(),
        manifest_digest.hex()
    )
}

/// The URL of a manifest's signature number `index + 1` (indexes from 0, as
/// containers/image's; signatures are read from `signature-1` until one is missing):
/// `<base>/<repository path>@<algorithm>=<hex>/signature-<index + 1>`. `repository_path` is
/// the reference's path without registry, tag or digest (`library/busybox`).
///
/// containers/image appends `"/" + path` to the base URL's path as is, so a base with a
/// trailing '/' gives `//`; here trailing slashes are trimmed first, which names the same
/// file on a filesystem and on any server that merges slashes, and the right one on the rest.
pub fn lookaside_url(
    base: &str,
    repository_path: &str,
    manifest_digest: &Digest,
    index: usize,
) -> Result<url::Url, LocateError> {
    let mut url = url::Url::parse(base).map_err(|e| LocateError::BadBase {
        url: base.to_owned(),
        message: e.to_string(),
    })?;
    if url.cannot_be_a_base() {
        return Err(LocateError::BadBase {
            url: base.to_owned(),
            message: "not a hierarchical URL".to_owned(),
        });
    }
    // containers/image refuses a path that path.Clean would change; such a path cannot come
    // from a valid reference, but this function is handed a string.
    let clean = !repository_path.is_empty()
        && repository_path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !clean {
        return Err(LocateError::BadRepository(repository_path.to_owned()));
    }
    let path = format!(
        "{}/{repository_path}@{}={}/signature-{}",
        url.path().trim_end_matches('/'),
        manifest_digest.algorithm(),
        manifest_digest.hex(),
        index + 1
    );
    url.set_path(&path);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268";

    fn digest() -> Digest {
        format!("sha256:{HEX}").parse().unwrap()
    }

    #[test]
    fn cosign_tag_replaces_the_colon_and_adds_sig() {
        assert_eq!(cosign_tag(&digest()), format!("sha256-{HEX}.sig"));
        let sha512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        assert_eq!(
            cosign_tag(&sha512),
            format!("sha512-{}.sig", "ab".repeat(64))
        );
    }

    #[test]
    fn lookaside_url_has_containers_image_layout() {
        let url = lookaside_url(
            "https://sigs.example.com/sigstore",
            "library/busybox",
            &digest(),
            0,
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            format!("https://sigs.example.com/sigstore/library/busybox@sha256={HEX}/signature-1")
        );
        let url = lookaside_url("https://sigs.example.com", "team/app", &digest(), 2).unwrap();
        assert_eq!(
            url.as_str(),
            format!("https://sigs.example.com/team/app@sha256={HEX}/signature-3")
        );
    }

    #[test]
    fn lookaside_url_keeps_port_and_query_and_trims_trailing_slash() {
        let url = lookaside_url("http://127.0.0.1:8080/a/b/?x=1", "ns/repo", &digest(), 0).unwrap();
        assert_eq!(
            url.as_str(),
            format!("http://127.0.0.1:8080/a/b/ns/repo@sha256={HEX}/signature-1?x=1")
        );
        let url = lookaside_url("file:///var/lib/containers/sigstore", "r", &digest(), 0).unwrap();
        assert_eq!(
            url.as_str(),
            format!("file:///var/lib/containers/sigstore/r@sha256={HEX}/signature-1")
        );
    }

    #[test]
    fn lookaside_url_refuses_bad_bases_and_paths() {
        for bad in ["not a url", "mailto:x@example.com"] {
            assert!(
                matches!(
                    lookaside_url(bad, "r", &digest(), 0),
                    Err(LocateError::BadBase { .. })
                ),
                "{bad}"
            );
        }
        for bad in ["", "/abs", "a/../b", "a/./b", "a//b", "a/"] {
            assert_eq!(
                lookaside_url("https://s.example", bad, &digest(), 0),
                Err(LocateError::BadRepository(bad.to_owned())),
                "{bad:?}"
            );
        }
    }
}
