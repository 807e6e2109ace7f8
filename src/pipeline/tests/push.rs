//! Pushes: refused before any byte reaches the upstream, or forwarded through portcullis's
//! own upload sessions.

use super::*;

#[tokio::test]
async fn an_allowed_upload_goes_through_portcullis_own_session_to_the_latest_upstream_location() {
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
async fn an_upload_the_policy_refuses_is_refused_before_any_byte_reaches_the_upstream() {
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
