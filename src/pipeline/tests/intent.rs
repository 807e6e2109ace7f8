//! The intent stage: what a request asks for is read off its path and query before anything
//! is sent anywhere; a request that cannot be read reaches no upstream.

use super::*;

#[tokio::test]
async fn a_malformed_path_is_a_4xx_with_an_oci_code_and_reaches_no_upstream() {
    let (one, two, p) = two_registries(Content::default(), Content::default(), ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_11).await;
    for (path, status, code) in [
        (
            "/v2/one.test/team/app/manifests/%2e",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/one.test/team/app/manifests/sha256:totallywrong",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/one.test/Team/App/manifests/1",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/one.test/team/app/nothing-here",
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
    ] {
        let answer = client.get(path).await;
        assert_eq!(answer.status, status, "{path}");
        assert_eq!(answer.oci_error().0, code, "{path}");
    }
    assert!(one.seen().is_empty(), "one.test got {:?}", one.seen());
    assert!(two.seen().is_empty(), "two.test got {:?}", two.seen());
    assert_eq!(
        p.counter(
            "portcullis_requests_total",
            &[("decision", "error"), ("status", "4xx")]
        ),
        4.0
    );
}

#[tokio::test]
async fn ns_names_the_registry_on_the_mirror_endpoint_and_never_goes_upstream() {
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let (one, two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;
    let mirror = crate::pipeline::Inbound {
        listener: crate::pipeline::MIRROR,
        registry: Some(crate::reference::DOCKER_HUB.into()),
    };
    let mut client = p.client_on(Version::HTTP_11, mirror).await;

    let served = client.get("/v2/team/app/manifests/1?ns=one.test").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(
        served.header("portcullis-resolved-name"),
        Some("one.test/team/app")
    );
    assert_eq!(
        one.asked(),
        vec![(Method::GET, "/v2/team/app/manifests/1".to_owned())]
    );

    let unconfigured = client.get("/v2/team/app/manifests/1?ns=evil.test").await;
    assert_eq!(unconfigured.status, StatusCode::FORBIDDEN);
    assert_eq!(unconfigured.oci_error().0, "DENIED");

    // On the registry endpoint the path names the registry, and an `ns` must agree.
    let mut endpoint = p.client(Version::HTTP_11).await;
    let disagrees = endpoint
        .get("/v2/one.test/team/app/manifests/1?ns=two.test")
        .await;
    assert_eq!(disagrees.status, StatusCode::BAD_REQUEST);
    assert_eq!(one.asked().len(), 1, "{:?}", one.asked());
    assert!(two.seen().is_empty(), "two.test got {:?}", two.seen());
}
