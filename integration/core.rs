//! Core scenarios: real clients push and pull through portcullis to real registries.
//!
//! Each test starts its own registries and its own `portcullis serve`.

use std::time::Duration;

use crate::harness::http::raw_oci_codes;
use crate::harness::image::{assert_same_image, MANIFEST_MEDIA_TYPE};
use crate::harness::process::describe;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

/// portcullis in front of one plain registry standing in for `corp.example.com`.
fn proxy_for_corp(corp: &Registry) -> Portcullis {
    Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .push("corp.example.com")
            .registry(Upstream::new("corp.example.com", corp))
            .toml(),
    )
}

/// Copies `from` into a fresh `dir:` layout and returns the directory.
fn copy_into_dir(skopeo: &Skopeo, from: &str, cert_dir: &str) -> TestDir {
    let dir = TestDir::new("readback");
    let to = format!("dir:{}", dir.path().display());
    let out = skopeo.copy(from, &to, &["--src-cert-dir", cert_dir]);
    assert!(
        out.status.success(),
        "copy {from} -> {to} failed:\n{}",
        describe(&out)
    );
    dir
}

#[test]
fn skopeo_pushes_through_portcullis_and_reads_back_identical_bytes_by_tag_and_digest() {
    let corp = Registry::start(Auth::None);
    let proxy = proxy_for_corp(&corp);
    let image = OciImage::random(&[4 * 1024, 1024 * 1024, 3 * 1024 * 1024]);
    let skopeo = Skopeo::new();
    let cert_dir = proxy.cert_dir().display().to_string();
    let by_tag = format!("docker://{}/corp.example.com/team/app:1", proxy.addr());
    let by_digest = format!(
        "docker://{}/corp.example.com/team/app@{}",
        proxy.addr(),
        image.manifest_digest
    );

    let push = skopeo.copy(&image.reference(), &by_tag, &["--dest-cert-dir", &cert_dir]);
    assert!(
        push.status.success(),
        "push through portcullis failed:\n{}",
        describe(&push)
    );

    for blob in image.blobs() {
        assert!(
            corp.has_blob(&blob.digest),
            "corp registry lacks {}",
            blob.digest
        );
    }
    let manifest = https(&proxy.ca_file())
        .header("Accept", MANIFEST_MEDIA_TYPE)
        .get(&format!(
            "{}/v2/corp.example.com/team/app/manifests/1",
            proxy.url()
        ))
        .expect("GET the manifest through portcullis");
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    assert_eq!(
        manifest.header("Portcullis-Resolved-Name"),
        Some("corp.example.com/team/app")
    );
    assert_eq!(
        manifest.header("Docker-Content-Digest"),
        Some(image.manifest_digest.as_str())
    );
    assert_same_image(&image, copy_into_dir(&skopeo, &by_tag, &cert_dir).path());
    assert_same_image(&image, copy_into_dir(&skopeo, &by_digest, &cert_dir).path());
}

#[test]
fn dockerd_pushes_to_corp_and_pulls_a_short_name_found_on_the_second_search_registry() {
    let corp = Registry::start(Auth::None);
    let example = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    hub.seed(
        &OciImage::random(&[64 * 1024, 128 * 1024]),
        "library/fedora:latest",
    );
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["registry.example.com", "docker.io"])
            .push("corp.example.com")
            .registry(Upstream::new("corp.example.com", &corp))
            .registry(Upstream::new("registry.example.com", &example))
            .registry(Upstream::new("docker.io", &hub))
            .toml(),
    );
    let dockerd = Dockerd::start();
    let app = format!("{}/corp.example.com/team/app:1", proxy.addr());
    dockerd.import_image(&app, &[("app.txt", b"the app\n")]);

    let push = dockerd.docker(&["push", &app]);
    assert!(
        push.status.success(),
        "docker push through portcullis failed:\n{}",
        describe(&push)
    );
    assert!(
        String::from_utf8_lossy(&push.stdout).contains("digest: sha256:"),
        "{}",
        describe(&push)
    );

    let pull = dockerd.docker(&["pull", &format!("{}/fedora", proxy.addr())]);
    assert!(
        pull.status.success(),
        "docker pull fedora failed:\n{}",
        describe(&pull)
    );
    assert!(
        String::from_utf8_lossy(&pull.stdout).contains("Downloaded newer image"),
        "{}",
        describe(&pull)
    );
    assert!(
        proxy.log().contains("docker.io/library/fedora"),
        "portcullis did not log the fully qualified name:\n{}",
        proxy.log()
    );
    let asked_first = example.requests();
    assert!(
        asked_first
            .iter()
            .any(|r| r.contains("/v2/fedora/manifests/latest")),
        "registry.example.com was not searched first: {asked_first:?}"
    );
    let served = hub.requests();
    assert!(
        served
            .iter()
            .any(|r| r.starts_with("GET /v2/library/fedora/blobs/")),
        "the docker.io stand-in served no fedora blob: {served:?}"
    );
}

/// Memory must not grow with blob size: a 1 GiB layer, pushed and then pulled back, costs
/// portcullis about what a small one does (it streams; nothing is buffered whole).
#[test]
fn a_one_gib_layer_goes_through_portcullis_both_ways_in_less_than_100_mib_of_memory() {
    let corp = Registry::start(Auth::None);
    let proxy = proxy_for_corp(&corp);
    let image = OciImage::random(&[1 << 30, 16 * 1024]);
    let cert_dir = proxy.cert_dir().display().to_string();
    let reference = format!("docker://{}/corp.example.com/team/big:1", proxy.addr());

    let sampler = proxy.sample_rss(Duration::from_millis(50));
    let push = Skopeo::new().copy(
        &image.reference(),
        &reference,
        &["--dest-cert-dir", &cert_dir],
    );
    let peak_kib = sampler.peak_kib();

    assert!(
        push.status.success(),
        "1 GiB push failed:\n{}",
        describe(&push)
    );
    assert!(
        corp.has_blob(&image.layers[0].digest),
        "the 1 GiB layer did not arrive"
    );
    println!(
        "portcullis peak RSS during a 1 GiB push: {} KiB ({} MiB)",
        peak_kib,
        peak_kib / 1024
    );
    assert!(peak_kib > 0, "RSS was never sampled");
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB is not below 100 MiB"
    );

    // Back through portcullis (digest-verified as it streams), into a dir: layout.
    let sampler = proxy.sample_rss(Duration::from_millis(50));
    let dir = copy_into_dir(&Skopeo::new(), &reference, &cert_dir);
    let peak_kib = sampler.peak_kib();
    let layer = &image.layers[0];
    let hex = layer.digest.trim_start_matches("sha256:");
    let pulled = std::fs::metadata(dir.path().join(hex)).map(|m| m.len());
    assert_eq!(
        pulled.ok(),
        Some(layer.size),
        "the pulled 1 GiB layer is missing or has the wrong size"
    );
    println!(
        "portcullis peak RSS during a 1 GiB pull: {} KiB ({} MiB)",
        peak_kib,
        peak_kib / 1024
    );
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB during the pull is not below 100 MiB"
    );
}

/// Sends `request` raw, expects `status` and OCI `code`, then checks the server still answers.
fn refuses(proxy: &Portcullis, request: &[u8], status: u16, code: Option<&str>) {
    let shown = String::from_utf8_lossy(&request[..request.len().min(120)]).into_owned();
    let (got, answer) = raw_tls(proxy.addr(), &proxy.ca_file(), request)
        .unwrap_or_else(|e| panic!("no answer to {shown:?}: {e}"));
    assert_eq!(got, status, "wrong status for {shown:?}:\n{answer}");
    if let Some(code) = code {
        assert_eq!(
            raw_oci_codes(&answer),
            [code],
            "wrong OCI code for {shown:?}:\n{answer}"
        );
    }
    let ping = https(&proxy.ca_file())
        .get(&format!("{}/v2/", proxy.url()))
        .unwrap_or_else(|e| panic!("GET /v2/ failed after {shown:?}: {e}"));
    assert!(
        matches!(ping.status, 200 | 401),
        "GET /v2/ after {shown:?}: {}",
        ping.status
    );
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

#[test]
fn portcullis_refuses_bad_names_paths_hosts_digests_and_headers_and_keeps_serving() {
    let corp = Registry::start(Auth::None);
    let proxy = proxy_for_corp(&corp);

    refuses(
        &proxy,
        &get("/v2/UPPER/manifests/x"),
        400,
        Some("NAME_INVALID"),
    );
    refuses(
        &proxy,
        &get("/v2/corp.example.com/../etc/manifests/x"),
        400,
        Some("NAME_INVALID"),
    );
    refuses(
        &proxy,
        &get("/v2/corp.example.com/team/%2e%2e/app/manifests/1"),
        400,
        Some("NAME_INVALID"),
    );
    refuses(
        &proxy,
        &get("/v2/corp.example.com/%2E%2E/manifests/1"),
        400,
        Some("NAME_INVALID"),
    );
    refuses(
        &proxy,
        &get("/v2/evil.example.net/x/manifests/1"),
        403,
        Some("DENIED"),
    );
    refuses(
        &proxy,
        &get("/v2/x/blobs/sha256:zz"),
        400,
        Some("DIGEST_INVALID"),
    );
    let huge = format!(
        "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    refuses(&proxy, huge.as_bytes(), 431, None);
    assert!(
        corp.requests().iter().all(|r| !r.contains("evil")),
        "{:?}",
        corp.requests()
    );

    let processes = proxy.process_tree();
    drop(proxy);
    assert!(
        processes.iter().all(|p| !p.is_alive()),
        "portcullis outlived its test"
    );
}

#[test]
fn a_blob_cut_short_by_the_upstream_reaches_the_client_as_an_error() {
    let upstream = TruncatingUpstream::start(1024 * 1024);
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::at(
                "corp.example.com",
                &upstream.url(),
                upstream.ca_file(),
            ))
            .toml(),
    );
    let url = format!(
        "{}/v2/corp.example.com/team/app/blobs/{}",
        proxy.url(),
        upstream.blob_digest()
    );

    let answer = https(&proxy.ca_file()).get(&url);

    assert!(
        upstream.request_count() > 0,
        "portcullis never asked the upstream"
    );
    if let Ok(response) = answer {
        panic!(
            "a truncated blob read as a complete answer: status {}, {} of {} bytes",
            response.status,
            response.body.len(),
            upstream.blob_size()
        );
    }
    let ping = https(&proxy.ca_file())
        .get(&format!("{}/v2/", proxy.url()))
        .expect("GET /v2/ afterwards");
    assert!(matches!(ping.status, 200 | 401));
}

/// Pulls `corp.example.com/team/app:1` through `proxy` anonymously and compares it.
fn pull_through_and_compare(proxy: &Portcullis, image: &OciImage) {
    let cert_dir = proxy.cert_dir().display().to_string();
    let reference = format!("docker://{}/corp.example.com/team/app:1", proxy.addr());
    assert_same_image(
        image,
        copy_into_dir(&Skopeo::new(), &reference, &cert_dir).path(),
    );
}

#[test]
fn portcullis_logs_in_to_an_htpasswd_upstream_with_a_password_from_the_environment() {
    let corp = Registry::start(Auth::Htpasswd {
        user: "alice",
        password: "wonderland",
    });
    let image = OciImage::random(&[8 * 1024, 512 * 1024]);
    corp.seed(&image, "team/app:1");
    let proxy = Portcullis::start_with_env(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(
                Upstream::new("corp.example.com", &corp)
                    .credentials_from_env("alice", "CORP_PASSWORD"),
            )
            .toml(),
        &[("CORP_PASSWORD", "wonderland")],
    );

    pull_through_and_compare(&proxy, &image);

    assert!(
        !proxy.log().contains("wonderland"),
        "the password reached the log"
    );
}

#[test]
fn portcullis_fetches_tokens_for_a_token_auth_upstream() {
    let tokens = TokenServer::start(&[("bob", "builder")]);
    let corp = Registry::start(Auth::Token(&tokens));
    let image = OciImage::random(&[8 * 1024, 512 * 1024]);
    corp.seed(&image, "team/app:1");
    let seeding_requests = tokens.request_count();
    let proxy = Portcullis::start_with_env(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(
                Upstream::new("corp.example.com", &corp)
                    .credentials_from_env("bob", "CORP_PASSWORD")
                    .token_host(&tokens.host()),
            )
            .toml(),
        &[("CORP_PASSWORD", "builder")],
    );

    pull_through_and_compare(&proxy, &image);

    let asked = &tokens.requests()[seeding_requests..];
    assert!(
        asked.iter().any(|r| r.user.as_deref() == Some("bob")
            && r.granted
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:team/app:") && s.contains("pull"))),
        "portcullis never got a pull token for team/app: {asked:?}"
    );
}
