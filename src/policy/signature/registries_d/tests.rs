use super::*;

fn img(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

// containers/image docker/fixtures/registries.d/internet-user.yaml, and the valid entries of
// internal-example.com.yaml (its deliberately invalid URLs fail at use there, at load here).
const INTERNET_USER: &str = "default-docker:
    lookaside: file:///mnt/companywide/signatures/for/other/repositories
docker:
    docker.io/contoso:
        lookaside: https://lookaside.contoso.com/fordocker
    docker.io/centos:
        lookaside: https://lookaside.centos.org/
    docker.io/centos/mybetaproduct:
        lookaside: http://localhost:9999/mybetaWIP/lookaside
        lookaside-staging: file:///srv/mybetaWIP/lookaside
    docker.io/centos/mybetaproduct:latest:
        lookaside: https://lookaside.centos.org/
";
const INTERNAL: &str = "docker:
    example.com:
        lookaside: https://lookaside.example.com
    registry.test.example.com:8888:
        lookaside: http://registry.test.example.com:8889/lookaside
        lookaside-staging: https://registry.test.example.com:8889/lookaside/x
    localhost:8080:
        sigstore: file:///home/mitr/mydevelopment2
    '*.example.org':
        use-sigstore-attachments: true
    quay.example.org/team:
        use-sigstore-attachments: false
";

fn both() -> RegistriesD {
    let mut d = parse("a.yaml", INTERNET_USER).unwrap();
    d.merge(parse("b.yaml", INTERNAL).unwrap()).unwrap();
    d
}

#[test]
fn lookaside_most_specific_scope_with_a_url_wins() {
    let d = both();
    for (image, scope, url) in [
        (
            "docker.io/centos/mybetaproduct:latest",
            "docker.io/centos/mybetaproduct:latest",
            "https://lookaside.centos.org/",
        ),
        (
            "docker.io/centos/mybetaproduct:v2",
            "docker.io/centos/mybetaproduct",
            "http://localhost:9999/mybetaWIP/lookaside",
        ),
        (
            "docker.io/centos/other:1",
            "docker.io/centos",
            "https://lookaside.centos.org/",
        ),
        (
            "contoso/x:1",
            "docker.io/contoso",
            "https://lookaside.contoso.com/fordocker",
        ),
        (
            "busybox:1",
            DEFAULT_DOCKER,
            "file:///mnt/companywide/signatures/for/other/repositories",
        ),
        (
            "example.com/a/b:1",
            "example.com",
            "https://lookaside.example.com",
        ),
        (
            "registry.test.example.com:8888/a:1",
            "registry.test.example.com:8888",
            "http://registry.test.example.com:8889/lookaside",
        ),
        // `sigstore`, the old name, is read when `lookaside` is absent.
        (
            "localhost:8080/x:1",
            "localhost:8080",
            "file:///home/mitr/mydevelopment2",
        ),
        // `*.example.org` sets no URL, so it does not hide the default.
        (
            "quay.example.org/x:1",
            DEFAULT_DOCKER,
            "file:///mnt/companywide/signatures/for/other/repositories",
        ),
    ] {
        assert_eq!(d.lookaside_for(&img(image)), Some((scope, url)), "{image}");
    }
    assert_eq!(
        parse("x.yaml", INTERNAL)
            .unwrap()
            .lookaside_for(&img("busybox")),
        None
    );
}

#[test]
fn sigstore_attachments_most_specific_setting_wins() {
    let d = both();
    assert_eq!(
        d.use_sigstore_attachments_for(&img("a.example.org/x:1")),
        (Some("*.example.org"), true)
    );
    assert_eq!(
        d.use_sigstore_attachments_for(&img("quay.example.org/team/x:1")),
        (Some("quay.example.org/team"), false)
    );
    assert_eq!(
        d.use_sigstore_attachments_for(&img("busybox")),
        (None, false)
    );
    let with_default = parse(
        "d.yaml",
        "default-docker:\n  use-sigstore-attachments: TRUE\n",
    )
    .unwrap();
    assert_eq!(
        with_default.use_sigstore_attachments_for(&img("busybox")),
        (Some(DEFAULT_DOCKER), true)
    );
}

#[test]
fn valid_files() {
    for text in [
        "",
        "# only a comment\n",
        "{}",
        "---\ndocker: {}\n",
        "default-docker:\n",
        "docker:\n  quay.io:\n",
        "docker: {\"quay.io/x\": {lookaside: \"https://s.example/x\"}}",
        "default-docker:\n  lookaside: ''\n  sigstore-staging: file:///x\n",
    ] {
        if let Err(e) = parse("ok.yaml", text) {
            panic!("{text:?}: {e}");
        }
    }
    let d = parse("n.yaml", "docker:\n  quay.io:\n").unwrap();
    assert_eq!(d.docker["quay.io"].read_url(), None);
}

#[test]
fn invalid_files_name_line_and_problem() {
    for (text, line, says) in [
        (
            "docker:\n  quay.io:\n    lookside: https://x\n",
            3,
            "unknown key \"lookside\"",
        ),
        ("default-docker: {}\nextra: 1\n", 2, "unknown key \"extra\""),
        (
            "docker:\n  quay.io: {}\n  quay.io: {}\n",
            3,
            "mapping key \"quay.io\" already defined at line 2",
        ),
        (
            "default-docker:\n  lookaside: https://a\n  lookaside: https://b\n",
            3,
            "already defined at line 2",
        ),
        (
            "docker:\n  busybox:\n    lookaside: https://a\n",
            2,
            "fully expanded",
        ),
        (
            "docker:\n  quay.io:\n    use-sigstore-attachments: yes\n",
            3,
            "expected true or false, got \"yes\"",
        ),
        (
            "docker:\n  quay.io:\n    use-sigstore-attachments: \"true\"\n",
            3,
            "expected true or false",
        ),
        (
            "docker:\n  quay.io:\n    lookaside: ftp://x/\n",
            3,
            "unsupported URL scheme \"ftp\"",
        ),
        (
            "docker:\n  quay.io:\n    lookaside: /no/scheme\n",
            3,
            "invalid URL",
        ),
        (
            "docker:\n  quay.io:\n    lookaside: [a]\n",
            3,
            "expected a URL, got a sequence",
        ),
        (
            "docker: [1]\n",
            1,
            "expected a mapping of scopes, got a sequence",
        ),
        ("- a\n", 1, "expected a mapping, got a sequence"),
        ("a: &x 1\nb: *x\n", 1, "anchors are not allowed"),
        ("docker: !!map {}\n", 1, "tags are not allowed"),
        ("docker: {}\n---\ndocker: {}\n", 2, "only one YAML document"),
        ("docker:\n  quay.io: {\n", 3, ""),
    ] {
        let err = parse("/etc/containers/registries.d/x.yaml", text).unwrap_err();
        assert_eq!(err.file, "/etc/containers/registries.d/x.yaml");
        assert_eq!(err.line, Some(line), "{text:?}: {err}");
        assert!(
            err.message.contains(says),
            "{text:?}: wanted {says:?}, got {err}"
        );
    }
}

#[test]
fn directory_merges_yaml_files_and_rejects_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), INTERNET_USER).unwrap();
    std::fs::write(dir.path().join("b.yaml"), INTERNAL).unwrap();
    std::fs::write(dir.path().join("ignored.yml"), "not: [valid").unwrap();
    let d = load_dir(dir.path()).unwrap();
    assert_eq!(d.docker.len(), 9);
    assert_eq!(
        d.docker["example.com"].file,
        dir.path().join("b.yaml").display().to_string()
    );

    std::fs::write(
        dir.path().join("c.yaml"),
        "docker:\n  quay.io: {}\n  example.com:\n    lookaside: https://other\n",
    )
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert_eq!(err.file, dir.path().join("c.yaml").display().to_string());
    assert_eq!(err.line, Some(3));
    assert!(
        err.message
            .contains("\"docker\" namespace \"example.com\" defined both in"),
        "{err}"
    );
    assert!(err.message.contains("b.yaml\" (line 2)"), "{err}");

    std::fs::write(
        dir.path().join("c.yaml"),
        "default-docker:\n  lookaside: https://other\n",
    )
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(
        err.message.contains("\"default-docker\" defined both in"),
        "{err}"
    );

    assert_eq!(
        load_dir(&dir.path().join("missing")).unwrap(),
        RegistriesD::default()
    );
}
