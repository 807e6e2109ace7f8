//! OCI distribution-spec conformance in front of a registry that lacks it (distribution
//! 2.8.2): what portcullis answers itself, request by request, with raw HTTP.

use crate::harness::http::Response;
use crate::harness::image::MANIFEST_MEDIA_TYPE;
use crate::harness::*;

const REPO: &str = "/v2/corp.example.com/team/app";

/// portcullis in front of one plain registry standing in for `corp.example.com`, which is
/// also the search list and the push default.
fn proxy_for(corp: &Registry) -> Portcullis {
    Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .push("corp.example.com")
            .registry(Upstream::new("corp.example.com", corp))
            .toml(),
    )
}

fn call(
    proxy: &Portcullis,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut client = https(&proxy.ca_file());
    for (k, v) in headers {
        client = client.header(k, v);
    }
    client
        .request(method, &format!("{}{path}", proxy.url()), body.to_vec())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[test]
fn reads_of_a_reference_that_cannot_be_a_tag_are_manifest_unknown_and_never_forwarded() {
    let corp = Registry::start(Auth::None);
    let proxy = proxy_for(&corp);
    for repo in [REPO, "/v2/team/app"] {
        let path = format!("{repo}/manifests/.INVALID_MANIFEST_NAME");
        let get = call(&proxy, "GET", &path, &[], b"");
        assert_eq!(get.status, 404, "GET {path}: {}", get.text());
        assert_eq!(get.oci_codes(), ["MANIFEST_UNKNOWN"], "GET {path}");
        let head = call(&proxy, "HEAD", &path, &[], b"");
        assert_eq!(head.status, 404, "HEAD {path}");
        // A PUT to it is still malformed: the spec says a tag MUST match its grammar.
        let put = call(
            &proxy,
            "PUT",
            &path,
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            b"{}",
        );
        assert_eq!(put.status, 400, "PUT {path}: {}", put.text());
        assert_eq!(put.oci_codes(), ["MANIFEST_INVALID"], "PUT {path}");
        // A malformed digest keeps its own code.
        let digest = call(
            &proxy,
            "GET",
            &format!("{repo}/manifests/sha256:totallywrong"),
            &[],
            b"",
        );
        assert_eq!(digest.status, 400, "{}", digest.text());
        assert_eq!(digest.oci_codes(), ["DIGEST_INVALID"]);
    }
    let asked: Vec<String> = corp
        .requests()
        .into_iter()
        .filter(|r| r.contains("manifests"))
        .collect();
    assert!(asked.is_empty(), "forwarded to the registry: {asked:?}");
}

#[test]
fn deleting_a_manifest_by_tag_on_distribution_2_is_unsupported_and_the_tag_stays() {
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[4096]);
    corp.seed(&image, "team/app:doomed");
    let proxy = proxy_for(&corp);
    let path = format!("{REPO}/manifests/doomed");

    let deleted = call(&proxy, "DELETE", &path, &[], b"");
    assert_eq!(deleted.status, 400, "{}", deleted.text());
    assert_eq!(deleted.oci_codes(), ["UNSUPPORTED"]);
    assert!(
        corp.requests()
            .iter()
            .any(|r| r.starts_with("DELETE /v2/team/app/manifests/doomed 400")),
        "not forwarded: {:?}",
        corp.requests()
    );
    let accept = [("Accept", MANIFEST_MEDIA_TYPE)];
    let still = call(&proxy, "HEAD", &path, &accept, b"");
    assert_eq!(still.status, 200, "the tag is still there");

    // By digest it is deleted, as before.
    let by_digest = format!("{REPO}/manifests/{}", image.manifest_digest);
    assert_eq!(call(&proxy, "DELETE", &by_digest, &[], b"").status, 202);
    assert_eq!(call(&proxy, "HEAD", &path, &accept, b"").status, 404);
}
