//! Signature policy at the proxy, checked against containers/image itself: GnuPG keys made
//! for the test, images signed with `skopeo standalone-sign` (containers/image's own simple
//! signing, Project Atomic's `atomic container signature`), signatures served by a real web
//! server as a registries.d lookaside store. For every case of the table, skopeo straight
//! from the registry with `--policy` gives containers/image's verdict; the same image pulled
//! through portcullis (client policy `insecureAcceptAnything`, portcullis loading the same
//! policy and registries.d) must give the same one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::image::sha256_digest;
use crate::harness::net::{free_port, wait_for};
use crate::harness::process::{describe, run, Supervised};
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const HOST: &str = "registry.example.com";

/// A GnuPG home of the test's own; its agent is stopped on drop.
struct Gpg {
    home: PathBuf,
}

impl Gpg {
    fn new(dir: &TestDir) -> Gpg {
        let home = dir.subdir("gnupg");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
                .expect("chmod gnupg home");
        }
        Gpg { home }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new("gpg");
        command
            .env("GNUPGHOME", &self.home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args);
        let out = run(command, None, Duration::from_secs(60));
        assert!(out.status.success(), "gpg {args:?}:\n{}", describe(&out));
        out
    }

    /// A new signing key; its fingerprint.
    fn key(&self, uid: &str) -> String {
        self.run(&["--quick-gen-key", uid, "rsa2048", "sign", "never"]);
        let listing = self.run(&["--with-colons", "--list-keys", uid]);
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|f| f.trim_matches(':').to_owned())
            })
            .expect("fingerprint")
    }

    fn export(&self, fingerprint: &str, to: &Path) {
        let out = self.run(&["--export", fingerprint]);
        assert!(!out.stdout.is_empty());
        std::fs::write(to, out.stdout).expect("write key");
    }

    /// `skopeo standalone-sign`: containers/image's simple signing of `manifest` as `identity`.
    fn sign(&self, manifest: &[u8], identity: &str, fingerprint: &str, dir: &TestDir) -> Vec<u8> {
        let m = dir.write("to-sign.json", manifest);
        let out = dir.path().join("signature");
        let home = self.home.display().to_string();
        let result = Skopeo::new().run_with_env(
            &[
                "standalone-sign",
                &m.display().to_string(),
                identity,
                fingerprint,
                "-o",
                &out.display().to_string(),
            ],
            &[("GNUPGHOME", home.as_str())],
        );
        assert!(result.status.success(), "sign:\n{}", describe(&result));
        std::fs::read(out).expect("read signature")
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home)
            .args(["--kill", "all"])
            .output();
    }
}

/// A lookaside store: a directory served over HTTP by a real web server.
struct Lookaside {
    dir: PathBuf,
    url: String,
    _server: Supervised,
}

impl Lookaside {
    fn start(dir: &TestDir) -> Lookaside {
        let root = dir.subdir("lookaside");
        let port = free_port();
        let mut command = Command::new("python3");
        command.args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ]);
        command.arg(&root);
        let server = Supervised::spawn("lookaside", command, &dir.path().join("lookaside.log"));
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("lookaside server listening");
        Lookaside {
            dir: root,
            url: format!("http://127.0.0.1:{port}"),
            _server: server,
        }
    }

    /// Puts `signatures` for `repository@digest` where containers/image looks for them.
    fn put(&self, repository: &str, digest: &str, signatures: &[Vec<u8>]) {
        let at = self
            .dir
            .join(format!("{repository}@{}", digest.replacen(':', "=", 1)));
        std::fs::create_dir_all(&at).expect("mkdir lookaside");
        for (i, s) in signatures.iter().enumerate() {
            std::fs::write(at.join(format!("signature-{}", i + 1)), s).expect("write signature");
        }
    }
}

/// One policy of the table.
struct Case {
    policy: &'static str,
    /// Pulled as `registry.example.com/<this>`.
    image: String,
    accepted: bool,
}

#[test]
fn signed_by_verdicts_match_containers_image_for_every_case() {
    let dir = TestDir::new("signatures");
    let gpg = Gpg::new(&dir);
    let trusted = gpg.key("portcullis trusted <trusted@example.invalid>");
    let other = gpg.key("portcullis other <other@example.invalid>");
    let trusted_key = dir.path().join("trusted.gpg");
    let other_key = dir.path().join("other.gpg");
    gpg.export(&trusted, &trusted_key);
    gpg.export(&other, &other_key);

    let registry = Registry::start(Auth::None);
    let lookaside = Lookaside::start(&dir);
    // Each repository's image differs, so each has its own digest and signatures.
    let mut digests = std::collections::HashMap::new();
    let mut manifests = std::collections::HashMap::new();
    for (i, repo) in [
        "team/signed",
        "team/unsigned",
        "team/other",
        "team/wrongid",
        "team/tampered",
        "team/otherdigest",
        "team/two",
        "team/tagged",
        "ops/tool",
    ]
    .iter()
    .enumerate()
    {
        let image = OciImage::random(&[1024 + i as u64]);
        let tag = if *repo == "team/tagged" { "2" } else { "1" };
        registry.seed(&image, &format!("{repo}:{tag}"));
        let manifest = image.manifest_bytes();
        digests.insert(*repo, sha256_digest(&manifest));
        manifests.insert(*repo, manifest);
    }
    let sign = |repo: &str, identity: &str, key: &str| {
        gpg.sign(&manifests[repo], &format!("{HOST}/{identity}"), key, &dir)
    };
    let put = |repo: &str, sigs: &[Vec<u8>]| lookaside.put(repo, &digests[repo], sigs);
    put(
        "team/signed",
        &[sign("team/signed", "team/signed:1", &trusted)],
    );
    put("team/other", &[sign("team/other", "team/other:1", &other)]);
    put(
        "team/wrongid",
        &[sign("team/wrongid", "team/elsewhere:1", &trusted)],
    );
    let mut tampered = sign("team/tampered", "team/tampered:1", &trusted);
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x20;
    put("team/tampered", &[tampered]);
    // A good signature, of another manifest, under this one's digest.
    put(
        "team/otherdigest",
        &[sign("team/signed", "team/otherdigest:1", &trusted)],
    );
    put(
        "team/two",
        &[
            sign("team/two", "team/two:1", &other),
            sign("team/two", "team/two:1", &trusted),
        ],
    );
    put(
        "team/tagged",
        &[sign("team/tagged", "team/tagged:1", &trusted)],
    );
    put("ops/tool", &[sign("ops/tool", "ops/tool:1", &trusted)]);

    let keys = |k: &Path| k.display().to_string();
    let signed_by = |key: &Path, identity: &str| {
        format!(
            r#"{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"{identity}}}"#,
            keys(key)
        )
    };
    let trusted_req = signed_by(&trusted_key, "");
    let p_host = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{HOST}":[{trusted_req}]}}}}}}"#
    );
    let p_repo = format!(
        r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"{HOST}/team/signed":[{trusted_req}],"{HOST}/team/unsigned":[{{"type":"reject"}}]}}}}}}"#
    );
    let p_keys = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{HOST}/team":[{{"type":"signedBy","keyType":"GPGKeys","keyPaths":["{}","{}"]}}]}}}}}}"#,
        keys(&other_key),
        keys(&trusted_key)
    );
    let p_wild = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"*.example.com":[{trusted_req}]}}}}}}"#
    );
    let p_repo_id = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{HOST}":[{}]}}}}}}"#,
        signed_by(
            &trusted_key,
            r#","signedIdentity":{"type":"matchRepository"}"#
        )
    );
    let p_exact = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{HOST}":[{}]}}}}}}"#,
        signed_by(
            &trusted_key,
            &format!(
                r#","signedIdentity":{{"type":"exactReference","dockerReference":"{HOST}/team/signed:1"}}"#
            )
        )
    );
    let p_two = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{HOST}":[{trusted_req},{{"type":"insecureAcceptAnything"}}],"{HOST}/ops":[{trusted_req},{{"type":"reject"}}]}}}}}}"#
    );
    let policies: Vec<(&str, String)> = vec![
        ("host", p_host),
        ("repository", p_repo),
        ("keyPaths", p_keys),
        ("wildcard", p_wild),
        ("matchRepository", p_repo_id),
        ("exactReference", p_exact),
        ("several requirements", p_two),
    ];
    let at = |repo: &str| format!("{repo}@{}", digests[repo]);
    let case = |policy, image: &str, accepted| Case {
        policy,
        image: image.to_owned(),
        accepted,
    };
    let cases = vec![
        case("host", "team/signed:1", true),
        case("host", &at("team/signed"), true),
        case("host", "team/unsigned:1", false),
        case("host", &at("team/unsigned"), false),
        case("host", "team/other:1", false),
        case("host", "team/wrongid:1", false),
        case("host", "team/tampered:1", false),
        case("host", "team/otherdigest:1", false),
        case("host", "team/two:1", true),
        case("host", "team/tagged:2", false),
        case("host", &at("team/tagged"), true),
        case("repository", "team/signed:1", true),
        case("repository", "team/unsigned:1", false),
        case("repository", "team/other:1", true),
        case("repository", "ops/tool:1", true),
        case("keyPaths", "team/signed:1", true),
        case("keyPaths", "team/other:1", true),
        case("keyPaths", "team/tampered:1", false),
        case("keyPaths", "ops/tool:1", false),
        case("wildcard", "team/signed:1", true),
        case("wildcard", "team/unsigned:1", false),
        case("matchRepository", "team/tagged:2", true),
        case("matchRepository", "team/wrongid:1", false),
        case("matchRepository", "team/signed:1", true),
        case("exactReference", "team/signed:1", true),
        case("exactReference", "team/two:1", false),
        case("several requirements", "team/signed:1", true),
        case("several requirements", "team/unsigned:1", false),
        case("several requirements", "ops/tool:1", false),
        case("several requirements", &at("team/two"), true),
    ];

    // registries.d: the lookaside for the logical name (what both read), and for the
    // registry's real address (what containers/image may use after a location rewrite).
    let registries_d = format!(
        "docker:\n  {HOST}:\n    lookaside: {url}\n  {addr}:\n    lookaside: {url}\n",
        url = lookaside.url,
        addr = registry.host()
    );
    let skopeo = Skopeo::new();
    skopeo.registries_conf(&format!(
        "[[registry]]\nprefix = \"{HOST}\"\nlocation = \"{}\"\n",
        registry.host()
    ));
    let client_d = dir.subdir("client-registries.d");
    std::fs::write(client_d.join("lookaside.yaml"), &registries_d).expect("write registries.d");
    let registry_certs = registry.cert_dir().display().to_string();

    let mut disagreements = Vec::new();
    let mut counted = 0;
    for (name, policy) in &policies {
        let policy_file = dir.write(&format!("client-{}.json", name.replace(' ', "-")), policy);
        let policies_dir = dir.subdir(&format!("portcullis-{}", name.replace(' ', "-")));
        std::fs::write(policies_dir.join("policy.json"), policy).expect("write policy");
        std::fs::write(policies_dir.join("lookaside.yaml"), &registries_d).expect("write yaml");
        let proxy = Portcullis::start(
            &ProxyConfig::new()
                .registry(Upstream::new(HOST, &registry))
                .policy_path(&policies_dir)
                .toml(),
        );
        let proxy_certs = proxy.cert_dir().display().to_string();
        for c in cases.iter().filter(|c| c.policy == *name) {
            counted += 1;
            let to = TestDir::new("pulled");
            let direct = skopeo.run(&[
                "--policy",
                &policy_file.display().to_string(),
                "--registries.d",
                &client_d.display().to_string(),
                "copy",
                "--src-cert-dir",
                &registry_certs,
                &format!("docker://{HOST}/{}", c.image),
                &format!("dir:{}", to.path().display()),
            ]);
            let to = TestDir::new("pulled");
            let through = skopeo.run(&[
                "copy",
                "--src-cert-dir",
                &proxy_certs,
                &format!("docker://{}/{HOST}/{}", proxy.addr(), c.image),
                &format!("dir:{}", to.path().display()),
            ]);
            let (d, t) = (direct.status.success(), through.status.success());
            if d != c.accepted || t != c.accepted {
                disagreements.push(format!(
                    "{name} / {}: expected {}, containers/image {}, portcullis {}\n  direct: {}\n  through: {}",
                    c.image,
                    c.accepted,
                    d,
                    t,
                    describe(&direct).lines().last().unwrap_or_default(),
                    describe(&through).lines().last().unwrap_or_default(),
                ));
            } else if !t {
                // A refusal is policy's, and says so.
                let shown = describe(&through);
                assert!(
                    shown.contains("denied") && shown.contains("signature policy scope"),
                    "{name} / {}: {shown}",
                    c.image
                );
            }
        }
    }
    assert_eq!(counted, cases.len(), "every case belongs to a policy");
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    println!(
        "signedBy corpus: {} cases, containers/image and portcullis agree on all",
        cases.len()
    );
}

#[test]
fn an_unsigned_image_and_its_layers_are_refused_on_every_listener_and_docker_fetches_no_blob_of_it_while_the_signed_one_pulls(
) {
    let dir = TestDir::new("signatures-docker");
    let gpg = Gpg::new(&dir);
    let trusted = gpg.key("portcullis trusted <trusted@example.invalid>");
    let key = dir.path().join("trusted.gpg");
    gpg.export(&trusted, &key);
    let registry = Registry::start(Auth::None);
    let lookaside = Lookaside::start(&dir);
    let signed = OciImage::random(&[4096]);
    let unsigned = OciImage::random(&[4097]);
    registry.seed(&signed, "team/signed:1");
    registry.seed(&unsigned, "team/unsigned:1");
    let manifest = signed.manifest_bytes();
    lookaside.put(
        "team/signed",
        &sha256_digest(&manifest),
        &[gpg.sign(&manifest, &format!("{HOST}/team/signed:1"), &trusted, &dir)],
    );
    let policies = dir.subdir("policies");
    std::fs::write(
        policies.join("policy.json"),
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{HOST}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}]}}}}}}"#,
            key.display()
        ),
    )
    .expect("write policy");
    std::fs::write(
        policies.join("lookaside.yaml"),
        format!("docker:\n  {HOST}:\n    lookaside: {}\n", lookaside.url),
    )
    .expect("write registries.d");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .registry(Upstream::new(HOST, &registry))
            .policy_path(&policies)
            .set("listen", "mirror", format!("127.0.0.1:{}", free_port()))
            .toml(),
    );

    // The mirror endpoint (containerd's `ns=`) and the forward proxy (dockerd's
    // HTTPS_PROXY, intercepted) decide the same, by GET and by HEAD.
    let mirror = proxy.mirror_addr().expect("mirror listener");
    let forward = proxy.proxy_addr().expect("forward proxy");
    let ca = proxy.ca_file().display().to_string();
    let status = |method: &str, url: &str, via_proxy: bool| -> String {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca,
        ])
        .args([
            "-X",
            method,
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ]);
        if method == "HEAD" {
            curl.arg("-I");
        }
        if via_proxy {
            curl.args(["--proxy", &format!("http://{forward}")]);
        }
        curl.arg(url);
        String::from_utf8_lossy(&run(curl, None, Duration::from_secs(30)).stdout).into_owned()
    };
    for method in ["GET", "HEAD"] {
        for (repo, expected) in [("team/unsigned", "403"), ("team/signed", "200")] {
            let at_mirror = format!("https://{mirror}/v2/{repo}/manifests/1?ns={HOST}");
            assert_eq!(
                status(method, &at_mirror, false),
                expected,
                "{method} {at_mirror}"
            );
            let intercepted = format!("https://{HOST}/v2/{repo}/manifests/1");
            assert_eq!(
                status(method, &intercepted, true),
                expected,
                "{method} {intercepted} via the proxy"
            );
        }
    }

    // Its layer asked for by digest, without the manifest: refused on every listener, and
    // never fetched.
    let layer = &unsigned.layers[0].digest;
    let seen = registry.requests().len();
    for (url, via_proxy) in [
        (
            format!(
                "https://{}/v2/{HOST}/team/unsigned/blobs/{layer}",
                proxy.addr()
            ),
            false,
        ),
        (
            format!("https://{mirror}/v2/team/unsigned/blobs/{layer}?ns={HOST}"),
            false,
        ),
        (
            format!("https://{HOST}/v2/team/unsigned/blobs/{layer}"),
            true,
        ),
    ] {
        assert_eq!(status("GET", &url, via_proxy), "403", "GET {url}");
    }
    assert!(
        registry.requests()[seen..]
            .iter()
            .all(|r| !r.contains(layer.as_str())),
        "the refused layer was fetched"
    );

    let dockerd = Dockerd::start();
    let before = registry.requests().len();
    let refused = dockerd.docker(&["pull", &format!("{}/{HOST}/team/unsigned:1", proxy.addr())]);
    assert!(!refused.status.success(), "an unsigned image pulled");
    let shown = describe(&refused);
    assert!(
        shown.contains("denied")
            && shown.contains("signature:registry.example.com")
            && shown.contains("no signature by a trusted key"),
        "{shown}"
    );
    let asked: Vec<String> = registry.requests()[before..].to_vec();
    assert!(
        asked.iter().all(|r| !r.contains("/blobs/")),
        "a blob of the refused image was fetched: {asked:?}"
    );
    dockerd.docker_ok(&["pull", &format!("{}/{HOST}/team/signed:1", proxy.addr())]);
}
