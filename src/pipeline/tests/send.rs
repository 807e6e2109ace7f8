//! Sending upstream: what of the client's request reaches the registry, and over what.

use super::*;

#[tokio::test]
async fn the_clients_accept_lines_reach_the_upstream_each_unchanged() {
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let (one, _two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_2).await;
    let accepts = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ];
    let mut headers = http::HeaderMap::new();
    for accept in accepts {
        headers.append(http::header::ACCEPT, accept.parse().expect("accept"));
    }

    let answer = client
        .send_with(
            Method::GET,
            "/v2/one.test/team/app/manifests/1",
            &headers,
            b"",
        )
        .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.version, Version::HTTP_2);
    let seen = one.seen();
    let manifest = seen
        .iter()
        .find(|s| s.target == "/v2/team/app/manifests/1")
        .expect("the manifest request reached one.test");
    let got: Vec<&str> = manifest
        .headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(got, accepts);
}

#[tokio::test]
async fn a_tls_upstream_is_used_with_its_configured_ca_and_never_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = || Content::default().manifest("team/app", "1", MANIFEST);
    // Both registries have certificates from the same test CA; only one.test trusts it.
    let one = content().start_tls(dir.path()).await;
    let two = content().start_tls(dir.path()).await;
    let ca = one.ca.clone().expect("one.test's CA");
    let config = format!(
        r#"
[resolve]
search = ["one.test"]
[[registry]]
host = "one.test"
endpoint = "{}"
ca_file = {:?}
[[registry]]
host = "two.test"
endpoint = "{}"
"#,
        one.endpoint(),
        ca.display().to_string(),
        two.endpoint()
    );
    let p = Portcullis::new(&config, ALLOW_ALL);
    let mut client = p.client(Version::HTTP_11).await;

    let trusted = client.get("/v2/one.test/team/app/manifests/1").await;
    assert_eq!(trusted.status, StatusCode::OK);
    assert_eq!(trusted.body.as_deref().ok(), Some(MANIFEST));
    assert_eq!(
        one.asked(),
        vec![(Method::GET, "/v2/team/app/manifests/1".to_owned())]
    );

    let untrusted = client.get("/v2/two.test/team/app/manifests/1").await;
    assert_eq!(untrusted.status, StatusCode::BAD_GATEWAY);
    assert_eq!(untrusted.oci_error().0, "UNAVAILABLE");
    assert!(two.seen().is_empty(), "two.test got {:?}", two.seen());
    assert!(
        p.counter(
            "portcullis_upstream_errors_total",
            &[("registry", "two.test")]
        ) >= 1.0
    );
}
