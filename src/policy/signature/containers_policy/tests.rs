use super::*;

fn ok(text: &str) -> PolicyJson {
    match parse("policy.json", text) {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{text}"),
    }
}

fn reject_to_req(policy: &PolicyJson, image: &str) -> &'static str {
    let image = ImageRef::parse(image).unwrap();
    let (scope, _) = requirements_for(policy, &image);
    Box::leak(scope.to_owned().into_boxed_str())
}

const ID_REPO: SignedIdentity = SignedIdentity::MatchRepoDigestOrExact;

// Modelled on containers/image signature/fixtures/policy.json (every requirement and
// identity kind it uses, wildcard scopes and a port).
const FULL: &str = r#"{
    "default": [{"type": "reject"}],
    "transports": {
        "dir": {"": [{"type": "insecureAcceptAnything"}]},
        "docker": {
            "example.com/playground": [{"type": "insecureAcceptAnything"}],
            "example.com/production": [
                {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/keys/employee-gpg-keyring"}
            ],
            "example.com/hardened": [
                {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "signedIdentity": {"type": "matchRepository"}},
                {"type": "signedBy", "keyType": "signedByGPGKeys", "keyPath": "/k2", "signedIdentity": {"type": "matchExact"}},
                {"type": "signedBaseLayer", "baseLayerIdentity": {"type": "exactRepository", "dockerRepository": "registry.access.redhat.com/rhel7/rhel"}}
            ],
            "registry.redhat.io/beta": [
                {"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["/a", "/b"]}
            ],
            "private-mirror:5000/vendor-mirror": [
                {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/v",
                 "signedIdentity": {"type": "remapIdentity", "prefix": "private-mirror:5000/vendor-mirror", "signedPrefix": "vendor.example.com"}}
            ],
            "bogus/key-data-example": [
                {"type": "signedBy", "keyType": "GPGKeys", "keyData": "bm9uc2Vuc2U="}
            ],
            "example.com/sigstore/key-data-example": [
                {"type": "sigstoreSigned", "keyData": "bm9uc2Vuc2U="}
            ],
            "example.com/sigstore/fulcio": [
                {"type": "sigstoreSigned", "fulcio": {"caPath": "/ca", "oidcIssuer": "https://o", "subjectEmail": "a@b"},
                 "rekorPublicKeyPath": "/rekor", "signedIdentity": {"type": "exactReference", "dockerReference": "busybox:1"}}
            ]
        }
    }
}"#;

#[test]
fn full_policy_parses_into_typed_requirements() {
    let text = FULL.replace("bogus/key-data-example", "docker.io/library/kd");
    let p = ok(&text);
    assert_eq!(p.default, [Requirement::Reject]);
    assert_eq!(p.docker.len(), 8);
    assert_eq!(
        p.docker["example.com/production"],
        [Requirement::SignedBy {
            key_type: KeyType::GpgKeys,
            keys: GpgKeys::Path("/keys/employee-gpg-keyring".into()),
            signed_identity: ID_REPO,
        }]
    );
    assert_eq!(
        p.docker["docker.io/library/kd"],
        [Requirement::SignedBy {
            key_type: KeyType::GpgKeys,
            keys: GpgKeys::Data(b"nonsense".to_vec()),
            signed_identity: ID_REPO,
        }]
    );
    assert!(matches!(
        &p.docker["example.com/hardened"][2],
        Requirement::SignedBaseLayer { base_layer_identity: SignedIdentity::ExactRepository { docker_repository } }
            if docker_repository == "registry.access.redhat.com/rhel7/rhel"
    ));
    let Requirement::SigstoreSigned(s) = &p.docker["example.com/sigstore/fulcio"][0] else {
        panic!("sigstore")
    };
    assert_eq!(s.rekor, Some(PublicKeys::Path("/rekor".into())));
    assert_eq!(
        s.signed_identity,
        SignedIdentity::ExactReference {
            docker_reference: "docker.io/library/busybox:1".into()
        }
    );
    assert!(matches!(s.keys, SigstoreKeys::Fulcio { .. }));
}

#[test]
fn valid_files() {
    for text in [
        r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
        r#"{"default": [{"type": "reject"}], "transports": {}}"#,
        r#"{"default": [{"type": "reject"}], "transports": {"docker": {}}}"#,
        r#"{"default": [{"type": "reject"}], "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}, "oci": {"/x": [{"type":"reject"}]}}}"#,
        r#"{"default": [{"type": "reject"}], "transports": {"docker": {"": [{"type":"reject"}], "*.example.com": [{"type":"reject"}], "localhost:5000": [{"type":"reject"}]}}}"#,
        r#"{"default": [{"type": "sigstoreSigned", "keyPaths": ["/a"], "rekorPublicKeyDatas": ["YQ=="]}]}"#,
        r#"{"default": [{"type": "sigstoreSigned", "pki": {"caRootsData": "YQ==", "caIntermediatesPath": "/i", "subjectHostname": "h"}}]}"#,
        r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "signedIdentity": {"type": "remapIdentity", "prefix": "example.com", "signedPrefix": "localhost:5000/x"}}]}"#,
        r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "signedIdentity": {"type": "exactReference", "dockerReference": "quay.io/a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000"}}]}"#,
    ] {
        ok(text);
    }
}

/// Each invalid file, the line the problem is reported on and what it says. Messages follow
/// containers/image's where it has one (policy_config_test.go's invalid-JSON tables).
#[test]
fn invalid_files_name_line_and_problem() {
    let req = |r: &str| format!("{{\n\"default\": [\n{r}\n]\n}}");
    let cases: Vec<(String, usize, &str)> = vec![
        ("{}".into(), 1, "Default policy is missing"),
        ("{\"default\": []}".into(), 1, "List of verification policy requirements must not be empty"),
        ("{\"default\": null}".into(), 1, "expected an array of requirements, got null"),
        ("[]".into(), 1, "JSON object expected, got an array"),
        ("{\"default\": [{\"type\": \"reject\"}],\n \"other\": 1}".into(), 2, "Unknown key \"other\""),
        ("{\"default\": [{\"type\": \"reject\"}],\n \"default\": [{\"type\": \"reject\"}]}".into(), 2, "Duplicate key \"default\""),
        ("{\"default\": [{\"type\": \"reject\"}], \"transports\": {\n\"docker\": {\n\"quay.io/a\": [{\"type\": \"reject\"}],\n\"quay.io/a\": [{\"type\": \"reject\"}]}}}".into(), 4, "Duplicate key \"quay.io/a\""),
        ("{\"default\": [{\"type\": \"reject\"}], \"transports\": {\n\"dokcer\": {}}}".into(), 2, "Unknown transport \"dokcer\""),
        ("{\"default\": [{\"type\": \"reject\"}], \"transports\": {\"docker\": {\n\"busybox\": [{\"type\": \"reject\"}]}}}".into(), 2, "scopes must be fully expanded"),
        ("{\"default\": [{\"type\": \"reject\"}], \"transports\": {\"docker\": {\n\"docker.io/busybox:1\": [{\"type\": \"reject\"}]}}}".into(), 2, "matches as \"docker.io/library/busybox:1\""),
        ("{\"default\": [{\"type\": \"reject\"}], \"transports\": {\"docker\": {\n\"*.x.com\": []}}}".into(), 2, "must not be empty"),
        ("{\"default\": [{\"type\": \"reject\"}], \"transports\": {\"oci\": {\n\"/x\": [{\"type\": \"nope\"}]}}}".into(), 2, "Unknown policy requirement type \"nope\""),
        (req("{\"type\": \"reject\", \"x\": 1}"), 3, "Unknown key \"x\""),
        (req("{\"type\": \"insecureAcceptAnything\",\n\"type\": \"reject\"}"), 4, "Duplicate key \"type\""),
        (req("{\"keyType\": \"GPGKeys\"}"), 3, "Unknown policy requirement type \"\""),
        (req("{\"type\": 1}"), 3, "expected a string, got a number"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\"}"), 3, "none of them present"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"keyData\": \"YQ==\"}"), 3, "more than one present"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"\"}"), 3, "exactly one of keyPath, keyPaths and keyData must be specified"),
        (req("{\"type\": \"signedBy\", \"keyPath\": \"/a\"}"), 3, "invalid keyType \"\""),
        (req("{\"type\": \"signedBy\",\n\"keyType\": \"PGPKeys\", \"keyPath\": \"/a\"}"), 4, "Unrecognized keyType value \"PGPKeys\""),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\",\n\"keyData\": \"not base64!\"}"), 4, "invalid base64"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\",\n\"signedIdentity\": {\"type\": \"matchSomething\"}}"), 4, "Unknown policy reference match type \"matchSomething\""),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\",\n\"signedIdentity\": {\"type\": \"matchExact\", \"x\": 1}}"), 4, "Unknown key \"x\""),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"signedIdentity\": {\"type\": \"exactReference\",\n\"dockerReference\": \"busybox\"}}"), 4, "contains neither a tag nor digest"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"signedIdentity\": {\"type\": \"exactReference\"}}"), 3, "Key \"dockerReference\" missing"),
        // Hosts containers/image would keep as written but our grammar would fold are refused,
        // so a policy never accepts a signature containers/image would not.
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"signedIdentity\": {\"type\": \"exactReference\",\n\"dockerReference\": \"registry-1.docker.io/library/busybox:1\"}}"), 4, "not written as distribution/reference keeps it"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"signedIdentity\": {\"type\": \"exactRepository\",\n\"dockerRepository\": \"Quay.io/x\"}}"), 4, "Invalid format of dockerRepository \"Quay.io/x\": registry host"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"signedIdentity\": {\"type\": \"exactRepository\",\n\"dockerRepository\": \"UPPER/case\"}}"), 4, "Invalid format of dockerRepository"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"signedIdentity\": {\"type\": \"remapIdentity\", \"prefix\": \"example.com\",\n\"signedPrefix\": \"example.com/Upper\"}}"), 4, "prefix \"example.com/Upper\" is not valid"),
        (req("{\"type\": \"signedBy\", \"keyType\": \"GPGKeys\", \"keyPath\": \"/a\", \"signedIdentity\": {\"type\": \"remapIdentity\", \"prefix\": \"example.com\"}}"), 3, "Key \"signedPrefix\" missing"),
        (req("{\"type\": \"sigstoreSigned\"}"), 3, "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki must be specified"),
        (req("{\"type\": \"sigstoreSigned\", \"keyPath\": \"/a\", \"keyData\": \"YQ==\"}"), 3, "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki"),
        (req("{\"type\": \"sigstoreSigned\",\n\"keyPaths\": []}"), 4, "\"keyPaths\" contains no entries"),
        (req("{\"type\": \"sigstoreSigned\", \"keyPath\": \"/k\",\n\"rekorPublicKeyDatas\": null}"), 4, "\"rekorPublicKeyDatas\" contains no entries"),
        (req("{\"type\": \"sigstoreSigned\", \"keyPath\": \"\"}"), 3, "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki"),
        (req("{\"type\": \"sigstoreSigned\", \"keyPath\": \"/a\", \"rekorPublicKeyPath\": \"/r\", \"rekorPublicKeyData\": \"YQ==\"}"), 3, "at most one of rekorPublickeyPath"),
        (req("{\"type\": \"sigstoreSigned\", \"fulcio\": {\"caPath\": \"/c\", \"oidcIssuer\": \"i\", \"subjectEmail\": \"e\"}}"), 3, "must be specified if fulcio is used"),
        (req("{\"type\": \"sigstoreSigned\",\n\"fulcio\": {\"caPath\": \"/c\", \"caData\": \"YQ==\", \"oidcIssuer\": \"i\", \"subjectEmail\": \"e\"}, \"rekorPublicKeyPath\": \"/r\"}"), 4, "caPath and caData cannot be used simultaneously"),
        (req("{\"type\": \"sigstoreSigned\",\n\"fulcio\": {\"caPath\": \"/c\", \"subjectEmail\": \"e\"}, \"rekorPublicKeyPath\": \"/r\"}"), 4, "oidcIssuer not specified"),
        (req("{\"type\": \"sigstoreSigned\",\n\"fulcio\": {\"caPath\": \"/c\", \"oidcIssuer\": \"i\", \"subjectEmail\": \"e\", \"extra\": 1}, \"rekorPublicKeyPath\": \"/r\"}"), 4, "Unknown key \"extra\""),
        (req("{\"type\": \"sigstoreSigned\", \"pki\": {\"caRootsPath\": \"/c\", \"subjectEmail\": \"e\"}, \"rekorPublicKeyPath\": \"/r\"}"), 3, "not supported for pki"),
        (req("{\"type\": \"sigstoreSigned\",\n\"pki\": {\"caRootsPath\": \"/c\"}}"), 4, "At least one of subjectEmail, subjectHostname must be specified"),
        (req("{\"type\": \"sigstoreSigned\",\n\"pki\": {\"subjectEmail\": \"e\"}}"), 4, "At least one of caRootsPath and caRootsData must be specified"),
        (req("{\"type\": \"signedBaseLayer\"}"), 3, "Key \"baseLayerIdentity\" missing"),
        ("{\"default\": [{\"type\": \"reject\"}]} x".into(), 1, "trailing characters"),
        ("{\"default\": [\n{\"type\": \"reject\"},\n]}".into(), 3, "expected value"),
    ];
    for (text, line, says) in cases {
        let err = parse("/etc/containers/policy.json", &text).unwrap_err();
        assert_eq!(err.file, "/etc/containers/policy.json");
        assert_eq!(err.line, Some(line), "{text}\n{err}");
        assert!(
            err.message.contains(says),
            "{text}\nwanted {says:?}, got {err}"
        );
    }
}

/// A policy with every scope kind; each image must be decided by the most specific one.
#[test]
fn most_specific_scope_decides() {
    let scopes = [
        "",
        "*.com",
        "*.example.com",
        "registry.example.com",
        "registry.example.com:5000",
        "registry.example.com/team",
        "registry.example.com/team/app",
        "registry.example.com/team/app:v1",
        "registry.example.com/team/app@sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "docker.io",
        "docker.io/library",
        "docker.io/library/alpine",
        "docker.io/library/alpine:3",
    ];
    let docker: Vec<String> = scopes
        .iter()
        .map(|s| format!("{s:?}: [{{\"type\": \"reject\"}}]"))
        .collect();
    let text = format!(
        "{{\"default\": [{{\"type\": \"insecureAcceptAnything\"}}], \"transports\": {{\"docker\": {{{}}}}}}}",
        docker.join(",\n")
    );
    let p = ok(&text);
    for (image, scope) in [
        ("registry.example.com/team/app:v1", "registry.example.com/team/app:v1"),
        ("registry.example.com/team/app@sha256:1111111111111111111111111111111111111111111111111111111111111111", "registry.example.com/team/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"),
        ("registry.example.com/team/app:v2", "registry.example.com/team/app"),
        ("registry.example.com/team/other:v1", "registry.example.com/team"),
        ("registry.example.com/team/app/sub:v1", "registry.example.com/team/app"),
        ("registry.example.com/solo:v1", "registry.example.com"),
        ("registry.example.com:5000/team/app:v1", "registry.example.com:5000"),
        ("registry.example.com:6000/x:v1", "*.example.com"),
        ("mirror.example.com/x:v1", "*.example.com"),
        ("quay.com/x:v1", "*.com"),
        ("alpine:3", "docker.io/library/alpine:3"),
        ("alpine", "docker.io/library/alpine"),
        ("docker.io/library/alpine:edge", "docker.io/library/alpine"),
        ("busybox:1", "docker.io/library"),
        ("someone/tool:1", "docker.io"),
        ("quay.io/x:1", ""),
        ("localhost:5000/x:1", ""),
    ] {
        assert_eq!(reject_to_req(&p, image), scope, "{image}");
    }
    let bare = ok(
        r#"{"default": [{"type": "reject"}], "transports": {"docker": {"quay.io": [{"type": "insecureAcceptAnything"}]}}}"#,
    );
    let (scope, reqs) = requirements_for(&bare, &ImageRef::parse("ghcr.io/a:1").unwrap());
    assert_eq!((scope, reqs), (GLOBAL_DEFAULT, &[Requirement::Reject][..]));
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, "{\n\"default\": []}").unwrap();
    let err = load(&path).unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(err
        .to_string()
        .starts_with(&format!("{}:2: default: ", path.display())));
    let missing = load(&dir.path().join("nope.json")).unwrap_err();
    assert_eq!(missing.line, None);
}
