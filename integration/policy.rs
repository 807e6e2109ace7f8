//! Policy with real clients and registries: block lists, allow-list mode, tags and digests,
//! private-push protection by name, label and provenance (with the storage of the
//! destination inspected after a rejected push), registries.conf, the audit trail, and live
//! reloads under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::image::MANIFEST_MEDIA_TYPE;
use crate::harness::process::describe;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

/// A portcullis whose policy is the files written into its own directory.
struct Gatekeeper {
    proxy: Portcullis,
    dir: TestDir,
}

impl Gatekeeper {
    fn start(config: ProxyConfig, files: &[(&str, &str)]) -> Gatekeeper {
        Gatekeeper::start_polling(config, files, 200)
    }

    fn start_polling(config: ProxyConfig, files: &[(&str, &str)], every_ms: i64) -> Gatekeeper {
        let dir = TestDir::new("policy");
        let policies = dir.subdir("policies");
        for (name, text) in files {
            std::fs::write(policies.join(name), text).expect("write policy");
        }
        let audit = dir.path().join("audit.jsonl");
        let config = config
            .policy_path(policies)
            .set("policy", "audit_log", audit.display().to_string())
            .set("policy", "reload_interval_ms", every_ms);
        Gatekeeper {
            proxy: Portcullis::start(&config.toml()),
            dir,
        }
    }

    fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors and ConfigMaps do, so a reload never sees half a file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.dir.path().join("policies").join(name)).expect("rename policy");
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    fn skopeo_pull(&self, name: &str) -> std::process::Output {
        let cert_dir = self.proxy.cert_dir().display().to_string();
        let to = TestDir::new("pulled");
        Skopeo::new().copy(
            &format!("docker://{}/{name}", self.proxy.addr()),
            &format!("dir:{}", to.path().display()),
            &["--src-cert-dir", &cert_dir],
        )
    }

    fn skopeo_push(&self, image: &OciImage, name: &str) -> std::process::Output {
        let cert_dir = self.proxy.cert_dir().display().to_string();
        Skopeo::new().copy(
            &image.reference(),
            &format!("docker://{}/{name}", self.proxy.addr()),
            &["--dest-cert-dir", &cert_dir],
        )
    }

    fn metrics(&self) -> String {
        let admin = self.proxy.admin_addr().expect("admin listener");
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("http://{admin}/metrics")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

const BLOCK_BAD: &str = r#"
[[rule]]
id = "no-bad-images"
message = "team/bad is known to be compromised; use team/good"
action = "deny"
operations = ["pull"]
registry = "corp.example.com"
repository = "team/bad"

[[rule]]
id = "no-latest"
message = "pin a version: the latest tag is not allowed here"
action = "deny"
operations = ["pull"]
registry = "corp.example.com"
tag = "^latest$"
"#;

#[test]
fn blocked_pulls_name_the_rule_in_docker_and_skopeo_and_digests_do_not_get_around_it() {
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[16 * 1024]);
    corp.seed(&image, "team/bad:1");
    corp.seed(&image, "team/good:1");
    corp.seed(&image, "team/good:latest");
    let seeded = corp.requests().len();
    let g = Gatekeeper::start(
        ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp)),
        &[("block.toml", BLOCK_BAD)],
    );
    let dockerd = Dockerd::start();

    let docker = dockerd.docker(&[
        "pull",
        &format!("{}/corp.example.com/team/bad:1", g.proxy.addr()),
    ]);
    assert!(!docker.status.success(), "a blocked pull succeeded");
    let shown = describe(&docker);
    assert!(
        shown.contains("denied:")
            && shown.contains("no-bad-images")
            && shown.contains("compromised"),
        "{shown}"
    );

    let skopeo = g.skopeo_pull("corp.example.com/team/bad:1");
    assert!(!skopeo.status.success());
    assert!(
        describe(&skopeo).contains("no-bad-images"),
        "{}",
        describe(&skopeo)
    );

    // Blobs of the blocked repository, fetched by digest, are refused too.
    let layer = format!(
        "{}/v2/corp.example.com/team/bad/blobs/{}",
        g.proxy.url(),
        image.layers[0].digest
    );
    let blob = https(&g.proxy.ca_file()).get(&layer).expect("answer");
    assert_eq!(blob.status, 403, "{}", blob.text());
    assert_eq!(blob.oci_codes(), ["DENIED"]);
    let head = https(&g.proxy.ca_file())
        .request("HEAD", &layer, vec![])
        .expect("answer");
    assert_eq!(head.status, 403, "HEAD must be denied like GET");

    // The tag rule: latest is refused, a pinned tag of the same image passes.
    let latest = dockerd.docker(&[
        "pull",
        &format!("{}/corp.example.com/team/good:latest", g.proxy.addr()),
    ]);
    assert!(
        describe(&latest).contains("no-latest"),
        "{}",
        describe(&latest)
    );
    assert!(g
        .skopeo_pull("corp.example.com/team/good:1")
        .status
        .success());

    assert!(
        !corp.requests()[seeded..]
            .iter()
            .any(|r| r.contains("/team/bad/")),
        "a blocked request reached the registry: {:?}",
        &corp.requests()[seeded..]
    );
    let denials: Vec<_> = g
        .audit()
        .into_iter()
        .filter(|r| r["action"] == "deny")
        .collect();
    assert!(
        denials
            .iter()
            .any(|r| r["rule"] == "no-bad-images" && r["operation"] == "pull"),
        "{denials:?}"
    );
    assert!(g
        .metrics()
        .contains(r#"portcullis_policy_decisions_total{action="deny",rule="no-bad-images"}"#));
}

#[test]
fn allowlist_mode_refuses_every_registry_not_explicitly_allowed() {
    let corp = Registry::start(Auth::None);
    let example = Registry::start(Auth::None);
    let image = OciImage::random(&[8 * 1024]);
    corp.seed(&image, "team/app:1");
    example.seed(&image, "team/app:1");
    let seeded = example.requests().len();
    let g = Gatekeeper::start(
        ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp))
            .registry(Upstream::new("registry.example.com", &example)),
        &[(
            "allow.toml",
            "mode = \"allowlist\"\n[[rule]]\nid = \"corp-only\"\nmessage = \"the corporate registry\"\naction = \"allow\"\nregistry = \"corp.example.com\"\n",
        )],
    );

    assert!(g
        .skopeo_pull("corp.example.com/team/app:1")
        .status
        .success());
    let refused = g.skopeo_pull("registry.example.com/team/app:1");
    assert!(
        !refused.status.success(),
        "allow-list mode let an unlisted registry through"
    );
    assert!(
        describe(&refused).contains("allowlist"),
        "{}",
        describe(&refused)
    );
    assert!(
        example.requests()[seeded..]
            .iter()
            .all(|r| !r.contains("team/app")),
        "{:?}",
        example.requests()
    );
}

const PRIVATE: &str = r#"
public_registries = ["docker.io"]

[[private]]
id = "internal-names"
message = "team/internal-* images stay inside"
action = "reject"
name = ["team/internal-*"]

[[private]]
id = "internal-label"
message = "the image is labelled internal"
action = "reject"
labels = ["com.example.classification=internal"]

[[private]]
id = "private-layers"
message = "its layers were only ever seen in private registries"
action = "reject"
provenance = true

[[private]]
id = "beta-warning"
message = "beta images should not be public for long"
action = "warn"
labels = ["com.example.stage=beta"]
"#;

fn private_world() -> (Registry, Registry, Gatekeeper) {
    let corp = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    let g = Gatekeeper::start(
        ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp))
            .registry(Upstream::new("docker.io", &hub)),
        &[("private.toml", PRIVATE)],
    );
    (corp, hub, g)
}

fn assert_nothing_leaked(hub: &Registry, image: &OciImage) {
    for blob in image.blobs() {
        assert!(
            !hub.has_blob(&blob.digest),
            "blob {} reached the public registry's storage",
            blob.digest
        );
    }
    assert!(
        !hub.requests()
            .iter()
            .any(|r| r.starts_with("POST") || r.starts_with("PATCH") || r.starts_with("PUT")),
        "something was written to the public registry: {:?}",
        hub.requests()
    );
}

#[test]
fn a_private_name_is_rejected_at_the_first_request_of_the_push() {
    let (_corp, hub, g) = private_world();
    let image = OciImage::random(&[64 * 1024]);
    let push = g.skopeo_push(&image, "docker.io/team/internal-tool:1");
    assert!(
        !push.status.success(),
        "a private name was pushed to docker.io"
    );
    assert!(
        describe(&push).contains("internal-names"),
        "{}",
        describe(&push)
    );
    assert_nothing_leaked(&hub, &image);
}

#[test]
fn a_labelled_internal_image_is_rejected_and_not_one_blob_reaches_the_public_registry() {
    let (_corp, hub, g) = private_world();
    let image = OciImage::labelled(
        &[256 * 1024, 64 * 1024],
        &[("com.example.classification", "internal")],
    );
    let push = g.skopeo_push(&image, "docker.io/someone/app:1");
    assert!(
        !push.status.success(),
        "an internal image was pushed to docker.io"
    );
    assert!(
        describe(&push).contains("internal-label"),
        "{}",
        describe(&push)
    );
    assert_nothing_leaked(&hub, &image);
    let rejected = g
        .audit()
        .into_iter()
        .find(|r| r["rule"] == "internal-label")
        .expect("an audit record");
    assert_eq!(rejected["action"], "deny");
    assert_eq!(rejected["operation"], "push");

    // A clean image to the same place goes through, every blob with it.
    let clean = OciImage::random(&[32 * 1024]);
    let push = g.skopeo_push(&clean, "docker.io/someone/app:2");
    assert!(push.status.success(), "{}", describe(&push));
    for blob in clean.blobs() {
        assert!(
            hub.has_blob(&blob.digest),
            "{} missing after an allowed staged push",
            blob.digest
        );
    }
}

#[test]
fn an_image_pulled_from_a_private_registry_cannot_be_retagged_onto_a_public_one() {
    let (corp, hub, g) = private_world();
    let image = OciImage::random(&[128 * 1024]);
    corp.seed(&image, "team/app:1");
    let pulled = TestDir::new("pulled");
    let cert_dir = g.proxy.cert_dir().display().to_string();
    let pull = Skopeo::new().copy(
        &format!("docker://{}/corp.example.com/team/app:1", g.proxy.addr()),
        &format!("dir:{}", pulled.path().display()),
        &["--src-cert-dir", &cert_dir],
    );
    assert!(pull.status.success(), "{}", describe(&pull));

    let push = Skopeo::new().copy(
        &format!("dir:{}", pulled.path().display()),
        &format!("docker://{}/docker.io/someone/copy:1", g.proxy.addr()),
        &["--dest-cert-dir", &cert_dir],
    );
    assert!(!push.status.success(), "a private image was re-published");
    assert!(
        describe(&push).contains("private-layers"),
        "{}",
        describe(&push)
    );
    assert_nothing_leaked(&hub, &image);
}

#[test]
fn a_warning_lets_the_push_through_and_leaves_an_audit_record() {
    let (_corp, hub, g) = private_world();
    let image = OciImage::labelled(&[16 * 1024], &[("com.example.stage", "beta")]);
    let push = g.skopeo_push(&image, "docker.io/someone/beta:1");
    assert!(push.status.success(), "{}", describe(&push));
    assert!(hub.has_blob(&image.layers[0].digest));
    let warned = g
        .audit()
        .into_iter()
        .find(|r| r["action"] == "warn")
        .expect("a warn record");
    assert_eq!(warned["rule"], "beta-warning");
    assert!(
        g.metrics()
            .contains(r#"portcullis_policy_decisions_total{action="warn",rule="beta-warning"} 1"#),
        "{}",
        g.metrics()
    );
}

#[test]
fn a_registries_conf_file_is_enforced() {
    let corp = Registry::start(Auth::None);
    let example = Registry::start(Auth::None);
    let image = OciImage::random(&[8 * 1024]);
    corp.seed(&image, "team/blocked:1");
    corp.seed(&image, "team/open:1");
    example.seed(&image, "tool:1");
    let g = Gatekeeper::start(
        ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp))
            .registry(Upstream::new("registry.example.com", &example)),
        &[(
            "registries.conf",
            "unqualified-search-registries = [\"registry.example.com\"]\n\n[[registry]]\nprefix = \"corp.example.com/team/blocked\"\nlocation = \"corp.example.com/team/blocked\"\nblocked = true\n",
        )],
    );

    let blocked = g.skopeo_pull("corp.example.com/team/blocked:1");
    assert!(
        !blocked.status.success(),
        "a registries.conf block was ignored"
    );
    assert!(
        describe(&blocked).contains("registries.conf"),
        "{}",
        describe(&blocked)
    );
    assert!(g
        .skopeo_pull("corp.example.com/team/open:1")
        .status
        .success());
    // The short name is searched where registries.conf says, not in the server's list.
    assert!(g.skopeo_pull("tool:1").status.success());
    assert!(
        example
            .requests()
            .iter()
            .any(|r| r.contains("/v2/tool/manifests/1")),
        "{:?}",
        example.requests()
    );
}

#[test]
fn a_broken_policy_edit_under_load_fails_no_request_and_a_good_edit_takes_effect() {
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[8 * 1024]);
    corp.seed(&image, "team/app:1");
    let g = Gatekeeper::start(
        ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp)),
        &[("block.toml", BLOCK_BAD)],
    );
    let url = format!("{}/v2/corp.example.com/team/app/manifests/1", g.proxy.url());
    let ca = g.proxy.ca_file();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, ca, stop, ok, failed) = (
                url.clone(),
                ca.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
            );
            std::thread::spawn(move || {
                let client = https(&ca).header("Accept", MANIFEST_MEDIA_TYPE);
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    g.write(
        "block.toml",
        "[[rule]]\nid = \"broken\"\naction = \"deny\"\nrepository = \"regex:([\"\n",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        g.proxy.log().contains("policy reload refused") && g.proxy.log().contains("block.toml:"),
        "the broken edit was not reported with file and line:\n{}",
        g.proxy.log()
    );
    assert!(
        g.metrics()
            .contains(r#"portcullis_policy_reloads_total{result="error"} 1"#),
        "{}",
        g.metrics()
    );
    let still_blocked = https(&ca)
        .get(&format!(
            "{}/v2/corp.example.com/team/bad/manifests/1",
            g.proxy.url()
        ))
        .expect("answer");
    assert_eq!(
        still_blocked.status, 403,
        "the last good policy must stay in force"
    );

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the load generator barely ran"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while a broken policy was written"
    );

    let edited = Instant::now();
    g.write("block.toml", "[[rule]]\nid = \"app-frozen\"\nmessage = \"frozen\"\naction = \"deny\"\noperations = [\"pull\"]\nrepository = \"team/app\"\n");
    let took_effect = loop {
        let r = https(&ca)
            .header("Accept", MANIFEST_MEDIA_TYPE)
            .get(&url)
            .expect("answer");
        if r.status == 403 {
            break edited.elapsed();
        }
        assert!(
            edited.elapsed() < Duration::from_secs(2),
            "the good edit did not take effect within 2 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "good policy edit took effect after {took_effect:?}; {} pulls ran during the broken edit",
        ok.load(Ordering::Relaxed)
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "policy",
            "status",
            "--admin",
            &g.proxy.admin_addr().expect("admin").to_string(),
        ])
        .output()
        .expect("policy status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(status["last_result"], "ok");
}

#[test]
fn sighup_reloads_the_policy_at_once() {
    let corp = Registry::start(Auth::None);
    corp.seed(&OciImage::random(&[8 * 1024]), "team/app:1");
    let g = Gatekeeper::start_polling(
        ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp)),
        &[("block.toml", BLOCK_BAD)],
        3_600_000,
    );
    // Polling is an hour away: only the signal can make this edit take effect.
    g.write("block.toml", "[[rule]]\nid = \"app-frozen\"\nmessage = \"frozen\"\naction = \"deny\"\nrepository = \"team/app\"\n");
    let url = format!("{}/v2/corp.example.com/team/app/manifests/1", g.proxy.url());
    let before = https(&g.proxy.ca_file())
        .header("Accept", MANIFEST_MEDIA_TYPE)
        .get(&url)
        .expect("answer");
    assert_eq!(before.status, 200, "the edit took effect without a reload");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.proxy.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let start = Instant::now();
    loop {
        let r = https(&g.proxy.ca_file())
            .header("Accept", MANIFEST_MEDIA_TYPE)
            .get(&url)
            .expect("answer");
        if r.status == 403 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "SIGHUP did not reload the policy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn registries_conf_mirrors_and_location_rewrites_serve_pulls() {
    let corp = Registry::start(Auth::None);
    let mirror = Registry::start(Auth::None);
    let image = OciImage::random(&[8 * 1024]);
    mirror.seed(&image, "team/app:1");
    corp.seed(&image, "team/moved:1");
    let g = Gatekeeper::start(
        ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::new("corp.example.com", &corp))
            .registry(Upstream::new("mirror.example.com", &mirror)),
        &[(
            "registries.conf",
            "[[registry]]\nprefix = \"corp.example.com\"\nlocation = \"corp.example.com\"\n\n[[registry.mirror]]\nlocation = \"mirror.example.com\"\n\n[[registry]]\nprefix = \"old.example.com/team\"\nlocation = \"corp.example.com/team\"\n",
        )],
    );

    // Only the mirror has team/app: the pull succeeds because the mirror is tried first.
    let pulled = g.skopeo_pull("corp.example.com/team/app:1");
    assert!(pulled.status.success(), "{}", describe(&pulled));
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /v2/team/app/blobs/")),
        "{:?}",
        mirror.requests()
    );
    // A name under a rewritten prefix is served from its new location.
    let moved = g.skopeo_pull("old.example.com/team/moved:1");
    assert!(moved.status.success(), "{}", describe(&moved));
    assert!(
        corp.requests()
            .iter()
            .any(|r| r.starts_with("GET /v2/team/moved/manifests/1")),
        "{:?}",
        corp.requests()
    );
}

const BLOCK_PUSHES: &str = r#"
[[rule]]
id = "no-team-pushes"
message = "team images are published by CI only"
action = "deny"
operations = ["push"]
registry = "docker.io"
repository = "team/*"

[[rule]]
id = "untrusted"
message = "untrusted.example.com is not to be used"
action = "deny"
registry = "untrusted.example.com"
"#;

#[test]
fn every_client_prints_the_reason_of_a_push_denial() {
    let hub = Registry::start(Auth::None);
    let untrusted = Registry::start(Auth::None);
    let g = Gatekeeper::start(
        ProxyConfig::new()
            .search(&["docker.io"])
            .registry(Upstream::new("docker.io", &hub))
            .registry(Upstream::new("untrusted.example.com", &untrusted)),
        &[("block.toml", BLOCK_PUSHES)],
    );
    let image = OciImage::random(&[32 * 1024]);
    let cert_dir = g.proxy.cert_dir().display().to_string();
    // podman and buildah push from their storage: the image pulled in, by its ID.
    let id = |out: std::process::Output| {
        assert!(out.status.success(), "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout.lines().last().unwrap_or_default().trim().to_owned()
    };
    let podman = Podman::new();
    let podman_image = id(podman.run(&["pull", &image.reference()]));
    let buildah = Buildah::new();
    let buildah_image = id(buildah.run(&["pull", &image.reference()]));
    for (destination, rule) in [
        (
            "docker.io/team/app:1",
            "team images are published by CI only",
        ),
        (
            "untrusted.example.com/x/app:1",
            "untrusted.example.com is not to be used",
        ),
        (
            "elsewhere.example.com/x/app:1",
            "registry elsewhere.example.com is not configured in portcullis",
        ),
    ] {
        let to = format!("docker://{}/{destination}", g.proxy.addr());
        let outs = [
            (
                "skopeo",
                Skopeo::new().copy(&image.reference(), &to, &["--dest-cert-dir", &cert_dir]),
            ),
            (
                "podman",
                podman.run(&["push", "--cert-dir", &cert_dir, &podman_image, &to]),
            ),
            (
                "buildah",
                buildah.run(&["push", "--cert-dir", &cert_dir, &buildah_image, &to]),
            ),
        ];
        for (client, out) in outs {
            assert!(!out.status.success(), "{client} pushed to {destination}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(rule),
                "{client} did not print why:\n{}",
                describe(&out)
            );
        }
    }
    // The registries refused by name were never asked anything, and nothing reached docker.io.
    // (The harness's own readiness check is the one `GET /v2/`.)
    let asked: Vec<String> = untrusted
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET /v2/ "))
        .collect();
    assert!(asked.is_empty(), "{asked:?}");
    assert_nothing_leaked(&hub, &image);
}
