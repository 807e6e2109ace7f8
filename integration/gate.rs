//! Regression tests for ways around the gate that real clients found by themselves, each
//! named after what it proves. The bypass matrix (`bypass.rs`) asserts every criterion on
//! every path; these follow one client's whole story.

use crate::harness::image::MANIFEST_MEDIA_TYPE;
use crate::harness::matrix::{backend_has_blob, Door, Img, Listener, Proto};
use crate::harness::net::free_port;
use crate::harness::process::describe;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const EXAMPLE: &str = "registry.example.com";

/// A portcullis in front of `registry.example.com` and `docker.io`, with `policy`.
fn gatekeeper(example: &Registry, hub: &Registry, policy: &str) -> (Portcullis, TestDir) {
    let dir = TestDir::new("gate-policy");
    std::fs::write(dir.path().join("policy.toml"), policy).expect("write policy");
    let config = ProxyConfig::new()
        .search(&[EXAMPLE])
        .set("listen", "mirror", format!("127.0.0.1:{}", free_port()))
        .set(
            "policy",
            "paths",
            toml::Value::Array(vec![dir
                .path()
                .join("policy.toml")
                .display()
                .to_string()
                .into()]),
        )
        .registry(Upstream::new(EXAMPLE, example))
        .registry(Upstream::new("docker.io", hub));
    (Portcullis::start(&config.toml()), dir)
}

#[test]
fn dockerd_cannot_get_a_blocked_digest_by_falling_back_to_its_tag() {
    let example = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    let image = OciImage::random(&[8 * 1024]);
    example.seed(&image, "team/app:1");
    let digest = crate::harness::image::sha256_digest(&image.manifest_bytes());
    let policy = format!(
        "[[rule]]\nid = \"known-bad\"\nmessage = \"this build is known to be compromised\"\naction = \"deny\"\ndigest = \"{digest}\"\n"
    );
    let (proxy, _dir) = gatekeeper(&example, &hub, &policy);
    let dockerd = Dockerd::start();

    // dockerd asks by digest first; refused, it used to fall back to the tag and report
    // "Downloaded newer image".
    let by_digest = dockerd.docker(&[
        "pull",
        &format!("{}/{EXAMPLE}/team/app@{digest}", proxy.addr()),
    ]);
    assert!(!by_digest.status.success(), "a blocked digest was pulled");
    let by_tag = dockerd.docker(&["pull", &format!("{}/{EXAMPLE}/team/app:1", proxy.addr())]);
    let shown = describe(&by_tag);
    assert!(
        !by_tag.status.success(),
        "the blocked digest was pulled by its tag: {shown}"
    );
    assert!(shown.contains("known-bad"), "{shown}");
    assert!(!shown.contains("Downloaded newer image"), "{shown}");

    // HEAD by tag is decided on the verified digest too, and over HTTP/2 the denial is a
    // 403, not a stream reset.
    let door = Door::of(&proxy, Listener::Registry);
    let url = door.repo_url(EXAMPLE, "team/app", "manifests/1");
    for proto in [Proto::H1, Proto::H2] {
        let head = door.send(
            proto,
            "HEAD",
            &url,
            &[("Accept", MANIFEST_MEDIA_TYPE)],
            None,
        );
        assert_eq!(head.status, 403, "{}", head.detail());
    }
}

#[test]
fn a_denied_head_is_a_403_over_http2_on_every_listener() {
    let example = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    let policy = "[[rule]]\nid = \"no-team\"\nmessage = \"team/ is closed\"\naction = \"deny\"\nrepository = \"team/\"\n";
    let (proxy, _dir) = gatekeeper(&example, &hub, policy);
    for listener in Listener::ALL {
        let door = Door::of(&proxy, listener);
        for registry in [EXAMPLE, "docker.io"] {
            let url = door.repo_url(registry, "team/app", "manifests/1");
            let head = door.send(Proto::H2, "HEAD", &url, &[], None);
            assert_eq!(
                head.status,
                403,
                "{listener:?} {registry}: {}",
                head.detail()
            );
            let get = door.send(Proto::H2, "GET", &url, &[], None);
            assert_eq!(get.status, 403, "{listener:?} {registry}: {}", get.detail());
            assert_eq!(get.oci_codes(), ["DENIED"], "{}", get.detail());
        }
    }
}

#[test]
fn containerds_ns_is_served_from_the_registry_it_names_or_refused_and_never_forwarded() {
    let example = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    // The same name with different content on both: a swap would show in the digest.
    let ours = Img::plain();
    let theirs = Img::plain();
    ours.seed(&example, "team/app", "1");
    theirs.seed(&hub, "team/app", "1");
    let blocked = Img::plain();
    blocked.seed(&example, "team/blocked", "1");
    blocked.seed(&hub, "team/blocked", "1");
    let policy = format!(
        "[[rule]]\nid = \"example-blocked\"\nmessage = \"blocked at {EXAMPLE}\"\naction = \"deny\"\nregistry = \"{EXAMPLE}\"\nrepository = \"team/blocked\"\n"
    );
    let (proxy, _dir) = gatekeeper(&example, &hub, &policy);
    let mirror = proxy.mirror_addr().expect("mirror listener");
    let client = https(&proxy.ca_file()).header("Accept", MANIFEST_MEDIA_TYPE);
    let get = |path: &str| {
        client
            .get(&format!("https://{mirror}{path}"))
            .expect("mirror answers")
    };

    // What `ctr images pull --hosts-dir` sends for registry.example.com/team/app:1.
    let served = get("/v2/team/app/manifests/1?ns=registry.example.com");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(
        served.header("Docker-Content-Digest"),
        Some(ours.digest.as_str())
    );
    assert_eq!(
        served.header("Portcullis-Resolved-Name"),
        Some("registry.example.com/team/app")
    );
    // Without ns the mirror is docker.io's, as for dockerd.
    let hubs = get("/v2/team/app/manifests/1");
    assert_eq!(
        hubs.header("Docker-Content-Digest"),
        Some(theirs.digest.as_str())
    );
    // registry.example.com's policy applies to its names, whatever the listener.
    let denied = get("/v2/team/blocked/manifests/1?ns=registry.example.com");
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(
        denied.text().contains("example-blocked"),
        "{}",
        denied.text()
    );
    // A registry portcullis does not know is refused, never guessed.
    let unknown = get("/v2/team/app/manifests/1?ns=evil.example.net");
    assert_eq!(unknown.status, 403, "{}", unknown.text());
    assert_eq!(unknown.oci_codes(), ["DENIED"]);
    // The blob of registry.example.com's image comes from registry.example.com.
    let blob = get(&format!(
        "/v2/team/app/blobs/{}?ns=registry.example.com",
        ours.layer_digest()
    ));
    assert_eq!(blob.status, 200, "{}", blob.text());
    assert!(backend_has_blob(&example, "team/app", &ours.layer_digest()));
    assert!(
        !example
            .requests()
            .iter()
            .chain(hub.requests().iter())
            .any(|r| r.contains("ns=")),
        "ns reached an upstream: {:?}",
        example.requests()
    );
}
