//! Table tests of the decision, after containers/image's policy_eval_test.go,
//! policy_eval_signedby_test.go and policy_eval_sigstore_test.go: a fake verifier stands in
//! for the cryptography, trusting a signature when its key is the requirement's keyPath.

use super::*;
use crate::policy::signature::containers_policy::{parse, PublicKeys, SigstoreKeys};

const MANIFEST: &[u8] = br#"{"schemaVersion":2}"#;

fn manifest_digest() -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(MANIFEST)))
}

#[derive(Debug)]
struct Sig {
    key: &'static str,
    reference: &'static str,
    digest: String,
}

fn sig(key: &'static str, reference: &'static str) -> Sig {
    Sig {
        key,
        reference,
        digest: manifest_digest(),
    }
}

struct Fake;

impl Fake {
    fn verify(&self, trusted: Option<&str>, s: &Sig) -> Result<SignedClaims, String> {
        if trusted != Some(s.key) {
            return Err(format!("signature by key {} is not accepted", s.key));
        }
        Ok(SignedClaims {
            docker_reference: s.reference.to_owned(),
            manifest_digest: s.digest.clone(),
        })
    }
}

impl Verifier for Fake {
    type SimpleSigning = Sig;
    type Sigstore = Sig;

    fn simple_signing(
        &self,
        _: RequirementId<'_>,
        keys: &GpgKeys,
        s: &Sig,
    ) -> Result<SignedClaims, String> {
        let trusted = match keys {
            GpgKeys::Path(p) => Some(p.as_str()),
            _ => None,
        };
        self.verify(trusted, s)
    }

    fn sigstore(
        &self,
        _: RequirementId<'_>,
        req: &SigstoreSigned,
        s: &Sig,
    ) -> Result<SignedClaims, String> {
        let trusted = match &req.keys {
            SigstoreKeys::Keys(PublicKeys::Path(p)) => Some(p.as_str()),
            _ => None,
        };
        self.verify(trusted, s)
    }
}

fn policy(docker_scope_reqs: &str) -> PolicyJson {
    let text = format!(
        r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{"docker.io/library/busybox": {docker_scope_reqs}}}}}}}"#
    );
    match parse("policy.json", &text) {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{text}"),
    }
}

const GPG: &str = r#"{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/trusted"}"#;
const COSIGN: &str = r#"{"type": "sigstoreSigned", "keyPath": "/trusted"}"#;

fn decide(reqs: &str, image: &str, simple: &[Sig], sigstore: &[Sig]) -> Decision {
    let p = policy(reqs);
    let image = ImageRef::parse(image).unwrap();
    let found = Signatures::<Fake> {
        simple_signing: simple,
        sigstore,
    };
    evaluate(&p, &image, MANIFEST, &found, &Fake)
}

/// Requirements, image, simple-signing and sigstore signatures, explanation.
type Case<'a> = (String, &'a str, Vec<Sig>, Vec<Sig>, &'a str);

/// Each case: requirements of the image's scope, the image, the signatures, and the decision
/// as its explanation (Display), which names the scope, the requirement and the reason.
#[test]
fn decisions_follow_containers_image() {
    let other_digest = Sig {
        digest: format!("sha256:{}", "1".repeat(64)),
        ..sig("/trusted", "busybox:latest")
    };
    let sha512 = Sig {
        digest: format!("sha512:{}", hex::encode(Sha512::digest(MANIFEST))),
        ..sig("/trusted", "busybox:latest")
    };
    let bad_digest = Sig {
        digest: "md5:abc".into(),
        ..sig("/trusted", "busybox:latest")
    };
    let by_digest = format!("busybox@{}", manifest_digest());
    let cases: Vec<Case> = vec![
        (r#"[{"type": "insecureAcceptAnything"}]"#.into(), "busybox:latest", vec![], vec![],
         "accepted by scope \"docker.io/library/busybox\": requirement 0 (insecureAcceptAnything)"),
        (r#"[{"type": "reject"}]"#.into(), "busybox:latest", vec![], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (reject): rejected by policy"),
        (format!("[{GPG}]"), "busybox:latest", vec![sig("/trusted", "busybox:latest")], vec![],
         "accepted by scope \"docker.io/library/busybox\": requirement 0 (signedBy) by signature 0"),
        (format!("[{GPG}]"), "busybox:latest", vec![], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): no signature by a trusted key (none found)"),
        // A sigstore signature does not satisfy signedBy.
        (format!("[{GPG}]"), "busybox:latest", vec![], vec![sig("/trusted", "busybox:latest")],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): no signature by a trusted key (none found)"),
        (format!("[{GPG}]"), "busybox:latest", vec![sig("/other", "busybox:latest")], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): no signature by a trusted key (signature by key /other is not accepted)"),
        (format!("[{GPG}]"), "busybox:latest", vec![other_digest], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): signature is for another manifest digest (sha256:1111111111111111111111111111111111111111111111111111111111111111; the manifest is sha256:bafebd36189ad3688b7b3915ea55d461e0bfcfbdde11e54b0a123999fb6be50f)"),
        (format!("[{GPG}]"), "busybox:latest", vec![bad_digest], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): signature is for another manifest digest (invalid digest \"md5:abc\": unsupported digest algorithm (expected sha256 or sha512); the manifest is sha256:bafebd36189ad3688b7b3915ea55d461e0bfcfbdde11e54b0a123999fb6be50f)"),
        // containers/image hashes the manifest with the signature's algorithm.
        (format!("[{GPG}]"), "busybox:latest", vec![sha512], vec![],
         "accepted by scope \"docker.io/library/busybox\": requirement 0 (signedBy) by signature 0"),
        (format!("[{GPG}]"), "busybox:latest", vec![sig("/trusted", "registry.example.com/other:latest")], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): signed identity registry.example.com/other:latest does not match docker.io/library/busybox:latest"),
        (format!("[{GPG}]"), "busybox:latest", vec![sig("/trusted", "busybox:1")], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): signed identity docker.io/library/busybox:1 does not match docker.io/library/busybox:latest"),
        // Pulled by digest, matchRepoDigestOrExact: any tag of the repository.
        (format!("[{GPG}]"), &by_digest, vec![sig("/trusted", "busybox:1")], vec![],
         "accepted by scope \"docker.io/library/busybox\": requirement 0 (signedBy) by signature 0"),
        // One good signature among bad ones is enough.
        (format!("[{GPG}]"), "busybox:latest", vec![sig("/other", "busybox:latest"), sig("/trusted", "busybox:1"), sig("/trusted", "busybox:latest")], vec![],
         "accepted by scope \"docker.io/library/busybox\": requirement 0 (signedBy) by signature 2"),
        (format!("[{GPG}]"), "busybox:latest", vec![sig("/other", "busybox:latest"), sig("/trusted", "busybox:1")], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): none of the signatures was accepted: signature 0: no signature by a trusted key (signature by key /other is not accepted); signature 1: signed identity docker.io/library/busybox:1 does not match docker.io/library/busybox:latest"),
        (format!("[{COSIGN}]"), "busybox:latest", vec![sig("/trusted", "busybox:latest")], vec![sig("/trusted", "busybox:latest")],
         "accepted by scope \"docker.io/library/busybox\": requirement 0 (sigstoreSigned) by signature 0"),
        (format!("[{COSIGN}]"), "busybox:latest", vec![sig("/trusted", "busybox:latest")], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (sigstoreSigned): no signature by a trusted key (none found)"),
        // All requirements must accept; the first refusal decides.
        (format!("[{{\"type\": \"insecureAcceptAnything\"}}, {GPG}]"), "busybox:latest", vec![], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 1 (signedBy): no signature by a trusted key (none found)"),
        (format!("[{GPG}, {{\"type\": \"reject\"}}]"), "busybox:latest", vec![sig("/trusted", "busybox:latest")], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 1 (reject): rejected by policy"),
        (format!("[{GPG}, {COSIGN}]"), "busybox:latest", vec![sig("/trusted", "busybox:latest")], vec![sig("/other", "x:1"), sig("/trusted", "busybox:latest")],
         "accepted by scope \"docker.io/library/busybox\": requirement 0 (signedBy) by signature 0, requirement 1 (sigstoreSigned) by signature 1"),
        (r#"[{"type": "signedBaseLayer", "baseLayerIdentity": {"type": "matchRepository"}}]"#.into(), "busybox:latest", vec![], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBaseLayer): signedBaseLayer not implemented yet!"),
        (r#"[{"type": "signedBy", "keyType": "signedByGPGKeys", "keyPath": "/trusted"}]"#.into(), "busybox:latest", vec![sig("/trusted", "busybox:latest")], vec![],
         "rejected by scope \"docker.io/library/busybox\", requirement 0 (signedBy): Unimplemented \"keyType\" value \"signedByGPGKeys\""),
        // Another image falls to the global default.
        (r#"[{"type": "insecureAcceptAnything"}]"#.into(), "alpine:3", vec![], vec![],
         "rejected by the global default, requirement 0 (reject): rejected by policy"),
    ];
    for (reqs, image, simple, sigstore, want) in cases {
        let d = decide(&reqs, image, &simple, &sigstore);
        assert_eq!(d.to_string(), want, "{reqs} {image}");
        assert_eq!(d.is_accepted(), want.starts_with("accepted"));
    }
}

#[test]
fn reasons_summarise_the_closest_miss() {
    let d = decide(
        &format!("[{GPG}]"),
        "busybox:latest",
        &[
            sig("/other", "busybox:latest"),
            sig("/trusted", "quay.io/x:latest"),
            sig("/x", "y:1"),
        ],
        &[],
    );
    let Decision::Rejected {
        requirement: 0,
        kind: "signedBy",
        reason,
        ..
    } = &d
    else {
        panic!("{d:?}")
    };
    assert_eq!(
        reason.to_string(),
        "signed identity quay.io/x:latest does not match docker.io/library/busybox:latest; 2 other signatures refused"
    );
    assert!(matches!(reason, Reason::NoneAccepted(all) if all.len() == 3));
}

/// containers/image refuses an empty list at parse time and again at evaluation.
#[test]
fn an_empty_requirement_list_rejects() {
    let p = PolicyJson {
        default: Vec::new(),
        docker: Default::default(),
    };
    let image = ImageRef::parse("busybox:latest").unwrap();
    let d = evaluate(
        &p,
        &image,
        MANIFEST,
        &Signatures::<Fake> {
            simple_signing: &[],
            sigstore: &[],
        },
        &Fake,
    );
    assert_eq!(
        d,
        Decision::Rejected {
            scope: GLOBAL_DEFAULT.into(),
            requirement: 0,
            kind: "",
            reason: Reason::NoRequirements
        }
    );
    assert_eq!(
        d.to_string(),
        "rejected by the global default: the scope has no requirements"
    );
    assert_eq!(needs_for(&[]), Needs::default());
}

#[test]
fn only_what_can_change_the_outcome_is_fetched() {
    let none = Needs::default();
    let simple = Needs {
        simple_signing: true,
        sigstore: false,
    };
    let sigstore = Needs {
        simple_signing: false,
        sigstore: true,
    };
    let both = Needs {
        simple_signing: true,
        sigstore: true,
    };
    for (reqs, want) in [
        (r#"[{"type": "insecureAcceptAnything"}]"#.to_owned(), none),
        (r#"[{"type": "reject"}]"#.to_owned(), none),
        (format!("[{GPG}]"), simple),
        (format!("[{COSIGN}]"), sigstore),
        (format!("[{GPG}, {COSIGN}]"), both),
        (format!("[{{\"type\": \"insecureAcceptAnything\"}}, {COSIGN}]"), sigstore),
        // Refused whatever is found: nothing to fetch.
        (format!("[{GPG}, {{\"type\": \"reject\"}}]"), none),
        (format!("[{COSIGN}, {{\"type\": \"signedBaseLayer\", \"baseLayerIdentity\": {{\"type\": \"matchRepository\"}}}}]"), none),
        (r#"[{"type": "signedBy", "keyType": "X509Certificates", "keyPath": "/k"}]"#.to_owned(), none),
    ] {
        let p = policy(&reqs);
        let (scope, got) = needs(&p, &ImageRef::parse("busybox:latest").unwrap());
        assert_eq!((scope, got), ("docker.io/library/busybox", want), "{reqs}");
    }
    let p = policy(&format!("[{GPG}]"));
    assert_eq!(
        needs(&p, &ImageRef::parse("alpine").unwrap()),
        (GLOBAL_DEFAULT, none)
    );
}
