//! The tables of containers/image `signature/policy_reference_match_test.go` (commit
//! df7e80d2d19872b61f352a8a182ec934dc0c2346), ported row for row, with the same derived
//! checks its test functions make from them.

use super::*;

const FULL_RHEL: &str = "registry.access.redhat.com/rhel7/rhel:7.2.3";
const UNTAGGED_RHEL: &str = "registry.access.redhat.com/rhel7/rhel";
const D: &str = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const D_OTHER: &str = "@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn s(a: &str, b: &str) -> String {
    format!("{a}{b}")
}

/// `prmExactMatchTestTable`; symmetric.
fn exact_table() -> Vec<(String, String, bool)> {
    let t = |a: &str, b: &str, r| (a.to_owned(), b.to_owned(), r);
    vec![
        // Success, simple matches
        t("busybox:latest", "busybox:latest", true),
        t(FULL_RHEL, FULL_RHEL, true),
        t(&s("busybox", D), &s("busybox", D), true),
        // Non-canonical reference format is canonicalized
        t("library/busybox:latest", "busybox:latest", true),
        t("docker.io/library/busybox:latest", "busybox:latest", true),
        t(&s("library/busybox", D), &s("busybox", D), true),
        // Mismatch
        t("busybox:latest", "busybox:notlatest", false),
        t("busybox:latest", "notbusybox:latest", false),
        t(
            "busybox:latest",
            "hostname/library/busybox:notlatest",
            false,
        ),
        t(
            "hostname/library/busybox:latest",
            "busybox:notlatest",
            false,
        ),
        t("busybox:latest", FULL_RHEL, false),
        t(&s("busybox", D), &s("notbusybox", D), false),
        t("busybox:latest", &s("busybox", D), false),
        t(&s("busybox", D), &s("busybox", D_OTHER), false),
        // NameOnly references
        t("busybox", "busybox:latest", false),
        t("busybox", &s("busybox", D), false),
        t("busybox", "busybox", false),
        // References with both tags and digests: matched exactly (requiring BOTH to match)
        t(&s("busybox:latest", D), &s("busybox:latest", D), true),
        t(
            &s("busybox:latest", D),
            &s("busybox:latest", D_OTHER),
            false,
        ),
        t(&s("busybox:latest", D), &s("busybox:notlatest", D), false),
        t(&s("busybox:latest", D), &s("busybox", D), false),
        t(&s("busybox:latest", D), "busybox:latest", false),
        // Invalid format
        t(
            "UPPERCASE_IS_INVALID_IN_DOCKER_REFERENCES",
            "busybox:latest",
            false,
        ),
        t("", "UPPERCASE_IS_INVALID_IN_DOCKER_REFERENCES", false),
        // Even if they are exactly equal, invalid values are rejected.
        t("INVALID", "INVALID", false),
    ]
}

/// `prmRepositoryMatchTestTable`; symmetric.
fn repository_table() -> Vec<(String, String, bool)> {
    let t = |a: &str, b: &str, r| (a.to_owned(), b.to_owned(), r);
    vec![
        // Success, simple matches
        t("busybox:latest", "busybox:latest", true),
        t(FULL_RHEL, FULL_RHEL, true),
        t(&s("busybox", D), &s("busybox", D), true),
        // Non-canonical reference format is canonicalized
        t("library/busybox:latest", "busybox:latest", true),
        t("docker.io/library/busybox:latest", "busybox:latest", true),
        t(&s("library/busybox", D), &s("busybox", D), true),
        // The same as above, but with mismatching tags
        t("busybox:latest", "busybox:notlatest", true),
        t(&s(FULL_RHEL, "tagsuffix"), FULL_RHEL, true),
        t("library/busybox:latest", "busybox:notlatest", true),
        t("busybox:latest", "library/busybox:notlatest", true),
        t(
            "docker.io/library/busybox:notlatest",
            "busybox:latest",
            true,
        ),
        t(
            "busybox:notlatest",
            "docker.io/library/busybox:latest",
            true,
        ),
        t("busybox:latest", &s("busybox", D), true),
        t(&s("busybox", D), &s("busybox", D_OTHER), true),
        // The same as above, but with defaulted tags (which can happen with /usr/bin/cosign)
        t("busybox", "busybox:notlatest", true),
        t(FULL_RHEL, UNTAGGED_RHEL, true),
        t("busybox", &s("busybox", D), true),
        t("library/busybox", "busybox", true),
        t("docker.io/library/busybox", "busybox", true),
        // Mismatch
        t("busybox:latest", "notbusybox:latest", false),
        t(
            "hostname/library/busybox:latest",
            "busybox:notlatest",
            false,
        ),
        t("busybox:latest", FULL_RHEL, false),
        t(&s("busybox", D), &s("notbusybox", D), false),
        // References with both tags and digests: both ignored.
        t(&s("busybox:latest", D), &s("busybox:latest", D), true),
        t(&s("busybox:latest", D), &s("busybox:latest", D_OTHER), true),
        t(&s("busybox:latest", D), &s("busybox:notlatest", D), true),
        t(&s("busybox:latest", D), &s("busybox", D), true),
        t(&s("busybox:latest", D), "busybox:latest", true),
        // Invalid format
        t(
            "UPPERCASE_IS_INVALID_IN_DOCKER_REFERENCES",
            "busybox:latest",
            false,
        ),
        t("", "UPPERCASE_IS_INVALID_IN_DOCKER_REFERENCES", false),
        t("INVALID", "INVALID", false),
    ]
}

/// `matchRepoDigestOrExactTestTable`: (image, signature); not symmetric.
fn repo_digest_or_exact_table() -> Vec<(String, String, bool)> {
    let t = |a: &str, b: &str, r| (a.to_owned(), b.to_owned(), r);
    vec![
        // Tag mismatch
        t("busybox:latest", "busybox:notlatest", false),
        t(&s(FULL_RHEL, "tagsuffix"), FULL_RHEL, false),
        t("library/busybox:latest", "busybox:notlatest", false),
        t("busybox:latest", "library/busybox:notlatest", false),
        t(
            "docker.io/library/busybox:notlatest",
            "busybox:latest",
            false,
        ),
        t(
            "busybox:notlatest",
            "docker.io/library/busybox:latest",
            false,
        ),
        // NameOnly references
        t("busybox", "busybox:latest", false),
        t("busybox:latest", "busybox", false),
        t("busybox", &s("busybox", D), false),
        t(&s("busybox", D), "busybox", false),
        t(FULL_RHEL, UNTAGGED_RHEL, false),
        t("busybox", "busybox", false),
        // Tag references only accept signatures with matching tags.
        t("busybox:latest", &s("busybox", D), false),
        // Digest references accept any signature with matching repository.
        t(&s("busybox", D), "busybox:latest", true),
        t(&s("busybox", D), &s("busybox", D_OTHER), true),
        // References with both tags and digests: matched exactly (requiring BOTH to match).
        t(&s("busybox:latest", D), "busybox:latest", false),
        t(&s("busybox:latest", D), "busybox:notlatest", false),
        t("busybox:latest", &s("busybox:latest", D), false),
        t(
            &s("busybox:latest", D),
            &s("busybox:latest", D_OTHER),
            false,
        ),
        t(
            &s("busybox:latest", D),
            &s("busybox:notlatest", D_OTHER),
            false,
        ),
    ]
}

/// `testImageAndSig`; None when the image reference is invalid (the Go tests skip those:
/// a pulled image always has a valid reference).
fn image_and_sig(identity: &SignedIdentity, image: &str, sig: &str) -> Option<bool> {
    let intended = DockerRef::parse_normalized(image).ok()?;
    Some(matches(identity, &intended, sig).is_ok())
}

fn both_ways(identity: &SignedIdentity, a: &str, b: &str, want: bool) {
    for (image, sig) in [(a, b), (b, a)] {
        if let Some(got) = image_and_sig(identity, image, sig) {
            assert_eq!(
                got, want,
                "{identity:?}: image {image:?} vs signature {sig:?}"
            );
        }
    }
}

#[test]
fn match_exact_follows_containers_image() {
    for (a, b, want) in exact_table() {
        both_ways(&SignedIdentity::MatchExact, &a, &b, want);
    }
}

#[test]
fn match_repository_follows_containers_image() {
    for (a, b, want) in repository_table() {
        both_ways(&SignedIdentity::MatchRepository, &a, &b, want);
    }
}

/// Between matchExact and matchRepository: accepts all matchExact accepts, rejects all
/// matchRepository rejects, and the asymmetric rest of its own table.
#[test]
fn match_repo_digest_or_exact_follows_containers_image() {
    let id = SignedIdentity::MatchRepoDigestOrExact;
    for (a, b, want) in exact_table().into_iter().filter(|t| t.2) {
        both_ways(&id, &a, &b, want);
    }
    for (a, b, want) in repository_table().into_iter().filter(|t| !t.2) {
        both_ways(&id, &a, &b, want);
    }
    for (image, sig, want) in repo_digest_or_exact_table() {
        assert_eq!(
            image_and_sig(&id, &image, &sig),
            Some(want),
            "image {image:?} vs signature {sig:?}"
        );
    }
}

/// `TestPRMExactReferenceMatchesDockerReference`: the policy's reference plays the image's
/// part, and may itself be invalid.
#[test]
fn exact_reference_and_exact_repository_follow_containers_image() {
    let intended = DockerRef::parse_normalized("unrelated.example/x:1").unwrap();
    for (a, b, want) in exact_table() {
        for (policy, sig) in [(&a, &b), (&b, &a)] {
            let id = SignedIdentity::ExactReference {
                docker_reference: policy.clone(),
            };
            assert_eq!(
                matches(&id, &intended, sig).is_ok(),
                want,
                "exactReference {policy:?} vs {sig:?}"
            );
        }
    }
    for (a, b, want) in repository_table() {
        for (policy, sig) in [(&a, &b), (&b, &a)] {
            let id = SignedIdentity::ExactRepository {
                docker_repository: policy.clone(),
            };
            assert_eq!(
                matches(&id, &intended, sig).is_ok(),
                want,
                "exactRepository {policy:?} vs {sig:?}"
            );
        }
    }
}

/// `TestPRMRemapIdentityRefMatchesPrefix`.
#[test]
fn remap_prefix_matching_follows_containers_image() {
    for (reference, prefix, want) in [
        // Prefix is a reference.Domain() value
        ("docker.io/image", "docker.io", true),
        ("docker.io/image", "example.com", false),
        ("example.com:5000/image", "example.com:5000", true),
        ("example.com:50000/image", "example.com:5000", false),
        ("example.com:5000/image", "example.com", false),
        ("example.com/foo", "example.com", true),
        ("example.com/foo/bar", "example.com", true),
        ("example.com/foo/bar:baz", "example.com", true),
        (&s("example.com/foo/bar", D), "example.com", true),
        // Prefix is a reference.Named.Name() value or a repo namespace
        ("docker.io/ns/image", "docker.io/library", false),
        ("example.com/library", "docker.io/library", false),
        ("docker.io/libraryy/image", "docker.io/library", false),
        ("docker.io/library/busybox", "docker.io/library", true),
        ("example.com/ns/image", "example.com/ns", true),
        ("example.com/ns2/image", "example.com/ns", false),
        ("example.com/n2/image", "example.com/ns", false),
        ("example.com", "example.com/library/busybox", false),
        ("example.com:5000/ns/image", "example.com/ns", false),
        ("example.com/ns/image", "example.com:5000/ns", false),
        (
            "docker.io/library/busybox",
            "docker.io/library/busybox",
            true,
        ),
        (
            "example.com/library/busybox",
            "docker.io/library/busybox",
            false,
        ),
        (
            "docker.io/library/busybox2",
            "docker.io/library/busybox",
            false,
        ),
        ("example.com/ns/image", "example.com/ns/image", true),
        ("example.com/ns/imag2", "example.com/ns/image", false),
        ("example.com/ns/imagee", "example.com/ns/image", false),
        ("example.com:5000/ns/image", "example.com/ns/image", false),
        ("example.com/ns/image", "example.com:5000/ns/image", false),
        ("example.com/ns/image:tag", "example.com/ns/image", true),
        (&s("example.com/ns/image", D), "example.com/ns/image", true),
        (
            &s("example.com/ns/image:tag", D),
            "example.com/ns/image",
            true,
        ),
    ] {
        let r = DockerRef::parse_normalized(reference).unwrap();
        assert_eq!(
            ref_matches_prefix(r.name(), prefix),
            want,
            "{reference} vs {prefix}"
        );
    }
}

/// `TestPRMRemapIdentityRemapReferencePrefix`; "" is an expected error.
#[test]
fn remap_rewrites_follow_containers_image() {
    for (prefix, signed_prefix, reference, want) in [
        (
            "mirror.example",
            "vendor.example",
            "mirror.example/ns/image:tag",
            "vendor.example/ns/image:tag".to_owned(),
        ),
        (
            "mirror.example",
            "vendor.example",
            "different.com/ns/image:tag",
            "different.com/ns/image:tag".into(),
        ),
        (
            "mirror.example/ns",
            "vendor.example/vendor-ns",
            "mirror.example/different-ns/image:tag",
            "mirror.example/different-ns/image:tag".into(),
        ),
        (
            "docker.io",
            "not-docker-signed.example/ns",
            "busybox",
            "not-docker-signed.example/ns/library/busybox".into(),
        ),
        (
            "example.com/mirror",
            "example.com/vendor",
            "example.com/mirror/image:tag",
            "example.com/vendor/image:tag".into(),
        ),
        (
            "example.com/ns/mirror",
            "example.com/ns/vendor",
            "example.com/ns/mirror:tag",
            "example.com/ns/vendor:tag".into(),
        ),
        (
            "mirror.example",
            "vendor.example",
            "prefixmirror.example/ns/image:tag",
            "prefixmirror.example/ns/image:tag".into(),
        ),
        (
            "docker.io",
            "not-docker-signed.example",
            "busybox",
            "not-docker-signed.example/library/busybox".into(),
        ),
        (
            "docker.io/library",
            "not-docker-signed.example/ns",
            "busybox",
            "not-docker-signed.example/ns/busybox".into(),
        ),
        (
            "docker.io/library/busybox",
            "not-docker-signed.example/ns/notbusybox",
            "busybox",
            "not-docker-signed.example/ns/notbusybox".into(),
        ),
        // On match, tag/digest is preserved
        (
            "mirror.example",
            "vendor.example",
            "mirror.example/image",
            "vendor.example/image".into(),
        ),
        (
            "mirror.example",
            "vendor.example",
            "mirror.example/image:tag",
            "vendor.example/image:tag".into(),
        ),
        (
            "mirror.example",
            "vendor.example",
            &s("mirror.example/image", D),
            s("vendor.example/image", D),
        ),
        (
            "mirror.example",
            "vendor.example",
            &s("mirror.example/image:tag", D),
            s("vendor.example/image:tag", D),
        ),
        // Rewrite creating an invalid reference
        (
            "mirror.example/ns/image",
            "vendor.example:5000",
            "mirror.example/ns/image:tag",
            String::new(),
        ),
        // A valid reference in short form, which would imply docker.io: refused
        (
            "mirror.example/ns/image",
            "vendor.example:5000",
            &s("mirror.example/ns/image", D),
            String::new(),
        ),
        (
            "mirror.example/ns/image",
            "notlocalhost",
            "mirror.example/ns/image:tag",
            String::new(),
        ),
    ] {
        let r = DockerRef::parse_normalized(reference).unwrap();
        let got = remap(prefix, signed_prefix, &r);
        if want.is_empty() {
            assert!(
                got.is_err(),
                "{prefix} {signed_prefix} {reference}: {got:?}"
            );
        } else {
            assert_eq!(
                got.map(|r| r.to_string()),
                Ok(want),
                "{prefix} {signed_prefix} {reference}"
            );
        }
    }
}

/// containers/image's `modifiedString`: the first letter moved on by one.
fn modified(input: &str) -> String {
    let mut chars = input.chars();
    let first = match chars.next() {
        Some('z') => 'a',
        Some(c @ 'a'..='y') => char::from(c as u8 + 1),
        other => panic!("unimplemented leading character {other:?}"),
    };
    format!("{first}{}", chars.as_str())
}

/// `prmRemapIdentityMRDOETestCase`: with a prefix that never applies, and with one that
/// maps a modified domain back, remapIdentity decides as matchRepoDigestOrExact.
fn remap_as_repo_digest_or_exact(image: &str, sig: &str, want: bool) {
    let Ok(parsed) = DockerRef::parse_normalized(image) else {
        return;
    };
    let never = SignedIdentity::RemapIdentity {
        prefix: "never-causes-a-rewrite.example".into(),
        signed_prefix: "never-causes-a-rewrite.example".into(),
    };
    assert_eq!(
        image_and_sig(&never, image, sig),
        Some(want),
        "{image} vs {sig}"
    );
    let domain = parsed.name().split('/').next().unwrap().to_owned();
    let rewrite = SignedIdentity::RemapIdentity {
        prefix: modified(&domain),
        signed_prefix: domain,
    };
    let modified_image = DockerRef::parse_normalized(&modified(&parsed.to_string())).unwrap();
    assert_eq!(
        image_and_sig(&rewrite, &modified_image.to_string(), sig),
        Some(want),
        "{modified_image} (remapped) vs {sig}"
    );
}

/// `TestPRMRemapIdentityMatchesDockerReference`.
#[test]
fn remap_identity_follows_containers_image() {
    for (prefix, signed_prefix, image, sig, want) in [
        // No match rewriting
        (
            "does-not-match.com",
            "does-not-match.rewritten",
            "busybox:latest",
            "busybox:latest",
            true,
        ),
        (
            "does-not-match.com",
            "does-not-match.rewritten",
            "busybox:latest",
            "notbusybox:latest",
            false,
        ),
        // Match rewriting non-docker
        (
            "mirror.example",
            "public.com",
            "mirror.example/busybox:1",
            "public.com/busybox:1",
            true,
        ),
        (
            "mirror.example",
            "public.com",
            "mirror.example/busybox:1",
            "public.com/busybox:not1",
            false,
        ),
        // Rewriting to docker.io
        (
            "mirror.example",
            "docker.io/library",
            "mirror.example/busybox:latest",
            "busybox:latest",
            true,
        ),
        (
            "mirror.example",
            "docker.io/library",
            "mirror.example/alpine:latest",
            "busybox:latest",
            false,
        ),
        // Rewriting from docker.io
        (
            "docker.io/library",
            "original.com",
            "copied:latest",
            "original.com/copied:latest",
            true,
        ),
        (
            "docker.io/library",
            "original.com",
            "copied:latest",
            "original.com/ns/copied:latest",
            false,
        ),
        // Invalid object: prefix is not a host name
        (
            "busybox",
            "example.com/busybox",
            "busybox:latest",
            "example.com/busybox:latest",
            false,
        ),
        // Invalid object: signedPrefix is not a host name
        (
            "docker.io/library/busybox",
            "busybox",
            "docker.io/library/busybox:latest",
            "busybox:latest",
            false,
        ),
        // Invalid object: invalid prefix
        (
            "UPPERCASE",
            "example.com",
            "example.com/foo:latest",
            "example.com/foo:latest",
            true,
        ),
        (
            "example.com",
            "UPPERCASE",
            "example.com/foo:latest",
            "UPPERCASE/foo:latest",
            false,
        ),
    ] {
        let id = SignedIdentity::RemapIdentity {
            prefix: prefix.into(),
            signed_prefix: signed_prefix.into(),
        };
        assert_eq!(
            image_and_sig(&id, image, sig),
            Some(want),
            "{id:?}: {image} vs {sig}"
        );
    }
    for (a, b, want) in exact_table().into_iter().filter(|t| t.2) {
        remap_as_repo_digest_or_exact(&a, &b, want);
        remap_as_repo_digest_or_exact(&b, &a, want);
    }
    for (a, b, want) in repository_table().into_iter().filter(|t| !t.2) {
        remap_as_repo_digest_or_exact(&a, &b, want);
        remap_as_repo_digest_or_exact(&b, &a, want);
    }
    for (image, sig, want) in repo_digest_or_exact_table() {
        remap_as_repo_digest_or_exact(&image, &sig, want);
    }
}

/// The proxy's own entry point: an `ImageRef` as pulled, and messages that name both sides.
#[test]
fn check_names_the_signed_and_the_expected_identity() {
    let image = ImageRef::parse("busybox:latest").unwrap();
    let id = SignedIdentity::MatchRepoDigestOrExact;
    assert_eq!(check(&id, &image, "busybox:latest"), Ok(()));
    assert_eq!(
        check(&id, &image, "docker.io/library/busybox:latest"),
        Ok(())
    );
    assert_eq!(check(&id, &image, "index.docker.io/busybox:latest"), Ok(()));
    let err = check(&id, &image, "registry.example.com/other").unwrap_err();
    assert_eq!(
        err.to_string(),
        "signed identity registry.example.com/other does not match docker.io/library/busybox:latest (matchRepoDigestOrExact needs the signature to name a tag or digest)"
    );
    let err = check(&id, &image, "registry.example.com/other:latest").unwrap_err();
    assert_eq!(
        err.to_string(),
        "signed identity registry.example.com/other:latest does not match docker.io/library/busybox:latest"
    );
    let err = check(&SignedIdentity::MatchRepository, &image, "quay.io/x:1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "signed identity quay.io/x:1 does not match docker.io/library/busybox"
    );
    let err = check(&id, &image, "busybox:latest\nforged log line").unwrap_err();
    assert!(err.signed.starts_with("\"busybox:latest\\nforged"), "{err}");
    assert!(
        err.to_string().contains("not a valid docker reference"),
        "{err}"
    );
    let remap = SignedIdentity::RemapIdentity {
        prefix: "mirror.example.com".into(),
        signed_prefix: "vendor.example.com".into(),
    };
    let mirrored = ImageRef::parse("mirror.example.com/app:1").unwrap();
    assert_eq!(check(&remap, &mirrored, "vendor.example.com/app:1"), Ok(()));
    let err = check(&remap, &mirrored, "mirror.example.com/app:1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "signed identity mirror.example.com/app:1 does not match vendor.example.com/app:1 (mirror.example.com/app:1 remapped from mirror.example.com to vendor.example.com)"
    );
}

/// Spellings our grammar would fold but distribution/reference keeps apart are refused,
/// so a signature can never match here where containers/image would not match it.
#[test]
fn signed_references_distribution_reads_differently_are_refused() {
    let image = ImageRef::parse("docker.io/library/busybox:1").unwrap();
    let id = SignedIdentity::MatchRepository;
    for sig in [
        "registry-1.docker.io/library/busybox:1",
        "Docker.io/library/busybox:1",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "",
    ] {
        assert!(check(&id, &image, sig).is_err(), "{sig:?}");
    }
}
