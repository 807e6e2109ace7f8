//! The respond stage: what the client gets of an upstream answer, checked against its
//! digest, and never a body for `HEAD`.

use super::*;

#[tokio::test]
async fn a_manifest_whose_bytes_are_not_its_digest_is_not_served() {
    let claimed = digest(b"what the client asked for");
    let one = Content::default().lying_manifest("team/app", &claimed, MANIFEST);
    let (one, _two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_11).await;

    let answer = client
        .get(&format!("/v2/one.test/team/app/manifests/{claimed}"))
        .await;

    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let (code, message) = answer.oci_error();
    assert_eq!(code, "DIGEST_INVALID");
    assert!(message.contains(&digest(MANIFEST)), "{message}");
    assert!(!answer
        .body
        .as_deref()
        .unwrap_or_default()
        .starts_with(MANIFEST));
    assert_eq!(
        one.asked(),
        vec![(Method::GET, format!("/v2/team/app/manifests/{claimed}"))]
    );
    assert_eq!(
        p.counter(
            "portcullis_body_aborts_total",
            &[("registry", "one.test"), ("reason", "digest_mismatch")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_manifest_by_tag_whose_announced_digest_is_not_its_bytes_is_not_served() {
    // The client pins what it pulled by the digest it is told: a registry (or anything on
    // the way to it) announcing another image's digest must not be relayed.
    let claimed = digest(b"another image");
    let one = Content::default().lying_tag("team/app", "1", &claimed, MANIFEST);
    let (_one, _two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_11).await;

    let answer = client.get("/v2/one.test/team/app/manifests/1").await;

    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let (code, message) = answer.oci_error();
    assert_eq!(code, "DIGEST_INVALID");
    assert!(
        message.contains(&claimed) && message.contains(&digest(MANIFEST)),
        "{message}"
    );
    assert_eq!(
        p.counter(
            "portcullis_body_aborts_total",
            &[("registry", "one.test"), ("reason", "digest_mismatch")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_blob_whose_bytes_are_not_its_digest_is_cut_before_it_completes() {
    let bytes = vec![7u8; 200_000];
    let claimed = digest(b"other content");
    let one = Content::default().blob("team/app", &claimed, &bytes);
    let (_one, _two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;

    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = p.client(version).await;
        let answer = client
            .get(&format!("/v2/one.test/team/app/blobs/{claimed}"))
            .await;
        // The status is sent before the bytes can be checked; the body then fails, and the
        // client never holds a complete-looking blob.
        assert_eq!(answer.status, StatusCode::OK, "{version:?}");
        assert!(answer.body.is_err(), "{version:?}: the body ended well");
        assert!(answer.received < bytes.len(), "{version:?}");
    }
    assert_eq!(
        p.counter(
            "portcullis_body_aborts_total",
            &[("registry", "one.test"), ("reason", "digest_mismatch")]
        ),
        2.0
    );
}

#[tokio::test]
async fn head_answers_have_no_body_over_http1_and_http2() {
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let (one, _two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;

    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = p.client(version).await;
        let found = client.head("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(found.version, version, "the client speaks {version:?}");
        assert_eq!(found.status, StatusCode::OK, "{version:?}");
        assert_eq!(found.body.as_deref().ok(), Some(&b""[..]), "{version:?}");
        assert_eq!(
            found.header("docker-content-digest"),
            Some(digest(MANIFEST).as_str())
        );
        assert_eq!(
            found.header("content-length"),
            Some(MANIFEST.len().to_string().as_str())
        );
        // Neither an upstream's error answer nor one portcullis writes itself (a refusal,
        // which has an OCI body for GET) carries a body for HEAD: over HTTP/2 one would
        // reset the stream instead of delivering the status.
        let missing = client.head("/v2/one.test/team/app/manifests/2").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{version:?}");
        assert_eq!(missing.body.as_deref().ok(), Some(&b""[..]), "{version:?}");
        let refused_get = client.get("/v2/evil.test/team/app/manifests/1").await;
        assert_eq!(refused_get.oci_error().0, "DENIED", "{version:?}");
        let refused = client.head("/v2/evil.test/team/app/manifests/1").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{version:?}");
        assert_eq!(refused.body.as_deref().ok(), Some(&b""[..]), "{version:?}");
    }
    let heads = one
        .asked()
        .iter()
        .filter(|(m, _)| *m == Method::HEAD)
        .count();
    assert_eq!(heads, 4, "{:?}", one.asked());
}
