//! Real networks, made on loopback ([`crate::harness::shape`]): a 256 MiB layer pushed and
//! pulled by skopeo and dockerd over a 20 ms, 100 Mbit/s link through portcullis and
//! directly (the wall times are printed, `shaped: ...`), a client that stalls mid-upload,
//! and 64 pulls from an upstream slow to answer. portcullis runs on its default timeouts
//! unless a test is about one of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::http::https;
use crate::harness::image::{assert_same_image, file_digest, XorShift};
use crate::harness::process::describe;
use crate::harness::rt::{block_on, client_tls};
use crate::harness::shape::{Link, ShapedRelay, SlowHeaders};
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const LAYER: u64 = 256 << 20;
const MIB: f64 = (1 << 20) as f64;

/// The link of the issue: 20 ms round trip, 100 Mbit/s each way.
fn link() -> Link {
    Link::new(20, 100)
}

/// The TOML with every `[[registry]]` on portcullis's own timeouts (the harness sets
/// `response_timeout_secs` for speed in other tests).
fn default_timeouts(toml: &str) -> String {
    let mut table: toml::Table = toml.parse().expect("TOML");
    if let Some(registries) = table.get_mut("registry").and_then(|r| r.as_array_mut()) {
        for registry in registries.iter_mut().filter_map(|r| r.as_table_mut()) {
            registry.remove("response_timeout_secs");
        }
    }
    table.to_string()
}

fn addr_of(registry: &Registry) -> SocketAddr {
    registry.host().parse().expect("registry address")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One portcullis in front of `corp` (as corp.example.com) on default timeouts.
fn proxy_for(corp: &Registry) -> Portcullis {
    Portcullis::start(&default_timeouts(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .push("corp.example.com")
            .registry(Upstream::new("corp.example.com", corp))
            .toml(),
    ))
}

/// Pushes `image` to `reference` and copies it back into a fresh directory, checking it is
/// the same image byte for byte; returns the wall time of each copy.
fn skopeo_round_trip(image: &OciImage, reference: &str, cert_dir: &Path) -> (Duration, Duration) {
    let skopeo = Skopeo::new();
    let cert_dir = cert_dir.display().to_string();
    let started = Instant::now();
    let push = skopeo.copy(
        &image.reference(),
        reference,
        &["--dest-cert-dir", &cert_dir],
    );
    let pushed = started.elapsed();
    assert!(
        push.status.success(),
        "push to {reference}:\n{}",
        describe(&push)
    );
    let back = TestDir::new("shaped-readback");
    let started = Instant::now();
    let pull = skopeo.copy(
        reference,
        &format!("dir:{}", back.path().display()),
        &["--src-cert-dir", &cert_dir],
    );
    let pulled = started.elapsed();
    assert!(
        pull.status.success(),
        "pull from {reference}:\n{}",
        describe(&pull)
    );
    assert_same_image(image, back.path());
    (pushed, pulled)
}

#[test]
fn skopeo_copies_a_256_mib_layer_over_a_20_ms_100_mbit_link_through_portcullis_and_directly() {
    let image = OciImage::random(&[LAYER]);
    let (corp, direct) = (Registry::start(Auth::None), Registry::start(Auth::None));
    let proxy = proxy_for(&corp);
    let via_proxy = ShapedRelay::start(proxy.addr(), link());
    let via_direct = ShapedRelay::start(addr_of(&direct), link());

    let rss = proxy.sample_rss(Duration::from_millis(50));
    let (push, pull) = skopeo_round_trip(
        &image,
        &format!("docker://{}/corp.example.com/team/big:1", via_proxy.host()),
        &proxy.cert_dir(),
    );
    let peak_mib = rss.peak_kib() as f64 / 1024.0;
    let (direct_push, direct_pull) = skopeo_round_trip(
        &image,
        &format!("docker://{}/team/big:1", via_direct.host()),
        direct.cert_dir(),
    );
    eprintln!("shaped: portcullis peak RSS {peak_mib:.0} MiB during the skopeo transfers");
    compare(
        "skopeo",
        [(push, direct_push), (pull, direct_pull)],
        [&via_proxy, &via_direct],
    );
    assert!(corp.has_blob(&image.layers[0].digest));
    // Streaming holds a few buffers per connection; holding the layer would take 256 MiB.
    assert!(
        peak_mib < 128.0,
        "portcullis peaked at {peak_mib:.0} MiB while a 256 MiB layer crossed it"
    );
}

/// Prints the push and pull wall times through portcullis beside those of the same link
/// straight to the registry, and checks that the layer really crossed each shaped link.
/// portcullis streams both ways, so over a slow link it costs about what the link costs;
/// the time bound is a sanity check that leaves room for a busy shared machine (a test's
/// timing is no performance claim), not for a layer written whole before it is sent on.
fn compare(client: &str, times: [(Duration, Duration); 2], relays: [&ShapedRelay; 2]) {
    for (what, (through, direct)) in ["push", "pull"].into_iter().zip(times) {
        eprintln!(
            "shaped: {client} {what} 256 MiB through portcullis {:.1} s, direct {:.1} s",
            secs(through),
            secs(direct)
        );
    }
    for relay in relays {
        assert!(
            relay.bytes_up() >= LAYER && relay.bytes_down() >= LAYER,
            "the layer crossed the shaped link both ways ({} up, {} down)",
            relay.bytes_up(),
            relay.bytes_down()
        );
    }
    for (what, (through, direct)) in ["push", "pull"].into_iter().zip(times) {
        assert!(
            through <= direct.mul_f64(2.5) + Duration::from_secs(5),
            "{client} {what} through portcullis took {:.1} s, directly {:.1} s",
            secs(through),
            secs(direct)
        );
    }
}

/// `docker push` then, with every local copy removed, `docker pull` of `reference`; the
/// image that comes back has the same ID and the layer's diff ID (dockerd checks it when it
/// unpacks), so the bytes are the same. Returns the wall time of each.
fn docker_round_trip(
    dockerd: &Dockerd,
    id: &str,
    reference: &str,
    diff_id: &str,
) -> (Duration, Duration) {
    dockerd.docker_ok(&["tag", id, reference]);
    let started = Instant::now();
    dockerd.docker_ok(&["push", reference]);
    let pushed = started.elapsed();
    dockerd.docker_ok(&["rmi", "-f", id]);
    let gone = dockerd.docker(&["image", "inspect", id]);
    assert!(!gone.status.success(), "{id} still present before the pull");
    let started = Instant::now();
    dockerd.docker_ok(&["pull", reference]);
    let pulled = started.elapsed();
    let inspect = |format: &str| {
        let out = dockerd.docker_ok(&["image", "inspect", "--format", format, reference]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        inspect("{{.Id}}"),
        id,
        "the image pulled back is another one"
    );
    assert_eq!(
        inspect("{{json .RootFS.Layers}}"),
        format!("[\"{diff_id}\"]")
    );
    (pushed, pulled)
}

#[test]
fn docker_pushes_and_pulls_a_256_mib_layer_over_a_20_ms_100_mbit_link_through_portcullis_and_directly(
) {
    let image = OciImage::random(&[LAYER]);
    let source = Registry::start(Auth::None);
    source.seed(&image, "src/big:1");
    let (corp, direct) = (Registry::start(Auth::None), Registry::start(Auth::None));
    let proxy = proxy_for(&corp);
    let via_proxy = ShapedRelay::start(proxy.addr(), link());
    let via_direct = ShapedRelay::start(addr_of(&direct), link());
    let dockerd = Dockerd::start();
    let original = format!("{}/src/big:1", source.host());
    dockerd.docker_ok(&["pull", &original]);
    let id = String::from_utf8_lossy(
        &dockerd
            .docker_ok(&["image", "inspect", "--format", "{{.Id}}", &original])
            .stdout,
    )
    .trim()
    .to_owned();
    let diff_id = &image.layers[0].digest;

    let (push, pull) = docker_round_trip(
        &dockerd,
        &id,
        &format!("{}/corp.example.com/team/big:docker", via_proxy.host()),
        diff_id,
    );
    let (direct_push, direct_pull) = docker_round_trip(
        &dockerd,
        &id,
        &format!("{}/team/big:docker", via_direct.host()),
        diff_id,
    );
    compare(
        "docker",
        [(push, direct_push), (pull, direct_pull)],
        [&via_proxy, &via_direct],
    );
}

/// What a client that stopped sending mid-body got back.
struct Stalled {
    /// Everything portcullis sent before closing (or before we gave up).
    answer: String,
    /// When the answer (or the close) came, counted from the stall.
    after: Duration,
}

const SENT: usize = 1 << 20;

/// `PATCH location` announcing 2 MiB, sending 1 MiB and then nothing, over TLS to `addr`;
/// waits up to `patience` for portcullis to answer or close.
fn stall_mid_upload(addr: SocketAddr, ca: &Path, location: &str, patience: Duration) -> Stalled {
    let tls = Arc::new(client_tls(ca));
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        2 * SENT
    );
    block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let mut bytes = vec![0u8; SENT];
        XorShift::fresh().fill(&mut bytes);
        stream.write_all(head.as_bytes()).await.expect("head");
        stream.write_all(&bytes).await.expect("first half");
        stream.flush().await.expect("flush");
        let stalled = Instant::now();
        let mut answer = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 16384];
        let read = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        first.get_or_insert_with(|| stalled.elapsed());
                        answer.extend_from_slice(&buf[..n]);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(patience, read).await;
        Stalled {
            answer: String::from_utf8_lossy(&answer).into_owned(),
            after: first.unwrap_or_else(|| stalled.elapsed()),
        }
    })
}

/// Starts an upload at `url` and returns its `Location` path (absolute or not).
fn start_upload(url: &str, ca: &Path) -> String {
    let start = https(ca).request("POST", url, Vec::new()).expect("POST");
    assert_eq!(start.status, 202, "upload start: {}", start.text());
    let location = start.header("location").expect("a Location").to_owned();
    match location.find("/v2/") {
        Some(at) => location[at..].to_owned(),
        None => location,
    }
}

const BODY_TIMEOUT: u64 = 3;

fn uploads_in(registry: &Registry, repository: &str) -> Vec<PathBuf> {
    let dir = registry
        .storage_dir()
        .join("docker/registry/v2/repositories")
        .join(repository)
        .join("_uploads");
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// The client was cut near the body timeout, with an answer saying why or a closed
/// connection, and portcullis logged the reason.
fn assert_cut_for_stalling(stalled: &Stalled, proxy: &Portcullis) {
    eprintln!(
        "shaped: a client stalled mid-upload was answered after {:.1} s: {:?}",
        secs(stalled.after),
        stalled
            .answer
            .lines()
            .next()
            .unwrap_or("(connection closed, no answer)")
    );
    assert!(
        stalled.after >= Duration::from_secs(BODY_TIMEOUT)
            && stalled.after < Duration::from_secs(BODY_TIMEOUT + 5),
        "cut after {:?}, the body timeout is {BODY_TIMEOUT} s",
        stalled.after
    );
    if !stalled.answer.is_empty() {
        assert!(
            stalled.answer.starts_with("HTTP/1.1 4"),
            "a stalled client is at fault, not the registry: {}",
            stalled.answer
        );
        assert!(
            stalled
                .answer
                .contains(&format!("no body data for {BODY_TIMEOUT}s")),
            "the answer should say why: {}",
            stalled.answer
        );
    }
    let log = proxy.log();
    assert!(
        log.contains(&format!("no body data for {BODY_TIMEOUT}s")),
        "portcullis should log why the upload failed:\n{log}"
    );
}

#[test]
fn a_client_stalling_mid_upload_is_cut_after_the_body_timeout_and_the_upstream_session_is_cancelled(
) {
    let corp = Registry::start(Auth::None);
    let proxy = Portcullis::start(&default_timeouts(
        &ProxyConfig::new()
            .push("corp.example.com")
            .registry(
                Upstream::new("corp.example.com", &corp)
                    .with("body_timeout_secs", BODY_TIMEOUT as i64),
            )
            .toml(),
    ));
    let location = start_upload(
        &format!(
            "{}/v2/corp.example.com/team/app/blobs/uploads/",
            proxy.url()
        ),
        &proxy.ca_file(),
    );
    // The client holds portcullis's id only; portcullis asks the registry about the session
    // at its latest upstream location (the registry's log shows that it did).
    let status_of_session = || {
        https(&proxy.ca_file())
            .get(&format!("{}{location}", proxy.url()))
            .expect("GET the session")
    };
    let alive = status_of_session();
    assert_eq!(
        alive.status,
        204,
        "the upload session is open upstream: {}",
        alive.text()
    );

    let stalled = stall_mid_upload(
        proxy.addr(),
        &proxy.ca_file(),
        &location,
        Duration::from_secs(BODY_TIMEOUT + 10),
    );
    assert_cut_for_stalling(&stalled, &proxy);
    let dead = status_of_session();
    let asked: Vec<String> = corp
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /v2/team/app/blobs/uploads/"))
        .collect();
    assert!(
        asked.len() == 2 && asked[0].ends_with(" 204") && asked[1].ends_with(" 404"),
        "the registry answered both status checks: {asked:?}"
    );
    assert_eq!(
        dead.status,
        404,
        "the upstream session is over: {}",
        dead.text()
    );
    // distribution says UNKNOWN or, for a session whose size no longer matches its signed
    // `_state`, INVALID; either way with 404: the session is over.
    let codes = dead.oci_codes();
    assert!(
        codes == ["BLOB_UPLOAD_UNKNOWN"] || codes == ["BLOB_UPLOAD_INVALID"],
        "{}",
        dead.text()
    );
    assert!(corp.blob_digests().is_empty(), "no blob may have landed");
    assert!(
        proxy
            .log()
            .contains("asked the upstream to cancel the upload session"),
        "portcullis cancels the session it cut:\n{}",
        proxy.log()
    );
    // distribution keeps the part it received on disk until its upload purge: the session
    // is dead to it (its size no longer matches the signed `_state`), so DELETE gets 404.
    eprintln!(
        "shaped: after the cut, distribution still holds {} upload directories until its purge",
        uploads_in(&corp, "team/app").len()
    );
}

#[test]
fn a_client_stalling_mid_staged_upload_is_cut_and_leaves_nothing_in_staging() {
    let hub = Registry::start(Auth::None);
    let dir = TestDir::new("shaped-policy");
    let policy = dir.write("private.toml", STAGE_DOCKER_IO_PUSHES);
    let proxy = Portcullis::start(&default_timeouts(
        &ProxyConfig::new()
            .registry(
                Upstream::new("docker.io", &hub).with("body_timeout_secs", BODY_TIMEOUT as i64),
            )
            .policy_path(policy)
            .toml(),
    ));
    let staging = proxy.staging_dir();
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(&staging)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    };
    let location = start_upload(
        &format!("{}/v2/docker.io/team/app/blobs/uploads/", proxy.url()),
        &proxy.ca_file(),
    );
    assert!(location.contains("pcs-"), "the push is staged: {location}");

    let stalled = stall_mid_upload(
        proxy.addr(),
        &proxy.ca_file(),
        &location,
        Duration::from_secs(BODY_TIMEOUT + 10),
    );
    assert_cut_for_stalling(&stalled, &proxy);
    assert!(
        files().is_empty(),
        "half-written files left in staging: {:?}",
        files()
    );
    let status = https(&proxy.ca_file())
        .get(&format!("{}{location}", proxy.url()))
        .expect("GET the session");
    assert_eq!(
        status.status,
        404,
        "the staged session is gone: {}",
        status.text()
    );
    assert_eq!(status.oci_codes(), vec!["BLOB_UPLOAD_UNKNOWN"]);
    assert!(
        uploads_in(&hub, "team/app").is_empty(),
        "nothing went upstream"
    );
    assert!(hub.blob_digests().is_empty());
}

#[test]
fn sixty_four_pulls_from_an_upstream_slow_to_answer_all_complete_with_bounded_memory() {
    const PULLS: usize = 64;
    const BLOB: u64 = 4 << 20;
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[BLOB]);
    corp.seed(&image, "team/slow:1");
    let delay = Duration::from_secs(2);
    let slow = SlowHeaders::start(addr_of(&corp), &corp.ca_file(), delay);
    let started = Instant::now();
    let ping = https(&slow.ca_file())
        .get(&format!("{}/v2/", slow.url()))
        .expect("ping");
    assert_eq!(ping.status, 200);
    assert!(
        started.elapsed() >= delay,
        "the upstream is not slow: {:?}",
        started.elapsed()
    );
    let proxy = Portcullis::start(&default_timeouts(
        &ProxyConfig::new()
            .search(&["corp.example.com"])
            .registry(Upstream::at(
                "corp.example.com",
                &slow.url(),
                slow.ca_file(),
            ))
            .toml(),
    ));
    let digest = image.layers[0].digest.clone();
    let url = format!(
        "{}/v2/corp.example.com/team/slow/blobs/{digest}",
        proxy.url()
    );
    let baseline_mib = proxy.rss_kib() as f64 / 1024.0;
    let rss = proxy.sample_rss(Duration::from_millis(20));
    let started = Instant::now();
    // One curl, 64 HTTP/1.1 connections at once: 64 connections upstream as well.
    let out = TestDir::new("shaped-pulls");
    let mut args = vec![
        "-s".to_owned(),
        "--http1.1".to_owned(),
        "--parallel".to_owned(),
        "--parallel-immediate".to_owned(),
        "--parallel-max".to_owned(),
        PULLS.to_string(),
        "--cacert".to_owned(),
        proxy.ca_file().display().to_string(),
        "-w".to_owned(),
        "%{http_code}\\n".to_owned(),
    ];
    for i in 0..PULLS {
        args.extend([
            "-o".to_owned(),
            out.path().join(i.to_string()).display().to_string(),
            url.clone(),
        ]);
    }
    let curl = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl");
    let took = started.elapsed();
    let peak_mib = rss.peak_kib() as f64 / 1024.0;
    eprintln!(
        "shaped: {PULLS} pulls of 4 MiB with headers after {} s took {:.1} s; portcullis RSS {baseline_mib:.0} MiB before, peak {peak_mib:.0} MiB",
        delay.as_secs(),
        secs(took)
    );
    let codes = String::from_utf8_lossy(&curl.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        PULLS,
        "every pull answers 200: {codes}"
    );
    for i in 0..PULLS {
        assert_eq!(
            file_digest(&out.path().join(i.to_string())),
            digest,
            "pull {i} is not the blob"
        );
    }
    assert!(took >= delay, "the pulls waited for the slow upstream");
    // All 64 bodies in memory at once would be 256 MiB over the baseline; streaming holds
    // per-connection buffers (hyper's and rustls's, well under 1 MiB each).
    let bound = baseline_mib + PULLS as f64 * BLOB as f64 / MIB / 4.0;
    assert!(
        peak_mib < bound,
        "portcullis peaked at {peak_mib:.0} MiB (from {baseline_mib:.0} MiB), bound {bound:.0} MiB"
    );
}
