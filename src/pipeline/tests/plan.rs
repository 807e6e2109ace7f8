//! The plan stage: which registry serves a name, and which are never contacted.

use super::*;

#[tokio::test]
async fn a_short_name_resolves_across_the_search_registries_in_order() {
    let two_has_it = Content::default().manifest("team/app", "1", MANIFEST);
    let (one, two, p) = two_registries(Content::default(), two_has_it, ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_11).await;

    let answer = client.get("/v2/team/app/manifests/1").await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("portcullis-resolved-name"),
        Some("two.test/team/app")
    );
    assert_eq!(
        answer.header("docker-content-digest"),
        Some(digest(MANIFEST).as_str())
    );
    assert_eq!(answer.body.as_deref().ok(), Some(MANIFEST));
    // one.test was asked first and said 404; only then was two.test asked.
    let asked = vec![(Method::GET, "/v2/team/app/manifests/1".to_owned())];
    assert_eq!(one.asked(), asked);
    assert_eq!(two.asked(), asked);
    assert_eq!(
        p.counter(
            "portcullis_short_name_resolutions_total",
            &[("registry", "two.test")]
        ),
        1.0
    );
}

#[tokio::test]
async fn an_outage_of_a_search_registry_stops_the_search_instead_of_trying_the_next() {
    let path = "/v2/team/app/manifests/1";
    let one = Content::default().failing(path, StatusCode::SERVICE_UNAVAILABLE);
    let two = Content::default().manifest("team/app", "1", MANIFEST);
    let (one, two, p) = two_registries(one, two, ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_11).await;

    let answer = client.get(path).await;

    // Serving two.test's image while one.test is down would silently swap images.
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.oci_error().0, "UNAVAILABLE");
    assert_eq!(one.asked(), vec![(Method::GET, path.to_owned())]);
    assert!(two.seen().is_empty(), "two.test got {:?}", two.seen());
}

#[tokio::test]
async fn a_name_on_an_unconfigured_registry_is_refused_and_nothing_is_contacted() {
    let (one, two, p) = two_registries(Content::default(), Content::default(), ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_11).await;

    let answer = client.get("/v2/evil.test/team/app/manifests/1").await;

    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let (code, message) = answer.oci_error();
    assert_eq!(code, "DENIED");
    assert!(message.contains("evil.test"), "{message}");
    assert!(one.seen().is_empty() && two.seen().is_empty());
    assert_eq!(
        p.counter(
            "portcullis_requests_total",
            &[("registry", "other"), ("decision", "deny")]
        ),
        1.0
    );
}
