//! The whole pipeline in process: each test drives [`super::Proxy::handle`] through hyper
//! (over an in-memory pipe) in front of fake upstream registries that are tokio tasks on
//! 127.0.0.1, and checks what one stage is responsible for by what a client and the
//! upstream can see: status, OCI error code, headers, the requests the upstream received,
//! metrics and audit lines. No subprocess, no sleep.

mod harness;
mod upstream;

use http::{Method, StatusCode, Version};

use harness::Portcullis;
use upstream::{digest, Content, Fake};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

/// Nothing is blocked, on purpose.
const ALLOW_ALL: &str = "mode = \"blocklist\"\n";

/// Two configured registries, searched in order for short names. docker.io, always
/// configured, is pointed at a closed local port so that no mistake leaves the machine.
fn config(one: &Fake, two: &Fake) -> String {
    format!(
        r#"
[resolve]
search = ["one.test", "two.test"]
[[registry]]
host = "docker.io"
endpoint = "http://127.0.0.1:9"
[[registry]]
host = "one.test"
endpoint = "{}"
[[registry]]
host = "two.test"
endpoint = "{}"
"#,
        one.endpoint(),
        two.endpoint()
    )
}

async fn two_registries(one: Content, two: Content, policy: &str) -> (Fake, Fake, Portcullis) {
    let (one, two) = (one.start().await, two.start().await);
    let portcullis = Portcullis::new(&config(&one, &two), policy);
    (one, two, portcullis)
}

#[tokio::test]
async fn intent_a_malformed_path_is_a_4xx_with_an_oci_code_and_reaches_no_upstream() {
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
async fn plan_a_short_name_resolves_across_the_search_registries_in_order() {
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
async fn send_the_clients_accept_lines_reach_the_upstream_each_unchanged() {
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
async fn plan_an_outage_of_a_search_registry_stops_the_search_instead_of_trying_the_next() {
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
async fn send_a_tls_upstream_is_used_with_its_configured_ca_and_never_without_it() {
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

#[tokio::test]
async fn intent_ns_names_the_registry_on_the_mirror_endpoint_and_never_goes_upstream() {
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let (one, two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;
    let mirror = super::Inbound {
        listener: super::MIRROR,
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

#[tokio::test]
async fn plan_a_name_on_an_unconfigured_registry_is_refused_and_nothing_is_contacted() {
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

const DENY_SECRET: &str = r#"
mode = "blocklist"

[[rule]]
id = "no-secret"
message = "team/secret is internal only"
action = "deny"
operations = ["pull"]
registry = "one.test"
repository = "team/secret"

[[rule]]
id = "old-app"
message = "team/old is deprecated, move to team/app"
action = "warn"
operations = ["pull"]
registry = "one.test"
repository = "team/old"
"#;

#[tokio::test]
async fn verdict_a_denied_pull_is_403_denied_with_the_rule_audited_once_and_counted() {
    let one = Content::default().manifest("team/secret", "1", MANIFEST);
    let (one, _two, p) = two_registries(one, Content::default(), DENY_SECRET).await;
    let mut client = p.client(Version::HTTP_11).await;

    let answer = client.get("/v2/one.test/team/secret/manifests/1").await;

    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let (code, message) = answer.oci_error();
    assert_eq!(code, "DENIED");
    assert!(message.contains("no-secret"), "{message}");
    assert!(
        message.contains("team/secret is internal only"),
        "{message}"
    );
    assert!(one.seen().is_empty(), "one.test got {:?}", one.seen());
    let audit = p.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["action"], "deny");
    assert_eq!(audit[0]["rule"], "no-secret");
    assert_eq!(audit[0]["operation"], "pull");
    assert_eq!(audit[0]["reference"], "one.test/team/secret:1");
    assert_eq!(
        p.counter(
            "portcullis_policy_decisions_total",
            &[("action", "deny"), ("rule", "no-secret")]
        ),
        1.0
    );
}

#[tokio::test]
async fn verdict_a_warn_rule_lets_the_pull_through_with_a_warning_299_header() {
    let one = Content::default().manifest("team/old", "1", MANIFEST);
    let (one, _two, p) = two_registries(one, Content::default(), DENY_SECRET).await;
    let mut client = p.client(Version::HTTP_11).await;

    let answer = client.get("/v2/one.test/team/old/manifests/1").await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.as_deref().ok(), Some(MANIFEST));
    let warning = answer.header("warning").unwrap_or_default();
    assert!(warning.starts_with("299 portcullis \""), "{warning}");
    assert!(warning.contains("(rule old-app)"), "{warning}");
    assert_eq!(
        one.asked(),
        vec![(Method::GET, "/v2/team/old/manifests/1".to_owned())]
    );
    let audit = p.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["action"], "warn");
    assert_eq!(audit[0]["rule"], "old-app");
}

#[tokio::test]
async fn outcome_request_metrics_carry_the_registry_that_served_and_the_decision() {
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

#[tokio::test]
async fn respond_a_manifest_whose_bytes_are_not_its_digest_is_not_served() {
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
async fn respond_a_blob_whose_bytes_are_not_its_digest_is_cut_before_it_completes() {
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
async fn respond_head_answers_have_no_body_over_http1_and_http2() {
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let (one, _two, p) = two_registries(one, Content::default(), ALLOW_ALL).await;

    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = p.client(version).await;
        let found = client.head("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(found.version, version);
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
        // An error portcullis writes itself has a body for GET, none for HEAD.
        let missing = client.head("/v2/one.test/team/app/manifests/2").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{version:?}");
        assert_eq!(missing.body.as_deref().ok(), Some(&b""[..]), "{version:?}");
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

#[tokio::test]
async fn push_an_allowed_upload_goes_through_portcullis_own_session_to_the_latest_upstream_location(
) {
    let (one, _two, p) = two_registries(Content::default(), Content::default(), ALLOW_ALL).await;
    let mut client = p.client(Version::HTTP_11).await;
    let layer = vec![3u8; 5000];
    let layer_digest = digest(&layer);

    let started = client
        .send(Method::POST, "/v2/one.test/team/app/blobs/uploads/", b"")
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let session = started.header("location").unwrap_or_default().to_owned();
    // The client is given portcullis's id on its own name, never the upstream's location.
    assert!(
        session.starts_with("/v2/one.test/team/app/blobs/uploads/pcu-"),
        "{session}"
    );
    assert!(
        !session.contains("_state") && !session.contains("u1"),
        "{session}"
    );

    let chunk = client.send(Method::PATCH, &session, &layer).await;
    assert_eq!(chunk.status, StatusCode::ACCEPTED);
    assert_eq!(chunk.header("location"), Some(session.as_str()));
    let done = client
        .send(
            Method::PUT,
            &format!("{session}?digest={layer_digest}"),
            b"",
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED);
    assert_eq!(
        done.header("location"),
        Some(format!("/v2/one.test/team/app/blobs/{layer_digest}").as_str())
    );

    let pushes: Vec<(Method, String, usize)> = one
        .seen()
        .into_iter()
        .filter(|s| s.target != "/v2/")
        .map(|s| (s.method, s.target, s.body_len))
        .collect();
    let upstream_session = "/v2/team/app/blobs/uploads/u1";
    assert_eq!(
        pushes,
        vec![
            (Method::POST, "/v2/team/app/blobs/uploads/".to_owned(), 0),
            (
                Method::PATCH,
                format!("{upstream_session}?_state=post"),
                layer.len()
            ),
            (
                Method::PUT,
                // The client's query is re-encoded after the upstream's (`:` as `%3A`).
                format!(
                    "{upstream_session}?_state=patch5000&digest={}",
                    layer_digest.replace(':', "%3A")
                ),
                0
            ),
        ]
    );
}

const NO_PUSH_TO_ONE: &str = r#"
mode = "blocklist"

[[rule]]
id = "one-is-read-only"
message = "one.test is a read-only mirror"
action = "deny"
operations = ["push"]
registry = "one.test"
"#;

#[tokio::test]
async fn push_an_upload_the_policy_refuses_is_refused_before_any_byte_reaches_the_upstream() {
    let (one, _two, p) =
        two_registries(Content::default(), Content::default(), NO_PUSH_TO_ONE).await;
    let mut client = p.client(Version::HTTP_11).await;
    let layer = vec![1u8; 4096];
    let layer_digest = digest(&layer);
    let session = "/v2/one.test/team/app/blobs/uploads/0f0e0d0c-0b0a-4908-8706-050403020100";

    let attempts = [
        (
            Method::POST,
            "/v2/one.test/team/app/blobs/uploads/".to_owned(),
            Vec::new(),
        ),
        (
            Method::POST,
            format!("/v2/one.test/team/app/blobs/uploads/?digest={layer_digest}"),
            layer.clone(),
        ),
        (Method::PATCH, session.to_owned(), layer.clone()),
        (
            Method::PUT,
            format!("{session}?digest={layer_digest}"),
            layer.clone(),
        ),
        (
            Method::PUT,
            "/v2/one.test/team/app/manifests/1".to_owned(),
            MANIFEST.to_vec(),
        ),
    ];
    for (method, path, body) in attempts {
        let answer = client.send(method.clone(), &path, &body).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path}");
        let (code, message) = answer.oci_error();
        assert_eq!(code, "DENIED", "{method} {path}");
        assert!(message.contains("one-is-read-only"), "{message}");
    }
    let seen = one.seen();
    assert!(seen.is_empty(), "one.test got {seen:?}");
    assert_eq!(seen.iter().map(|s| s.body_len).sum::<usize>(), 0);
    assert_eq!(
        p.counter(
            "portcullis_policy_decisions_total",
            &[("action", "deny"), ("rule", "one-is-read-only")]
        ),
        5.0
    );
}

#[tokio::test]
async fn verdict_a_digest_rule_refuses_the_content_when_it_is_pulled_by_tag() {
    let fine: &[u8] = br#"{"schemaVersion":2,"layers":[]}"#;
    let policy = format!(
        r#"
mode = "blocklist"

[[rule]]
id = "known-bad"
message = "this content is known bad"
action = "deny"
operations = ["pull"]
digest = "{}"
"#,
        digest(MANIFEST)
    );
    let one = Content::default()
        .manifest("team/app", "bad", MANIFEST)
        .manifest("team/app", "fine", fine);
    let (one, _two, p) = two_registries(one, Content::default(), &policy).await;
    let mut client = p.client(Version::HTTP_2).await;

    let got = client.get("/v2/one.test/team/app/manifests/bad").await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    let (code, message) = got.oci_error();
    assert_eq!(code, "DENIED");
    assert!(message.contains("known-bad"), "{message}");
    let head = client.head("/v2/one.test/team/app/manifests/bad").await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);
    assert_eq!(head.body.as_deref().ok(), Some(&b""[..]));
    let other = client.head("/v2/one.test/team/app/manifests/fine").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(
        other.header("docker-content-digest"),
        Some(digest(fine).as_str())
    );

    // The tag says nothing about the content: each answer was fetched whole to be judged.
    let get = |tag: &str| (Method::GET, format!("/v2/team/app/manifests/{tag}"));
    assert_eq!(one.asked(), vec![get("bad"), get("bad"), get("fine")]);
    let audit = p.audit();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit
        .iter()
        .all(|line| line["action"] == "deny" && line["digest"] == digest(MANIFEST).as_str()));
}
