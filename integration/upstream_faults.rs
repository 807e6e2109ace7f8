//! Upstreams that answer wrongly on purpose: a foreign upload `Location`, a bad token realm
//! on one repository, a 206 nobody asked for, and blobs with wrong or missing bytes. Each
//! must fail closed, name the registry, and leave every other repository working.

use crate::harness::http::Response;
use crate::harness::process::describe;
use crate::harness::prometheus::http_get;
use crate::harness::*;

const REGISTRY: &str = "corp.example.com";

fn proxy_for(upstream: &FaultyUpstream) -> Portcullis {
    Portcullis::start(
        &ProxyConfig::new()
            .search(&[REGISTRY])
            .push(REGISTRY)
            .registry(Upstream::at(REGISTRY, &upstream.url(), upstream.ca_file()))
            .toml(),
    )
}

fn call(
    proxy: &Portcullis,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let mut client = https(&proxy.ca_file());
    for (k, v) in headers {
        client = client.header(k, v);
    }
    client.request(method, &format!("{}{path}", proxy.url()), Vec::new())
}

fn blob_path(repo: &str, upstream: &FaultyUpstream) -> String {
    format!("/v2/{REGISTRY}/{repo}/blobs/{}", upstream.blob_digest())
}

fn metrics(proxy: &Portcullis) -> String {
    let admin = proxy.admin_addr().expect("admin listener");
    let (status, body) = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series on a `/metrics` page (0 when absent).
fn sample(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_foreign_upload_location_fails_the_push_naming_the_registry_and_skopeo_never_contacts_it() {
    let elsewhere = Bystander::start();
    let foreign = format!("https://{}/upload/abc", elsewhere.host());
    let upstream = FaultyUpstream::start(1024, &[Fault::UploadLocation(foreign)]);
    let proxy = proxy_for(&upstream);
    let image = OciImage::random(&[8 * 1024]);
    let cert_dir = proxy.cert_dir().display().to_string();

    let push = Skopeo::new().copy(
        &image.reference(),
        &format!("docker://{}/{REGISTRY}/team/app:1", proxy.addr()),
        &["--dest-cert-dir", &cert_dir, "--retry-times", "0"],
    );

    assert!(!push.status.success(), "{}", describe(&push));
    let stderr = String::from_utf8_lossy(&push.stderr);
    // skopeo does not print an error body; the refused step and its status say enough.
    assert!(
        stderr.contains(REGISTRY) && stderr.contains("502"),
        "{}",
        describe(&push)
    );
    assert_eq!(
        elsewhere.connections(),
        0,
        "skopeo followed the upstream's Location to another host:\n{}",
        describe(&push)
    );
    assert!(
        upstream
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /v2/team/app/blobs/uploads/")),
        "the push never reached the upstream: {:?}",
        upstream.requests()
    );

    // The POST that starts a session fails; a session id portcullis never handed out (the
    // upstream's own) is unknown and never forwarded.
    for method in ["POST", "PATCH", "PUT", "GET"] {
        let (path, status, says) = match method {
            "POST" => (
                format!("/v2/{REGISTRY}/team/app/blobs/uploads/"),
                502,
                REGISTRY,
            ),
            _ => (
                format!("/v2/{REGISTRY}/team/app/blobs/uploads/session-1"),
                404,
                "unknown",
            ),
        };
        let answer = call(&proxy, method, &path, &[]).expect("an answer");
        assert_eq!(answer.status, status, "{method}: {}", answer.text());
        assert!(answer.text().contains(says), "{method}: {}", answer.text());
        assert!(
            answer
                .header("Location")
                .is_none_or(|l| !l.contains(&elsewhere.host())),
            "{method}: {:?}",
            answer.headers
        );
    }
    assert_eq!(elsewhere.connections(), 0);
}

#[test]
fn same_origin_upload_locations_are_rewritten_to_portcullis_names() {
    let upstream = FaultyUpstream::start(1024, &[]);
    let proxy = proxy_for(&upstream);

    let started = call(
        &proxy,
        "POST",
        &format!("/v2/{REGISTRY}/team/app/blobs/uploads/"),
        &[],
    )
    .expect("POST");

    assert_eq!(started.status, 202, "{}", started.text());
    // The client gets portcullis's id; the upstream's location, state and all, is what
    // portcullis sends the next request to.
    let location = started.header("Location").expect("Location").to_owned();
    assert!(
        location.starts_with(&format!("/v2/{REGISTRY}/team/app/blobs/uploads/pcu-"))
            && !location.contains("_state"),
        "{location}"
    );
    let patched = call(&proxy, "PATCH", &location, &[]).expect("PATCH");
    assert_eq!(patched.status, 202, "{}", patched.text());
    assert_eq!(patched.header("Location"), Some(location.as_str()));
    assert!(
        upstream
            .requests()
            .iter()
            .any(|r| r.starts_with("PATCH /v2/team/app/blobs/uploads/session-1?_state=abc%3D ")),
        "{:?}",
        upstream.requests()
    );
}

#[test]
fn a_disallowed_token_realm_on_one_repository_leaves_the_other_repositories_working() {
    let elsewhere = Bystander::start();
    let upstream = FaultyUpstream::start(
        4096,
        &[Fault::Challenge {
            repo: "bad/repo".into(),
            realm: format!("https://{}/token", elsewhere.host()),
        }],
    );
    let proxy = proxy_for(&upstream);

    let bad = call(&proxy, "GET", &blob_path("bad/repo", &upstream), &[]).expect("an answer");
    assert_eq!(bad.status, 502, "{}", bad.text());
    assert!(bad.text().contains("asked for a token"), "{}", bad.text());

    let good = call(&proxy, "GET", &blob_path("good/repo", &upstream), &[]).expect("an answer");
    assert_eq!(good.status, 200, "{}", good.text());
    assert_eq!(good.body, upstream.blob());
    let upload = call(
        &proxy,
        "POST",
        &format!("/v2/{REGISTRY}/good/repo/blobs/uploads/"),
        &[],
    )
    .expect("an answer");
    assert_eq!(upload.status, 202, "{}", upload.text());

    // The refused challenge was not remembered either: the bad repository asks again.
    let before = upstream.requests().len();
    let again = call(&proxy, "GET", &blob_path("bad/repo", &upstream), &[]).expect("an answer");
    assert_eq!(again.status, 502, "{}", again.text());
    assert!(upstream.requests().len() > before);
    assert_eq!(
        elsewhere.connections(),
        0,
        "the disallowed realm was called"
    );
}

#[test]
fn a_206_to_a_request_without_range_is_a_bad_gateway_and_a_requested_range_still_passes() {
    let upstream = FaultyUpstream::start(
        64 * 1024,
        &[Fault::PartialWithoutRange {
            repo: "team/app".into(),
        }],
    );
    let proxy = proxy_for(&upstream);
    let path = blob_path("team/app", &upstream);

    match call(&proxy, "GET", &path, &[]) {
        Ok(answer) => {
            assert_eq!(answer.status, 502, "{}", answer.text());
            assert!(answer.text().contains(REGISTRY), "{}", answer.text());
        }
        Err(e) => panic!("expected a 502 naming the registry, the body failed instead: {e}"),
    }

    let ranged = call(&proxy, "GET", &path, &[("Range", "bytes=100-199")]).expect("a range");
    assert_eq!(ranged.status, 206, "{}", ranged.text());
    assert_eq!(ranged.body, &upstream.blob()[100..200]);
}

#[test]
fn blobs_with_wrong_or_missing_bytes_are_aborted_with_a_warning_and_counted() {
    let upstream = FaultyUpstream::start(
        256 * 1024,
        &[
            Fault::WrongBytes {
                repo: "wrong/bytes".into(),
            },
            Fault::Truncated {
                repo: "cut/short".into(),
            },
        ],
    );
    let proxy = proxy_for(&upstream);
    let digest = upstream.blob_digest().to_owned();

    let whole = call(&proxy, "GET", &blob_path("wrong/bytes", &upstream), &[]);
    assert!(whole.is_err(), "wrong bytes read as a success");
    // A 200 to a ranged request is the whole blob, so it is verified as a whole.
    let ranged = call(
        &proxy,
        "GET",
        &blob_path("wrong/bytes", &upstream),
        &[("Range", "bytes=0-99")],
    );
    assert!(ranged.is_err(), "wrong bytes read as a success");
    let cut = call(&proxy, "GET", &blob_path("cut/short", &upstream), &[]);
    assert!(cut.is_err(), "a short blob read as a success");

    let page = metrics(&proxy);
    let series = |reason: &str| {
        format!("portcullis_body_aborts_total{{reason=\"{reason}\",registry=\"{REGISTRY}\"}}")
    };
    assert_eq!(sample(&page, &series("digest_mismatch")), 2, "{page}");
    assert_eq!(sample(&page, &series("truncated")), 1, "{page}");
    let log = proxy.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&digest))
        .collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("digest_mismatch") && l.contains(REGISTRY))
            .count(),
        2,
        "{log}"
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("truncated") && l.contains(REGISTRY))
            .count(),
        1,
        "{log}"
    );
    // The access line of each says the body was cut, and why; a good pull says complete.
    let access = |log: &str, repo: &str, outcome: &str| {
        log.lines()
            .filter(|l| l.contains(" request ") && l.contains(&format!("/{repo}/blobs/")))
            .filter(|l| l.contains("status=200") && l.contains(outcome))
            .count()
    };
    let aborted = "outcome=aborted reason=digest_mismatch";
    assert_eq!(access(&log, "wrong/bytes", aborted), 2, "{log}");
    let cut = "outcome=aborted reason=truncated";
    assert_eq!(access(&log, "cut/short", cut), 1, "{log}");
    let good = call(&proxy, "GET", &blob_path("good/repo", &upstream), &[]).expect("an answer");
    assert_eq!(good.body, upstream.blob());
    let complete = format!("outcome=complete reason=- bytes={}", upstream.blob().len());
    let log = proxy.log();
    assert_eq!(access(&log, "good/repo", &complete), 1, "{log}");
}
