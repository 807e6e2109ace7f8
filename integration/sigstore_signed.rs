//! `sigstoreSigned` at the proxy. Debian's containers/image has sigstore disabled, so the
//! verdicts of this table are containers-policy.json(5)'s, written down per case; what keeps
//! a misreading of cosign's format from passing on both sides is a second, independent
//! verifier: the `sigstore` crate (sigstore-rs, cosign's Rust port) reads the same `.sig`
//! attachments from the same registry and must agree, case by case, on whether a trusted key
//! signed a payload for the pulled digest.
//!
//! The signatures are made here as cosign makes them: an ECDSA P-256 key, a payload of the
//! simple-signing shape, a `sha256-<hex>.sig` manifest whose layers are the payloads, each
//! annotated with the base64 DER signature. They are pushed into a real registry.

use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};

use crate::harness::image::sha256_digest;
use crate::harness::process::describe;
use crate::harness::rt::block_on;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const HOST: &str = "registry.example.com";
const ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A P-256 key from a seed: distinct keys, no RNG needed.
fn key(seed: u8) -> SigningKey {
    let mut bytes = [0x5au8; 32];
    bytes[31] = seed;
    SigningKey::from_bytes(&bytes.into()).expect("a P-256 scalar")
}

fn public_pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("PEM public key")
}

/// One signature of a `.sig` attachment, and what is wrong with it, if anything.
struct Sig<'a> {
    key: &'a SigningKey,
    /// `critical.identity.docker-reference`.
    identity: String,
    /// `critical.image.docker-manifest-digest`.
    signs: String,
    tamper: Tamper,
}

#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    None,
    /// The payload stored is not the one signed (one space added).
    Payload,
    /// One bit of the DER signature flipped.
    Signature,
}

fn payload(identity: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{identity}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// The registry's v2 API, with the test CA.
struct Push<'a> {
    registry: &'a Registry,
}

impl Push<'_> {
    /// A monolithic upload: POST for a session, PUT of the bytes with their digest.
    fn blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let client = || http::https(&self.registry.ca_file());
        let start = format!("{}/v2/{repository}/blobs/uploads/", self.registry.url());
        let session = client()
            .request("POST", &start, Vec::new())
            .expect("upload session");
        assert_eq!(session.status, 202, "{start}: {}", session.text());
        let location = session.header("location").expect("a Location");
        let at = if location.starts_with('/') {
            format!("{}{location}", self.registry.url())
        } else {
            location.to_owned()
        };
        let sep = if at.contains('?') { '&' } else { '?' };
        let url = format!("{at}{sep}digest={digest}");
        let answer = client()
            .header("Content-Type", "application/octet-stream")
            .request("PUT", &url, bytes.to_vec())
            .expect("blob upload");
        assert_eq!(answer.status, 201, "{url}: {}", answer.text());
        digest
    }

    fn manifest(&self, repository: &str, tag: &str, media_type: &str, bytes: &[u8]) {
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.registry.url());
        let answer = http::https(&self.registry.ca_file())
            .header("Content-Type", media_type)
            .request("PUT", &url, bytes.to_vec())
            .expect("manifest push");
        assert_eq!(answer.status, 201, "{url}: {}", answer.text());
    }

    /// The `.sig` manifest cosign pushes for `digest` in `repository`.
    fn attach(&self, repository: &str, digest: &str, sigs: &[Sig]) {
        let config = self.blob(repository, b"{}");
        let layers: Vec<serde_json::Value> = sigs
            .iter()
            .map(|s| {
                let signed = payload(&s.identity, &s.signs);
                let signature: Signature = s.key.sign(&signed);
                let mut der = signature.to_der().as_bytes().to_vec();
                let mut stored = signed.clone();
                match s.tamper {
                    Tamper::None => {}
                    Tamper::Payload => {
                        // The same JSON, other bytes: only the signature can tell.
                        let text = String::from_utf8(stored).expect("UTF-8 payload");
                        stored = text
                            .replace(r#""optional":null"#, r#""optional": null"#)
                            .into_bytes();
                    }
                    Tamper::Signature => {
                        let last = der.len() - 1;
                        der[last] ^= 0x01;
                    }
                }
                let layer = self.blob(repository, &stored);
                serde_json::json!({
                    "mediaType": PAYLOAD_TYPE,
                    "digest": layer,
                    "size": stored.len(),
                    "annotations": {
                        ANNOTATION: base64::engine::general_purpose::STANDARD.encode(der),
                    },
                })
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": layers,
        });
        let tag = format!("{}.sig", digest.replacen(':', "-", 1));
        self.manifest(
            repository,
            &tag,
            OCI_MANIFEST,
            manifest.to_string().as_bytes(),
        );
    }
}

/// One row: under `policy`, `registry.example.com/<image>` is pulled through portcullis.
struct Case {
    policy: &'static str,
    image: String,
    accepted: bool,
    /// What an independent cosign verifier must say: whether a key of the policy signed a
    /// payload for this digest. `None` where no signature decides (reject, accept anything).
    signed: Option<bool>,
}

/// sigstore-rs's verdict: the `.sig` layers it trusts for `image` (at the registry's real
/// address) include one that one of `keys` signed.
fn sigstore_rs_says(registry: &Registry, image: &str, keys: &[String]) -> bool {
    use ::sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraint};
    use ::sigstore::cosign::{ClientBuilder, CosignCapabilities as _};
    use ::sigstore::registry::{
        Auth, Certificate, CertificateEncoding, ClientConfig, ClientProtocol, OciReference,
    };

    let config = ClientConfig {
        protocol: ClientProtocol::Https,
        extra_root_certificates: vec![Certificate {
            encoding: CertificateEncoding::Pem,
            data: std::fs::read(registry.ca_file()).expect("registry CA"),
        }],
        ..ClientConfig::default()
    };
    let reference: OciReference = format!("{}/{image}", registry.host())
        .parse()
        .expect("an OCI reference");
    block_on(async {
        let mut client = ClientBuilder::default()
            .with_oci_client_config(config)
            .build()
            .expect("sigstore client");
        let layers = match client
            .trusted_signature_layers(&Auth::Anonymous, &reference)
            .await
        {
            Ok(layers) => layers,
            Err(_) => return false,
        };
        keys.iter().any(|pem| {
            let verifier = PublicKeyVerifier::try_from(pem.as_bytes()).expect("a PEM key");
            layers
                .iter()
                .any(|layer| verifier.verify(layer).unwrap_or(false))
        })
    })
}

#[test]
fn sigstore_signed_verdicts_follow_containers_policy_and_agree_with_sigstore_rs() {
    let dir = TestDir::new("sigstore");
    let (trusted, other) = (key(1), key(2));
    let trusted_pem = public_pem(&trusted);
    let other_pem = public_pem(&other);
    let trusted_file = dir.write("trusted.pub", &trusted_pem);
    let other_file = dir.write("other.pub", &other_pem);

    let registry = Registry::start(Auth::None);
    let push = Push {
        registry: &registry,
    };
    let mut digests = std::collections::HashMap::new();
    for (i, repo) in [
        "team/signed",
        "team/unsigned",
        "team/other",
        "team/wrongid",
        "team/tampered",
        "team/badsig",
        "team/otherdigest",
        "team/two",
        "team/cosign",
        "ops/tool",
    ]
    .iter()
    .enumerate()
    {
        let image = OciImage::random(&[2048 + i as u64]);
        registry.seed(&image, &format!("{repo}:1"));
        digests.insert(repo.to_string(), sha256_digest(&image.manifest_bytes()));
    }
    // A two-platform index, signed at the index only.
    let (amd64, arm64) = (OciImage::random(&[4000]), OciImage::random(&[4001]));
    registry.seed(&amd64, "team/index:amd64");
    registry.seed(&arm64, "team/index:arm64");
    let member = |image: &OciImage, arch: &str| {
        let bytes = image.manifest_bytes();
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": sha256_digest(&bytes),
            "size": bytes.len(),
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [member(&amd64, "amd64"), member(&arm64, "arm64")],
    })
    .to_string();
    push.manifest("team/index", "1", OCI_INDEX, index.as_bytes());
    digests.insert("team/index".into(), sha256_digest(index.as_bytes()));
    let amd64_digest = sha256_digest(&amd64.manifest_bytes());

    let good = |repo: &str| Sig {
        key: &trusted,
        identity: format!("{HOST}/{repo}:1"),
        signs: digests[repo].clone(),
        tamper: Tamper::None,
    };
    let attach = |repo: &str, sigs: &[Sig]| push.attach(repo, &digests[repo], sigs);
    attach("team/signed", &[good("team/signed")]);
    attach(
        "team/other",
        &[Sig {
            key: &other,
            ..good("team/other")
        }],
    );
    attach(
        "team/wrongid",
        &[Sig {
            identity: format!("{HOST}/team/elsewhere:1"),
            ..good("team/wrongid")
        }],
    );
    attach(
        "team/tampered",
        &[Sig {
            tamper: Tamper::Payload,
            ..good("team/tampered")
        }],
    );
    attach(
        "team/badsig",
        &[Sig {
            tamper: Tamper::Signature,
            ..good("team/badsig")
        }],
    );
    attach(
        "team/otherdigest",
        &[Sig {
            signs: digests["team/signed"].clone(),
            ..good("team/otherdigest")
        }],
    );
    attach(
        "team/two",
        &[
            Sig {
                key: &other,
                ..good("team/two")
            },
            good("team/two"),
        ],
    );
    // As `cosign sign` writes it: the repository, no tag.
    attach(
        "team/cosign",
        &[Sig {
            identity: format!("{HOST}/team/cosign"),
            ..good("team/cosign")
        }],
    );
    attach("team/index", &[good("team/index")]);
    attach("ops/tool", &[good("ops/tool")]);

    let path = |p: &Path| p.display().to_string();
    let by = |key: &Path, extra: &str| {
        format!(
            r#"{{"type":"sigstoreSigned","keyPath":"{}"{extra}}}"#,
            path(key)
        )
    };
    let trusted_req = by(&trusted_file, "");
    let reject = r#"{"type":"reject"}"#;
    let anything = r#"{"type":"insecureAcceptAnything"}"#;
    let scopes = |default: &str, scopes: &[(&str, String)]| {
        let body: Vec<String> = scopes
            .iter()
            .map(|(s, reqs)| format!(r#""{s}":[{reqs}]"#))
            .collect();
        format!(
            r#"{{"default":[{default}],"transports":{{"docker":{{{}}}}}}}"#,
            body.join(",")
        )
    };
    let key_data = base64::engine::general_purpose::STANDARD.encode(&trusted_pem);
    let policies: Vec<(&str, String, Vec<String>)> = vec![
        (
            "host",
            scopes(reject, &[(HOST, trusted_req.clone())]),
            vec![trusted_pem.clone()],
        ),
        (
            "keyPaths",
            scopes(
                reject,
                &[(
                    &format!("{HOST}/team"),
                    format!(
                        r#"{{"type":"sigstoreSigned","keyPaths":["{}","{}"]}}"#,
                        path(&other_file),
                        path(&trusted_file)
                    ),
                )],
            ),
            vec![other_pem.clone(), trusted_pem.clone()],
        ),
        (
            "keyData",
            scopes(
                reject,
                &[(
                    HOST,
                    format!(r#"{{"type":"sigstoreSigned","keyData":"{key_data}"}}"#),
                )],
            ),
            vec![trusted_pem.clone()],
        ),
        (
            "matchRepository",
            scopes(
                reject,
                &[(
                    HOST,
                    by(
                        &trusted_file,
                        r#","signedIdentity":{"type":"matchRepository"}"#,
                    ),
                )],
            ),
            vec![trusted_pem.clone()],
        ),
        (
            "namespace",
            scopes(
                reject,
                &[
                    (HOST, anything.to_owned()),
                    (&format!("{HOST}/team"), trusted_req.clone()),
                ],
            ),
            vec![trusted_pem.clone()],
        ),
        (
            "several requirements",
            scopes(
                reject,
                &[
                    (HOST, format!("{trusted_req},{anything}")),
                    (&format!("{HOST}/ops"), format!("{trusted_req},{reject}")),
                ],
            ),
            vec![trusted_pem.clone()],
        ),
        (
            "wildcard",
            scopes(reject, &[("*.example.com", trusted_req.clone())]),
            vec![trusted_pem.clone()],
        ),
    ];
    let at = |repo: &str| format!("{repo}@{}", digests[repo]);
    let case = |policy, image: &str, accepted, signed| Case {
        policy,
        image: image.to_owned(),
        accepted,
        signed,
    };
    let cases = vec![
        // Before the index is pulled: a member by digest on its own needs its own signature.
        case(
            "host",
            &format!("team/index@{amd64_digest}"),
            false,
            Some(false),
        ),
        case("host", "team/signed:1", true, Some(true)),
        case("host", &at("team/signed"), true, Some(true)),
        case("host", "team/unsigned:1", false, Some(false)),
        case("host", "team/other:1", false, Some(false)),
        case("host", "team/wrongid:1", false, Some(true)),
        case("host", "team/tampered:1", false, Some(false)),
        case("host", "team/badsig:1", false, Some(false)),
        case("host", "team/otherdigest:1", false, Some(false)),
        case("host", "team/two:1", true, Some(true)),
        // cosign names the repository only: matchRepoDigestOrExact wants a tag or digest in
        // the signature, by tag and by digest alike (policy_reference_match.go); it takes
        // matchRepository, below.
        case("host", "team/cosign:1", false, Some(true)),
        case("host", &at("team/cosign"), false, Some(true)),
        // Its platform's manifest is then fetched by digest, as part of the verified index.
        case("host", "team/index:1", true, Some(true)),
        case("keyPaths", "team/signed:1", true, Some(true)),
        case("keyPaths", "team/other:1", true, Some(true)),
        case("keyPaths", "team/tampered:1", false, Some(false)),
        case("keyPaths", "ops/tool:1", false, None),
        case("keyData", "team/signed:1", true, Some(true)),
        case("keyData", "team/other:1", false, Some(false)),
        case("matchRepository", "team/cosign:1", true, Some(true)),
        case("matchRepository", "team/wrongid:1", false, Some(true)),
        case("matchRepository", "team/signed:1", true, Some(true)),
        case("namespace", "team/signed:1", true, Some(true)),
        case("namespace", "team/unsigned:1", false, Some(false)),
        case("namespace", "ops/tool:1", true, None),
        case("several requirements", "team/signed:1", true, Some(true)),
        case(
            "several requirements",
            "team/unsigned:1",
            false,
            Some(false),
        ),
        case("several requirements", "ops/tool:1", false, None),
        case("several requirements", &at("team/two"), true, Some(true)),
        case("wildcard", "team/signed:1", true, Some(true)),
        case("wildcard", "team/unsigned:1", false, Some(false)),
    ];

    let registries_d = format!("docker:\n  {HOST}:\n    use-sigstore-attachments: true\n");
    let skopeo = Skopeo::new();
    let mut wrong = Vec::new();
    let (mut counted, mut cross_checked) = (0, 0);
    for (name, policy, keys) in &policies {
        let policies_dir = dir.subdir(&format!("portcullis-{}", name.replace(' ', "-")));
        std::fs::write(policies_dir.join("policy.json"), policy).expect("write policy");
        std::fs::write(policies_dir.join("sigstore.yaml"), &registries_d).expect("write yaml");
        let proxy = Portcullis::start(
            &ProxyConfig::new()
                .registry(Upstream::new(HOST, &registry))
                .policy_path(&policies_dir)
                .toml(),
        );
        let proxy_certs = path(&proxy.cert_dir());
        for c in cases.iter().filter(|c| c.policy == *name) {
            counted += 1;
            let to = TestDir::new("pulled");
            let through = skopeo.run(&[
                "copy",
                "--src-cert-dir",
                &proxy_certs,
                &format!("docker://{}/{HOST}/{}", proxy.addr(), c.image),
                &format!("dir:{}", to.path().display()),
            ]);
            let pulled = through.status.success();
            if pulled != c.accepted {
                wrong.push(format!(
                    "{name} / {}: expected {}, portcullis {pulled}: {}",
                    c.image,
                    c.accepted,
                    describe(&through).lines().last().unwrap_or_default()
                ));
            } else if !pulled {
                let shown = describe(&through);
                assert!(
                    shown.contains("denied") && shown.contains("signature policy scope"),
                    "{name} / {}: {shown}",
                    c.image
                );
            }
            if let Some(signed) = c.signed {
                cross_checked += 1;
                let says = sigstore_rs_says(&registry, &c.image, keys);
                if says != signed {
                    wrong.push(format!(
                        "{name} / {}: the table says signed={signed}, sigstore-rs {says}",
                        c.image
                    ));
                }
                // No accepted image without a signature sigstore-rs trusts.
                if pulled && !says {
                    wrong.push(format!(
                        "{name} / {}: served, but sigstore-rs finds no trusted signature",
                        c.image
                    ));
                }
            }
        }
    }
    assert_eq!(counted, cases.len(), "every case belongs to a policy");
    assert!(
        wrong.is_empty(),
        "{} disagreements over {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    println!(
        "sigstoreSigned corpus: {} cases, all as containers-policy.json(5) says; {cross_checked} cross-checked with sigstore-rs, all agree",
        cases.len()
    );
}
