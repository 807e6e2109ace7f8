//! The harness proves itself on real parts, without portcullis: real registries take
//! pushes from skopeo and dockerd, the token server is really consulted, the faulty
//! upstream really cuts blobs short, and every process is gone afterwards.

use crate::harness::image::{self, sha256_digest};
use crate::harness::process::describe;
use crate::harness::shape;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

/// Drops `it`, then checks none of the processes it had started is alive.
fn stop_and_expect_gone<T>(it: T, processes: Vec<ProcessId>) {
    assert!(!processes.is_empty());
    drop(it);
    let alive: Vec<_> = processes.iter().filter(|p| p.is_alive()).collect();
    assert!(alive.is_empty(), "still running after drop: {alive:?}");
}

fn three_layer_image() -> OciImage {
    OciImage::random(&[3 * 1024, 256 * 1024, 2 * 1024 * 1024])
}

/// Pushes `image` to `reference` with skopeo, reads the manifest back and checks it.
fn push_and_read_back(skopeo: &Skopeo, image: &OciImage, reference: &str, tls: &[&str]) {
    let mut dest = Vec::new();
    let mut src = Vec::new();
    for pair in tls.chunks(2) {
        dest.push(format!("--dest-{}", pair[0]));
        dest.push(pair[1].to_string());
        src.push(format!("--{}", pair[0]));
        src.push(pair[1].to_string());
    }
    let dest: Vec<&str> = dest.iter().map(String::as_str).collect();
    let src: Vec<&str> = src.iter().map(String::as_str).collect();
    let out = skopeo.copy(&image.reference(), reference, &dest);
    assert!(
        out.status.success(),
        "push to {reference} failed:\n{}",
        describe(&out)
    );
    let manifest = skopeo.inspect_raw(reference, &src);
    assert_eq!(
        sha256_digest(&manifest),
        image.manifest_digest,
        "manifest read back differs"
    );
}

#[test]
fn skopeo_pushes_to_a_plain_tls_registry_and_reads_the_same_manifest_back() {
    let registry = Registry::start(Auth::None);
    let image = three_layer_image();
    let cert_dir = registry.cert_dir().display().to_string();

    push_and_read_back(
        &Skopeo::new(),
        &image,
        &format!("docker://{}/selftest/plain:1", registry.host()),
        &["cert-dir", &cert_dir],
    );

    for blob in image.blobs() {
        assert!(
            registry.has_blob(&blob.digest),
            "registry storage lacks {}",
            blob.digest
        );
    }
    let tree = registry.process_tree();
    stop_and_expect_gone(registry, tree);
}

#[test]
fn skopeo_needs_the_registry_ca_to_push() {
    let registry = Registry::start(Auth::None);
    let image = OciImage::random(&[1024]);

    let out = Skopeo::new().copy(
        &image.reference(),
        &format!("docker://{}/selftest/untrusted:1", registry.host()),
        &[],
    );

    assert!(
        !out.status.success(),
        "push without the CA succeeded:\n{}",
        describe(&out)
    );
    assert!(describe(&out).contains("certificate"), "{}", describe(&out));
}

#[test]
fn skopeo_pushes_to_an_htpasswd_registry_with_credentials_only() {
    let registry = Registry::start(Auth::Htpasswd {
        user: "alice",
        password: "wonderland",
    });
    let image = three_layer_image();
    let cert_dir = registry.cert_dir().display().to_string();
    let reference = format!("docker://{}/selftest/basic:1", registry.host());
    let skopeo = Skopeo::new();

    let anonymous = skopeo.copy(
        &image.reference(),
        &reference,
        &["--dest-cert-dir", &cert_dir],
    );
    assert!(
        !anonymous.status.success(),
        "anonymous push succeeded:\n{}",
        describe(&anonymous)
    );

    push_and_read_back(
        &skopeo,
        &image,
        &reference,
        &["cert-dir", &cert_dir, "creds", "alice:wonderland"],
    );
    assert!(registry.has_blob(&image.config.digest));
}

#[test]
fn skopeo_pushes_to_a_token_registry_after_asking_the_token_server() {
    let tokens = TokenServer::start(&[("bob", "builder")]);
    let registry = Registry::start(Auth::Token(&tokens));
    let image = three_layer_image();
    let cert_dir = registry.cert_dir().display().to_string();
    let reference = format!("docker://{}/selftest/token:1", registry.host());
    let skopeo = Skopeo::new();

    let anonymous = skopeo.copy(
        &image.reference(),
        &reference,
        &["--dest-cert-dir", &cert_dir],
    );
    assert!(
        !anonymous.status.success(),
        "anonymous push succeeded:\n{}",
        describe(&anonymous)
    );
    let anonymous_requests = tokens.request_count();
    assert!(
        anonymous_requests > 0,
        "the anonymous push never asked for a token"
    );

    push_and_read_back(
        &skopeo,
        &image,
        &reference,
        &["cert-dir", &cert_dir, "creds", "bob:builder"],
    );

    let requests = tokens.requests();
    assert!(requests.len() > anonymous_requests);
    let granted: Vec<_> = requests.iter().filter(|r| r.granted).collect();
    assert!(
        granted.iter().any(|r| r.user.as_deref() == Some("bob")
            && r.service == tokens.service()
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:selftest/token:") && s.contains("push"))),
        "no push token was granted to bob: {requests:?}"
    );
    for blob in image.blobs() {
        assert!(
            registry.has_blob(&blob.digest),
            "registry storage lacks {}",
            blob.digest
        );
    }
    let tree = registry.process_tree();
    stop_and_expect_gone(registry, tree);
}

#[test]
fn dockerd_imports_an_image_and_pushes_it_to_a_loopback_registry() {
    let registry = Registry::start(Auth::None);
    let dockerd = Dockerd::start();
    let reference = format!("{}/selftest/docker:1", registry.host());

    dockerd.import_image(&reference, &[("hello.txt", b"hello from the harness\n")]);
    let out = dockerd.docker_ok(&["push", &reference]);

    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let digest = text
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{text}"));
    assert!(
        registry.has_blob(digest),
        "registry lacks the pushed manifest {digest}"
    );
    let blobs = registry.blob_digests().len();
    assert!(
        blobs >= 3,
        "expected manifest, config and layer blobs, found {blobs}"
    );
    let tree = dockerd.process_tree();
    assert!(
        tree.len() >= 2,
        "dockerd should run its own containerd: {tree:?}"
    );
    stop_and_expect_gone(dockerd, tree);
}

#[test]
fn truncating_upstream_cuts_every_blob_short() {
    let upstream = TruncatingUpstream::start(256 * 1024);
    let client = https(&upstream.ca_file());

    let ping = client
        .get(&format!("{}/v2/", upstream.url()))
        .expect("GET /v2/");
    assert_eq!(ping.status, 200);
    let blob = client.get(&format!(
        "{}/v2/any/thing/blobs/{}",
        upstream.url(),
        upstream.blob_digest()
    ));

    assert!(
        blob.is_err(),
        "a short blob read as a success: {:?}",
        blob.map(|r| (r.status, r.body.len()))
    );
    assert_eq!(upstream.request_count(), 2);
}

#[test]
fn raw_tls_reads_a_registry_error_body() {
    let registry = Registry::start(Auth::None);
    let addr = registry.host().parse().expect("socket address");

    let (status, answer) = http::raw_tls(
        addr,
        &registry.ca_file(),
        b"GET /v2/selftest/nothing/manifests/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .expect("raw request");

    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        http::raw_oci_codes(&answer),
        ["MANIFEST_UNKNOWN"],
        "{answer}"
    );
}

#[test]
fn dockerd_pulls_a_random_image_that_skopeo_pushed() {
    let registry = Registry::start(Auth::None);
    let image = OciImage::random(&[10 * 1024, 200 * 1024]);
    registry.seed(&image, "selftest/random:1");
    let dockerd = Dockerd::start();

    let pull = dockerd.docker_ok(&["pull", &format!("{}/selftest/random:1", registry.host())]);

    let text = String::from_utf8_lossy(&pull.stdout).into_owned();
    assert!(
        text.contains(&image.manifest_digest),
        "pulled something else:\n{text}"
    );
    let ids = dockerd.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        &format!("{}/selftest/random:1", registry.host()),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&ids.stdout).trim(),
        image.config.digest
    );
}

#[test]
fn podman_pulls_from_a_tls_registry_trusting_its_ca() {
    let registry = Registry::start(Auth::None);
    let image = OciImage::random(&[10 * 1024]);
    registry.seed(&image, "selftest/podman:1");
    let podman = Podman::new();
    let cert_dir = registry.cert_dir().display().to_string();
    let reference = format!("{}/selftest/podman:1", registry.host());

    let pull = podman.run(&["pull", "--cert-dir", &cert_dir, &reference]);

    assert!(
        pull.status.success(),
        "podman pull failed:\n{}",
        describe(&pull)
    );
    assert!(
        String::from_utf8_lossy(&pull.stdout)
            .contains(image.config.digest.trim_start_matches("sha256:")),
        "{}",
        describe(&pull)
    );
}

#[test]
fn proxy_config_renders_the_toml_portcullis_reads() {
    let registry = Registry::start(Auth::None);
    let toml = ProxyConfig::new()
        .search(&["registry.example.com", "docker.io"])
        .push("corp.example.com")
        .alias("myalias", "registry.example.com/team/tool")
        .registry(
            Upstream::new("docker.io", &registry)
                .credentials_from_env("alice", "CORP_PASSWORD")
                .token_host("127.0.0.1:5009"),
        )
        .toml();
    let state = TestDir::new("state");
    let full = crate::harness::portcullis::complete(
        &toml,
        state.path(),
        "127.0.0.1:5443".parse().unwrap(),
        "127.0.0.1:5444".parse().unwrap(),
        "127.0.0.1:5445".parse().unwrap(),
    );

    let config: toml::Table = full.parse().expect("valid TOML");
    assert_eq!(config["listen"]["admin"].as_str(), Some("127.0.0.1:5444"));
    assert_eq!(config["listen"]["proxy"].as_str(), Some("127.0.0.1:5445"));
    assert_eq!(
        config["state_dir"].as_str(),
        Some(state.path().to_str().unwrap())
    );
    assert_eq!(
        config["listen"]["registry"].as_str(),
        Some("127.0.0.1:5443")
    );
    assert_eq!(config["tls"]["names"].as_array().map(Vec::len), Some(2));
    assert_eq!(config["resolve"]["search"][1].as_str(), Some("docker.io"));
    assert_eq!(config["resolve"]["push"].as_str(), Some("corp.example.com"));
    assert_eq!(
        config["aliases"]["myalias"].as_str(),
        Some("registry.example.com/team/tool")
    );
    let upstream = &config["registry"][0];
    assert_eq!(upstream["host"].as_str(), Some("docker.io"));
    assert_eq!(upstream["endpoint"].as_str(), Some(registry.url().as_str()));
    assert_eq!(
        upstream["ca_file"].as_str(),
        Some(registry.ca_file().to_str().unwrap())
    );
    assert_eq!(
        upstream["credentials"]["password_env"].as_str(),
        Some("CORP_PASSWORD")
    );
    assert_eq!(upstream["token_hosts"][0].as_str(), Some("127.0.0.1:5009"));
    assert_eq!(upstream["response_timeout_secs"].as_integer(), Some(30));
}

#[test]
fn two_dockerds_run_side_by_side_without_sharing_anything() {
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(Dockerd::start);
        let b = s.spawn(Dockerd::start);
        (
            a.join().expect("first dockerd"),
            b.join().expect("second dockerd"),
        )
    });

    first.import_image("selftest/only-in-first:1", &[("a.txt", b"first\n")]);
    second.import_image("selftest/only-in-second:1", &[("b.txt", b"second\n")]);

    let listed = |d: &Dockerd| {
        String::from_utf8_lossy(
            &d.docker_ok(&["images", "--format", "{{.Repository}}"])
                .stdout,
        )
        .into_owned()
    };
    assert_eq!(listed(&first).trim(), "selftest/only-in-first");
    assert_eq!(listed(&second).trim(), "selftest/only-in-second");
    for dockerd in [&first, &second] {
        assert!(
            dockerd.private_run().join("docker").is_dir(),
            "dockerd's /run/docker was not private"
        );
    }
    let (a, b) = (first.process_tree(), second.process_tree());
    assert!(
        a.iter().all(|p| !b.contains(p)),
        "the daemons share a process: {a:?} {b:?}"
    );
    stop_and_expect_gone(first, a);
    stop_and_expect_gone(second, b);
}

#[test]
fn skopeo_login_writes_only_its_private_auth_file() {
    let registry = Registry::start(Auth::Htpasswd {
        user: "carol",
        password: "secret",
    });
    let image = OciImage::random(&[1024]);
    registry.seed(&image, "selftest/login:1");
    let skopeo = Skopeo::new();
    let cert_dir = registry.cert_dir().display().to_string();
    let reference = format!("docker://{}/selftest/login:1", registry.host());

    skopeo.ok(&[
        "login",
        "--cert-dir",
        &cert_dir,
        "-u",
        "carol",
        "-p",
        "secret",
        &registry.host(),
    ]);

    let auth = std::fs::read_to_string(skopeo.authfile()).expect("read the auth file");
    assert!(
        auth.contains(&registry.host()),
        "login did not reach the private auth file: {auth}"
    );
    let manifest = skopeo.inspect_raw(&reference, &["--cert-dir", &cert_dir]);
    assert_eq!(image::sha256_digest(&manifest), image.manifest_digest);
    let stranger = Skopeo::new().run(&["inspect", "--raw", "--cert-dir", &cert_dir, &reference]);
    assert!(
        !stranger.status.success(),
        "another skopeo shared the login:\n{}",
        describe(&stranger)
    );
}

/// An in-process TCP server on a free loopback port: echoes when `echo`, else reads and
/// throws away everything, answering with the byte count when its client half-closes.
fn tcp_server(echo: bool) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) if echo => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = stream.write_all(&total.to_le_bytes());
            });
        }
    });
    addr
}

fn within(measured: f64, asked: f64, tolerance: f64) -> bool {
    (measured - asked).abs() <= asked * tolerance
}

#[test]
fn the_shaped_relay_gives_the_round_trip_time_it_was_asked_for() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let relay = shape::ShapedRelay::start(tcp_server(true), shape::Link::new(20, 100));
    let mut stream = std::net::TcpStream::connect(relay.addr()).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut rtts = Vec::new();
    let mut byte = [0u8; 1];
    for i in 0..20u8 {
        let started = Instant::now();
        stream.write_all(&[i]).expect("write");
        stream.read_exact(&mut byte).expect("echo");
        assert_eq!(byte[0], i);
        rtts.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    rtts.sort_by(f64::total_cmp);
    let median = rtts[rtts.len() / 2];
    println!(
        "shaped relay asked 20 ms RTT, measured median {median:.1} ms (min {:.1}, max {:.1})",
        rtts[0],
        rtts[rtts.len() - 1]
    );
    assert!(
        within(median, 20.0, 0.2),
        "median RTT {median:.1} ms, not 20 ms ±20%: {rtts:?}"
    );
    assert!(
        rtts[0] >= 19.0,
        "no round trip may be shorter than the delay: {rtts:?}"
    );
}

#[test]
fn the_shaped_relay_gives_the_rate_it_was_asked_for_shared_by_its_connections() {
    use std::io::{Read, Write};
    use std::time::Instant;
    const BYTES: usize = 8 << 20;
    let relay = shape::ShapedRelay::start(tcp_server(false), shape::Link::new(20, 100));
    let send = |count: usize| {
        let started = Instant::now();
        let senders: Vec<_> = (0..count)
            .map(|_| {
                let addr = relay.addr();
                std::thread::spawn(move || {
                    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                    let chunk = vec![7u8; 64 * 1024];
                    for _ in 0..BYTES / chunk.len() {
                        stream.write_all(&chunk).expect("send");
                    }
                    stream
                        .shutdown(std::net::Shutdown::Write)
                        .expect("half-close");
                    let mut count = [0u8; 8];
                    stream.read_exact(&mut count).expect("the server's count");
                    u64::from_le_bytes(count)
                })
            })
            .collect();
        for s in senders {
            assert_eq!(
                s.join().expect("sender"),
                BYTES as u64,
                "every byte arrives"
            );
        }
        (count * BYTES) as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e6
    };
    let one = send(1);
    let two = send(2);
    println!("shaped relay asked 100 Mbit/s, measured {one:.1} Mbit/s on one connection, {two:.1} Mbit/s on two together");
    assert!(within(one, 100.0, 0.2), "one connection: {one:.1} Mbit/s");
    assert!(
        within(two, 100.0, 0.2),
        "two connections share one link: {two:.1} Mbit/s"
    );
    assert!(relay.bytes_up() >= 3 * BYTES as u64);
}
