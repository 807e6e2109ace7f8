//! The signature stage: a manifest read under a containers-policy.json is answered only once
//! its signatures, read from the registry (`sha256-<hex>.sig`) or a lookaside store, satisfy
//! the scope that decides for it; anything else is `403 DENIED`, and a store that cannot be
//! read is `503 UNAVAILABLE`.

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};

use super::*;
use crate::policy::signature::verify::{cosign_tag, lookaside_url};
use crate::reference::Digest;

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Another image manifest (another config), for "a different manifest".
const OTHER: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356","size":3},"layers":[]}"#;

const SIGSTORE_REGISTRIES_D: &str = "docker:\n  one.test:\n    use-sigstore-attachments: true\n";

/// Fixed scalars: deterministic keys without an RNG.
fn key(seed: u8) -> SigningKey {
    let mut bytes = [0u8; 32];
    bytes[0] = 0x11;
    bytes[31] = seed;
    SigningKey::from_bytes(&bytes.into()).expect("a P-256 scalar")
}

/// cosign's payload, byte for byte as `cosign sign` writes it.
fn payload(identity: &str, manifest_digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{identity}"}},"image":{{"docker-manifest-digest":"{manifest_digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// The `.sig` manifest cosign pushes: one layer, the payload, annotated with the base64 DER
/// signature over it.
fn sig_manifest(payload_digest: &str, payload_len: usize, signature: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{payload_digest}","size":{payload_len},"annotations":{{"{}":"{signature}"}}}}]}}"#,
        crate::policy::signature::verify::cosign::SIGNATURE_ANNOTATION
    )
    .into_bytes()
}

fn sig_tag(manifest: &[u8]) -> String {
    let d: Digest = digest(manifest).parse().expect("digest");
    cosign_tag(&d)
}

/// How a signature attachment is made, for the rows that get one part wrong.
struct Attach<'a> {
    key: SigningKey,
    identity: &'a str,
    /// The digest the payload claims.
    signs: String,
    /// Serve other bytes than the payload at its digest.
    tampered: bool,
}

impl Attach<'_> {
    fn good(manifest: &[u8]) -> Attach<'static> {
        Attach {
            key: key(1),
            identity: "one.test/team/app",
            signs: digest(manifest),
            tampered: false,
        }
    }

    /// `content` with the `.sig` manifest of `manifest` in `repository`, and its payload.
    fn onto(&self, content: Content, repository: &str, manifest: &[u8]) -> Content {
        let payload = payload(self.identity, &self.signs);
        let signature: Signature = self.key.sign(&payload);
        let b64 = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
        let payload_digest = digest(&payload);
        let mut served = payload.clone();
        if self.tampered {
            // One letter's case: same length, other bytes, still a signed payload's shape.
            served[3] ^= 0x20;
        }
        content
            .manifest(
                repository,
                &sig_tag(manifest),
                &sig_manifest(&payload_digest, payload.len(), &b64),
            )
            .blob(repository, &payload_digest, &served)
    }
}

/// The trusted key's public PEM in a directory the test keeps, and a policy trusting it for
/// `one.test/team` (identity `matchRepository`, as cosign signs the repository), accepting
/// anything in `one.test/open`, rejecting everything else.
fn sigstore_policy(dir: &std::path::Path) -> String {
    let pem = key(1)
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let path = dir.join("cosign.pub");
    std::fs::write(&path, pem).expect("write key");
    format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"one.test/team":[{{"type":"sigstoreSigned","keyPath":{:?},"signedIdentity":{{"type":"matchRepository"}}}}],"one.test/open":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#,
        path.display().to_string()
    )
}

struct Signed {
    one: Fake,
    two: Fake,
    p: Portcullis,
    _keys: tempfile::TempDir,
}

async fn sigstore(one: Content, two: Content) -> Signed {
    let keys = tempfile::tempdir().expect("tempdir");
    let policy_json = sigstore_policy(keys.path());
    let (one, two) = (one.start().await, two.start().await);
    let p = Portcullis::with_files(
        &config(&one, &two),
        ALLOW_ALL,
        &[
            ("policy.json", &policy_json),
            ("sigstore.yaml", SIGSTORE_REGISTRIES_D),
        ],
    );
    Signed {
        one,
        two,
        p,
        _keys: keys,
    }
}

fn denied(answer: &harness::Answer) -> String {
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let (code, message) = answer.oci_error();
    assert_eq!(code, "DENIED", "{message}");
    message
}

fn sig_path(manifest: &[u8]) -> String {
    format!("/v2/team/app/manifests/{}", sig_tag(manifest))
}

#[tokio::test]
async fn a_manifest_signed_by_the_trusted_key_is_served_over_h1_and_h2_and_head_alike() {
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let one = Content::default().manifest("team/app", "1", MANIFEST);
        let one = Attach::good(MANIFEST).onto(one, "team/app", MANIFEST);
        let s = sigstore(one, Content::default()).await;
        let mut client = s.p.client(version).await;

        let got = client.get("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(got.status, StatusCode::OK, "{version:?}: {:?}", got.body);
        assert_eq!(got.body.as_deref().ok(), Some(MANIFEST));
        let head = client.head("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.body.as_deref().ok(), Some(&b""[..]));
        assert_eq!(
            head.header("docker-content-digest"),
            Some(digest(MANIFEST).as_str())
        );
        // The signature is attached by digest: the same content by digest is signed too.
        let by_digest = format!("/v2/one.test/team/app/manifests/{}", digest(MANIFEST));
        let got = client.get(&by_digest).await;
        assert_eq!(got.status, StatusCode::OK);

        let asked = s.one.asked();
        assert!(
            asked.contains(&(Method::GET, sig_path(MANIFEST))),
            "{asked:?}"
        );
        assert_eq!(
            s.p.counter(
                "portcullis_policy_decisions_total",
                &[("action", "allow"), ("rule", "signature:one.test/team")]
            ),
            3.0
        );
    }
}

#[tokio::test]
async fn an_unsigned_or_wrongly_signed_manifest_is_403_with_the_reason() {
    let cases: Vec<(&str, Option<Attach<'static>>, &str)> = vec![
        ("no signature", None, "no signature by a trusted key"),
        (
            "another key",
            Some(Attach {
                key: key(2),
                ..Attach::good(MANIFEST)
            }),
            "no signature by a trusted key",
        ),
        (
            "another digest",
            Some(Attach {
                signs: digest(OTHER),
                ..Attach::good(MANIFEST)
            }),
            "another manifest digest",
        ),
        (
            "another repository",
            Some(Attach {
                identity: "one.test/team/other",
                ..Attach::good(MANIFEST)
            }),
            "does not match",
        ),
    ];
    for (case, attach, reason) in cases {
        let mut one = Content::default().manifest("team/app", "1", MANIFEST);
        if let Some(attach) = &attach {
            one = attach.onto(one, "team/app", MANIFEST);
        }
        let s = sigstore(one, Content::default()).await;
        let mut client = s.p.client(Version::HTTP_11).await;

        let got = client.get("/v2/one.test/team/app/manifests/1").await;
        let message = denied(&got);
        assert!(message.contains(reason), "{case}: {message}");
        assert!(message.contains("one.test/team"), "{case}: {message}");
        assert!(message.contains("sigstoreSigned"), "{case}: {message}");
        // A HEAD is judged on the same bytes: the same refusal, no body.
        let head = client.head("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(head.status, StatusCode::FORBIDDEN, "{case}");
        assert_eq!(head.body.as_deref().ok(), Some(&b""[..]), "{case}");

        let audit = s.p.audit();
        assert!(
            audit.iter().any(|l| l["action"] == "deny"
                && l["rule"] == "signature:one.test/team"
                && l["digest"] == digest(MANIFEST).as_str()),
            "{case}: {audit:?}"
        );
        assert!(
            s.p.counter(
                "portcullis_policy_decisions_total",
                &[("action", "deny"), ("rule", "signature:one.test/team")]
            ) >= 1.0,
            "{case}"
        );
    }
}

#[tokio::test]
async fn a_payload_blob_that_is_not_its_digest_never_lets_the_manifest_through() {
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let attach = Attach {
        tampered: true,
        ..Attach::good(MANIFEST)
    };
    let one = attach.onto(one, "team/app", MANIFEST);
    let s = sigstore(one, Content::default()).await;
    let mut client = s.p.client(Version::HTTP_2).await;

    let got = client.get("/v2/one.test/team/app/manifests/1").await;

    // The payload is checked against its layer digest as it arrives, before any key is
    // tried: a registry serving other bytes is a store that cannot be read, not a verdict.
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    let (code, message) = got.oci_error();
    assert_eq!(code, "UNAVAILABLE", "{message}");
    assert!(message.contains("does not match"), "{message}");
    assert!(message.contains(&digest(MANIFEST)), "{message}");
    let asked = s.one.asked();
    assert!(
        asked.iter().any(|(_, p)| p.contains("/blobs/sha256:")),
        "{asked:?}"
    );
}

#[tokio::test]
async fn a_scope_that_rejects_refuses_without_reading_any_signature() {
    let two = Content::default().manifest("team/app", "1", MANIFEST);
    let two = Attach::good(MANIFEST).onto(two, "team/app", MANIFEST);
    let s = sigstore(Content::default(), two).await;
    let mut client = s.p.client(Version::HTTP_2).await;

    let got = client.get("/v2/two.test/team/app/manifests/1").await;

    let message = denied(&got);
    assert!(message.contains("rejected by policy"), "{message}");
    assert!(message.contains("\"default\""), "{message}");
    assert_eq!(
        s.two.asked(),
        vec![(Method::GET, "/v2/team/app/manifests/1".to_owned())]
    );
    assert!(s.one.seen().is_empty());
}

#[tokio::test]
async fn a_scope_that_accepts_anything_reads_no_signature_and_audits_nothing() {
    let one = Content::default().manifest("open/app", "1", MANIFEST);
    let s = sigstore(one, Content::default()).await;
    let mut client = s.p.client(Version::HTTP_11).await;

    let got = client.get("/v2/one.test/open/app/manifests/1").await;

    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_deref().ok(), Some(MANIFEST));
    assert_eq!(
        s.one.asked(),
        vec![(Method::GET, "/v2/open/app/manifests/1".to_owned())]
    );
    assert!(s.p.audit().is_empty(), "{:?}", s.p.audit());
}

#[tokio::test]
async fn a_manifest_pulled_by_digest_needs_its_own_signature() {
    let one = Content::default().manifest("team/app", "other", OTHER);
    let s = sigstore(one, Content::default()).await;
    let mut client = s.p.client(Version::HTTP_11).await;

    let path = format!("/v2/one.test/team/app/manifests/{}", digest(OTHER));
    let message = denied(&client.get(&path).await);
    assert!(
        message.contains("no signature by a trusted key"),
        "{message}"
    );
    assert_eq!(
        s.one.asked(),
        vec![
            (
                Method::GET,
                format!("/v2/team/app/manifests/{}", digest(OTHER))
            ),
            (Method::GET, sig_path(OTHER)),
        ]
    );
}

#[tokio::test]
async fn a_decision_is_cached_so_the_signature_is_read_once_per_digest() {
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let one = Attach::good(MANIFEST).onto(one, "team/app", MANIFEST);
    let s = sigstore(one, Content::default()).await;
    let mut client = s.p.client(Version::HTTP_11).await;

    for _ in 0..3 {
        let got = client.get("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(got.status, StatusCode::OK);
    }

    let asked = s.one.asked();
    let count = |path: &str| asked.iter().filter(|(_, p)| p == path).count();
    assert_eq!(count("/v2/team/app/manifests/1"), 3, "{asked:?}");
    assert_eq!(count(&sig_path(MANIFEST)), 1, "{asked:?}");
    let blobs = asked.iter().filter(|(_, p)| p.contains("/blobs/")).count();
    assert_eq!(blobs, 1, "{asked:?}");
    let cache = |result| {
        s.p.counter(
            "portcullis_cache_requests_total",
            &[("cache", "signature_verdicts"), ("result", result)],
        )
    };
    assert_eq!((cache("miss"), cache("hit")), (1.0, 2.0));
    let reads = |result| {
        s.p.counter(
            "portcullis_signature_reads_total",
            &[
                ("registry", "one.test"),
                ("store", "attachment"),
                ("result", result),
            ],
        )
    };
    assert_eq!(
        (reads("found"), reads("none"), reads("error")),
        (1.0, 0.0, 0.0)
    );
}

#[tokio::test]
async fn a_signature_store_that_fails_is_503_unavailable_never_200() {
    let one = Content::default()
        .manifest("team/app", "1", MANIFEST)
        .failing(&sig_path(MANIFEST), StatusCode::INTERNAL_SERVER_ERROR);
    let s = sigstore(one, Content::default()).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = s.p.client(version).await;
        let got = client.get("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{version:?}");
        let (code, message) = got.oci_error();
        assert_eq!(code, "UNAVAILABLE", "{message}");
        assert!(message.contains("signature"), "{message}");
        let head = client.head("/v2/one.test/team/app/manifests/1").await;
        assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Nothing was decided, so nothing was cached: each read asked again, and failed.
    assert_eq!(
        s.p.counter(
            "portcullis_signature_reads_total",
            &[
                ("registry", "one.test"),
                ("store", "attachment"),
                ("result", "error"),
            ],
        ),
        4.0
    );
    let asked = s.one.asked();
    let sig_reads = asked
        .iter()
        .filter(|(_, p)| *p == sig_path(MANIFEST))
        .count();
    assert_eq!(sig_reads, 4, "{asked:?}");
}

#[tokio::test]
async fn an_accepted_index_lets_its_manifests_through_by_digest_and_nothing_else() {
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX_TYPE}","manifests":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
        upstream::MANIFEST_TYPE,
        digest(MANIFEST),
        MANIFEST.len()
    )
    .into_bytes();
    let one = Content::default()
        .manifest_typed("team/app", "multi", INDEX_TYPE, &index)
        .manifest("team/app", "child", MANIFEST)
        .manifest("team/app", "other", OTHER)
        .manifest("team/elsewhere", "child", MANIFEST);
    let one = Attach::good(&index).onto(one, "team/app", &index);
    let s = sigstore(one, Content::default()).await;
    let mut client = s.p.client(Version::HTTP_2).await;

    let got = client.get("/v2/one.test/team/app/manifests/multi").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body.as_deref().ok(), Some(&index[..]));
    let child = format!("/v2/one.test/team/app/manifests/{}", digest(MANIFEST));
    let got = client.get(&child).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body.as_deref().ok(), Some(MANIFEST));
    let other = format!("/v2/one.test/team/app/manifests/{}", digest(OTHER));
    let message = denied(&client.get(&other).await);
    assert!(
        message.contains("no signature by a trusted key"),
        "{message}"
    );
    // The index vouches for its children in its own repository only.
    let elsewhere = format!("/v2/one.test/team/elsewhere/manifests/{}", digest(MANIFEST));
    let message = denied(&client.get(&elsewhere).await);
    assert!(
        message.contains("no signature by a trusted key"),
        "{message}"
    );
    // The listed child was not looked up for a signature of its own; the stranger was.
    let asked = s.one.asked();
    assert!(
        !asked.contains(&(Method::GET, sig_path(MANIFEST))),
        "{asked:?}"
    );
    assert!(asked.contains(&(Method::GET, sig_path(OTHER))), "{asked:?}");
}

// Lookaside (signedBy): the committed skopeo standalone-sign fixtures, which sign
// testdata/manifest.json (= MANIFEST) as docker.io/library/busybox:latest.

const TESTDATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/policy/signature/verify/testdata"
);

/// docker.io pointed at the fake (the fixture's registry), nothing else reachable.
fn hub_config(hub: &Fake) -> String {
    format!(
        "[[registry]]\nhost = \"docker.io\"\nendpoint = \"{}\"\n",
        hub.endpoint()
    )
}

/// A lookaside store in `dir` holding `signature` (if any) for MANIFEST in library/busybox,
/// and a policy requiring a signature by `key` (a fixture file) for docker.io.
async fn lookaside(signature: Option<&str>, key: &str) -> (Fake, Portcullis, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = url::Url::from_directory_path(dir.path())
        .expect("url")
        .to_string();
    if let Some(signature) = signature {
        let d: Digest = digest(MANIFEST).parse().expect("digest");
        let at = lookaside_url(&store, "library/busybox", &d, 0)
            .expect("lookaside url")
            .to_file_path()
            .expect("a path");
        std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
        std::fs::copy(format!("{TESTDATA}/{signature}"), &at).expect("copy the signature");
    }
    let policy_json = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"docker.io":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{TESTDATA}/{key}"}}]}}}}}}"#
    );
    let registries_d = format!("docker:\n  docker.io:\n    lookaside: {store}\n");
    let hub = Content::default()
        .manifest("library/busybox", "latest", MANIFEST)
        .start()
        .await;
    let p = Portcullis::with_files(
        &hub_config(&hub),
        ALLOW_ALL,
        &[
            ("policy.json", &policy_json),
            ("lookaside.yaml", &registries_d),
        ],
    );
    (hub, p, dir)
}

#[tokio::test]
async fn a_lookaside_signature_by_the_trusted_gpg_key_is_accepted() {
    let (hub, p, _dir) = lookaside(Some("trusted.sig"), "trusted.gpg").await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = p.client(version).await;
        let got = client
            .get("/v2/docker.io/library/busybox/manifests/latest")
            .await;
        assert_eq!(got.status, StatusCode::OK, "{version:?}: {:?}", got.body);
        assert_eq!(got.body.as_deref().ok(), Some(MANIFEST));
    }
    // Signatures came from the store, not the registry.
    let asked = hub.asked();
    assert!(asked.iter().all(|(_, p)| !p.ends_with(".sig")), "{asked:?}");
    assert_eq!(
        p.counter(
            "portcullis_policy_decisions_total",
            &[("action", "allow"), ("rule", "signature:docker.io")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_lookaside_signature_by_another_key_or_none_is_403() {
    for (signature, reason) in [
        (Some("other.sig"), "no signature by a trusted key"),
        (None, "no signature by a trusted key (none found)"),
    ] {
        let (_hub, p, _dir) = lookaside(signature, "trusted.gpg").await;
        let mut client = p.client(Version::HTTP_11).await;
        let got = client
            .get("/v2/docker.io/library/busybox/manifests/latest")
            .await;
        let message = denied(&got);
        assert!(message.contains(reason), "{signature:?}: {message}");
        assert!(message.contains("signedBy"), "{signature:?}: {message}");
    }
    // The same signature verifies once its key is the trusted one.
    let (_hub, p, _dir) = lookaside(Some("other.sig"), "other.gpg").await;
    let got = p
        .client(Version::HTTP_11)
        .await
        .get("/v2/docker.io/library/busybox/manifests/latest")
        .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
}

#[tokio::test]
async fn without_use_sigstore_attachments_no_attachment_is_read_as_containers_image() {
    let keys = tempfile::tempdir().expect("tempdir");
    let policy_json = sigstore_policy(keys.path());
    let one = Content::default().manifest("team/app", "1", MANIFEST);
    let one = Attach::good(MANIFEST).onto(one, "team/app", MANIFEST);
    let (one, two) = (one.start().await, Content::default().start().await);
    let p = Portcullis::with_files(
        &config(&one, &two),
        ALLOW_ALL,
        &[("policy.json", &policy_json)],
    );
    let mut client = p.client(Version::HTTP_11).await;

    let got = client.get("/v2/one.test/team/app/manifests/1").await;

    let message = denied(&got);
    assert!(message.contains("none found"), "{message}");
    assert_eq!(
        one.asked(),
        vec![(Method::GET, "/v2/team/app/manifests/1".to_owned())],
        "a signature was read although registries.d does not say to use attachments"
    );
}

/// An image manifest with one layer, `layer`, and the `{}` config.
fn layered(layer: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        digest(b"{}"),
        digest(layer),
        layer.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_blob_is_read_only_as_part_of_an_accepted_image_of_its_repository() {
    let (signed_layer, unsigned_layer) = (&b"signed layer"[..], &b"unsigned layer"[..]);
    let (signed, unsigned) = (layered(signed_layer), layered(unsigned_layer));
    let mut one = Content::default()
        .manifest("team/app", "1", &signed)
        .manifest("team/unsigned", "1", &unsigned);
    for repo in ["team/app", "team/unsigned", "team/other", "open/app"] {
        one = one
            .blob(repo, &digest(signed_layer), signed_layer)
            .blob(repo, &digest(unsigned_layer), unsigned_layer)
            .blob(repo, &digest(b"{}"), b"{}");
    }
    let one = Attach::good(&signed).onto(one, "team/app", &signed);
    let s = sigstore(one, Content::default()).await;
    let blob = |repo: &str, layer: &[u8]| format!("/v2/one.test/{repo}/blobs/{}", digest(layer));
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = s.p.client(version).await;
        // Unsigned: its manifest is refused, and its layer by digest is too.
        let _ = client.get("/v2/one.test/team/unsigned/manifests/1").await;
        let got = client.get(&blob("team/unsigned", unsigned_layer)).await;
        let message = denied(&got);
        assert!(
            message.contains("not part of an image accepted"),
            "{message}"
        );
        assert!(message.contains("one.test/team"), "{message}");
        // A HEAD tells no content, and every push starts with one.
        let head = client.head(&blob("team/unsigned", unsigned_layer)).await;
        assert_eq!(head.status, StatusCode::OK, "{version:?}");
        // Where anything is accepted, blobs are read as ever.
        let open = client.get(&blob("open/app", unsigned_layer)).await;
        assert_eq!(open.body.as_deref().ok(), Some(unsigned_layer));
    }
    let upstream_blob =
        |repo: &str, layer: &[u8]| (Method::GET, format!("/v2/{repo}/blobs/{}", digest(layer)));
    assert!(!s
        .one
        .asked()
        .contains(&upstream_blob("team/unsigned", unsigned_layer)));

    let mut client = s.p.client(Version::HTTP_2).await;
    // The signed image's layer, before its manifest: not yet.
    denied(&client.get(&blob("team/app", signed_layer)).await);
    let got = client.get("/v2/one.test/team/app/manifests/1").await;
    assert_eq!(got.status, StatusCode::OK);
    for layer in [signed_layer, &b"{}"[..]] {
        let got = client.get(&blob("team/app", layer)).await;
        assert_eq!(got.body.as_deref().ok(), Some(layer));
    }
    // The same layer through another repository is that repository's business.
    denied(&client.get(&blob("team/other", signed_layer)).await);
    let audit = s.p.audit();
    assert!(
        audit.iter().any(|l| l["action"] == "deny"
            && l["rule"] == "signature:one.test/team"
            && l["digest"] == digest(signed_layer).as_str()),
        "{audit:?}"
    );
}
