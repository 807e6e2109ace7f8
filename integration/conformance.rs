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

/// The distribution-spec's chunked upload with an out-of-order chunk, a retried one and a
/// status check in between, on `repo` (a `/v2/<name>` path). Returns the blob's digest.
fn chunked_upload_with_bad_chunks(proxy: &Portcullis, repo: &str) -> String {
    let (one, two): (&[u8], &[u8]) = (b"first", b"-and-second");
    let digest = crate::harness::image::sha256_digest(&[one, two].concat());
    let octets = ("Content-Type", "application/octet-stream");
    let started = call(proxy, "POST", &format!("{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(started.status, 202, "{}", started.text());
    let first = started.header("Location").expect("Location").to_owned();
    assert!(
        !first.contains("_state"),
        "upstream state reached the client: {first}"
    );

    let second_range = format!("{}-{}", one.len(), one.len() + two.len() - 1);
    let early = call(
        proxy,
        "PATCH",
        &first,
        &[octets, ("Content-Range", &second_range)],
        two,
    );
    assert_eq!(early.status, 416, "an out-of-order chunk: {}", early.text());
    assert_eq!(early.oci_codes(), ["BLOB_UPLOAD_INVALID"]);

    let first_range = format!("0-{}", one.len() - 1);
    let patched = call(
        proxy,
        "PATCH",
        &first,
        &[octets, ("Content-Range", &first_range)],
        one,
    );
    assert_eq!(patched.status, 202, "{}", patched.text());
    assert_eq!(patched.header("Range"), Some(first_range.as_str()));
    assert!(!patched.header("Location").unwrap_or("").contains("_state"));

    // The client retries the first chunk on the location it had before.
    let retried = call(
        proxy,
        "PATCH",
        &first,
        &[octets, ("Content-Range", &first_range)],
        one,
    );
    assert_eq!(retried.status, 416, "a retried chunk: {}", retried.text());

    let status = call(proxy, "GET", &first, &[], b"");
    assert_eq!(
        status.status,
        204,
        "GET on the older location: {}",
        status.text()
    );
    assert_eq!(status.header("Range"), Some(first_range.as_str()));
    assert!(
        status.header("Docker-Upload-UUID").is_some(),
        "{:?}",
        status.headers
    );
    let latest = status.header("Location").expect("Location").to_owned();
    assert!(!latest.contains("_state"), "{latest}");

    let rest = call(
        proxy,
        "PATCH",
        &latest,
        &[octets, ("Content-Range", &second_range)],
        two,
    );
    assert_eq!(rest.status, 202, "{}", rest.text());
    let all = format!("0-{}", one.len() + two.len() - 1);
    assert_eq!(rest.header("Range"), Some(all.as_str()));
    let location = rest.header("Location").expect("Location");
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = call(
        proxy,
        "PUT",
        &format!("{location}{sep}digest={digest}"),
        &[],
        b"",
    );
    assert_eq!(done.status, 201, "{}", done.text());
    digest
}

#[test]
fn forwarded_uploads_refuse_out_of_order_and_retried_chunks_and_never_hand_out_upstream_state() {
    let corp = Registry::start(Auth::None);
    let proxy = proxy_for(&corp);
    let digest = chunked_upload_with_bad_chunks(&proxy, REPO);
    assert!(corp.has_blob(&digest), "the blob is whole upstream");
    let patches = corp
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH "))
        .count();
    assert_eq!(
        patches,
        2,
        "only the two good chunks went upstream: {:?}",
        corp.requests()
    );
    // The same flow by short name, resolved by the search list.
    let digest = chunked_upload_with_bad_chunks(&proxy, "/v2/team/other");
    assert!(corp.has_blob(&digest));

    // An id portcullis never gave out, or an upstream session, is unknown.
    let upload = "/v2/corp.example.com/team/app/blobs/uploads";
    for session in [
        "pcu-00000000000000000000000000000000",
        "0f6c2d2e-3b1c-4b7a-9a1e-2f5d6c7b8a90?_state=x",
    ] {
        let answer = call(&proxy, "PATCH", &format!("{upload}/{session}"), &[], b"x");
        assert_eq!(answer.status, 404, "{session}: {}", answer.text());
        assert_eq!(answer.oci_codes(), ["BLOB_UPLOAD_UNKNOWN"], "{session}");
    }
}

#[test]
fn staged_uploads_refuse_out_of_order_and_retried_chunks_as_forwarded_ones_do() {
    let hub = Registry::start(Auth::None);
    let dir = crate::harness::tempdir::TestDir::new("conformance-staged");
    // A content rule on docker.io makes every push there staged by portcullis.
    let policy = dir.write(
        "private.toml",
        "public_registries = [\"docker.io\"]\n\n[[private]]\nid = \"internal\"\n\
         message = \"internal\"\naction = \"reject\"\n\
         labels = [\"com.example.classification=internal\"]\n",
    );
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .registry(Upstream::new("docker.io", &hub))
            .policy_path(policy)
            .toml(),
    );
    chunked_upload_with_bad_chunks(&proxy, "/v2/docker.io/team/app");
    let uploads: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains("/blobs/uploads"))
        .collect();
    assert!(
        uploads.is_empty(),
        "a staged blob waits for its manifest: {uploads:?}"
    );
}
