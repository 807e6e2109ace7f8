//! The verdict stage: the policy decides before anything goes upstream; every decision that
//! is not a plain allow is audited and counted.

use super::*;

#[tokio::test]
async fn a_denied_pull_is_403_denied_with_the_rule_audited_once_and_counted() {
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
async fn a_warn_rule_lets_the_pull_through_with_a_warning_299_header() {
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
async fn a_digest_rule_refuses_the_content_when_it_is_pulled_by_tag() {
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
