//! The outcome stage: the request metrics name the registry that served and the decision.

use super::*;

#[tokio::test]
async fn request_metrics_carry_the_registry_that_served_and_the_decision() {
    let two = Content::default().manifest("team/app", "1", MANIFEST);
    let one = Content::default().manifest("team/secret", "1", MANIFEST);
    let (_one, _two, p) = two_registries(one, two, DENY_SECRET).await;
    let mut client = p.client(Version::HTTP_11).await;

    // A short name: named no registry, served by the second search registry.
    let served = client.get("/v2/team/app/manifests/1").await;
    assert_eq!(served.status, StatusCode::OK);
    let denied = client.get("/v2/one.test/team/secret/manifests/1").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    let requests = |labels: &[(&str, &str)]| p.counter("portcullis_requests_total", labels);
    assert_eq!(
        requests(&[
            ("operation", "pull"),
            ("registry", "two.test"),
            ("decision", "allow"),
            ("status", "2xx")
        ]),
        1.0
    );
    assert_eq!(
        requests(&[("registry", "one.test"), ("decision", "allow")]),
        0.0,
        "one.test answered 404 on the way but did not serve"
    );
    assert_eq!(
        requests(&[
            ("operation", "pull"),
            ("registry", "one.test"),
            ("decision", "deny"),
            ("status", "4xx")
        ]),
        1.0
    );
    assert_eq!(requests(&[]), 2.0);
    // The downloaded bytes are counted when the body has ended, on the serving registry.
    assert_eq!(
        p.counter(
            "portcullis_bytes_total",
            &[("direction", "download"), ("registry", "two.test")]
        ),
        MANIFEST.len() as f64
    );
}
