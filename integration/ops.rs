//! Operations: a real Prometheus scraping portcullis, the Grafana dashboard's queries, metric
//! cardinality, and the container image run by a real dockerd.
//!
//! The Helm chart is checked by `helm/test/check_chart.py` (run by `integration/run.sh`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::container::{build_image, Container};
use crate::harness::image::MANIFEST_MEDIA_TYPE;
use crate::harness::net::{free_port, wait_for};
use crate::harness::process::{describe, run};
use crate::harness::prometheus::{http_get, Prometheus};
use crate::harness::tempdir::TestDir;
use crate::harness::*;

const DASHBOARD: &str = include_str!("../helm/portcullis/dashboards/portcullis.json");
const README: &str = include_str!("../README.md");

/// portcullis in front of one registry standing in for `corp.example.com` (search and push).
fn proxy_for(corp: &Registry, extra: &[Upstream]) -> Portcullis {
    let mut config = ProxyConfig::new()
        .search(&["corp.example.com"])
        .push("corp.example.com")
        .registry(Upstream::new("corp.example.com", corp));
    for upstream in extra {
        config = config.registry(upstream.clone());
    }
    Portcullis::start(&config.toml())
}

fn admin(proxy: &Portcullis) -> SocketAddr {
    proxy.admin_addr().expect("admin listener")
}

/// The `/metrics` text, after checking it is served.
fn metrics(proxy: &Portcullis) -> String {
    let (status, body) = http_get(admin(proxy), "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Every series on a `/metrics` page: `name{labels}` of each sample line.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.rfind('}') {
            Some(end) => l[..=end].to_string(),
            None => l.split(' ').next().unwrap_or(l).to_string(),
        })
        .collect()
}

/// `GET`/`HEAD` through portcullis's registry endpoint; returns the status.
fn request(proxy: &Portcullis, method: &str, path: &str) -> u16 {
    https(&proxy.ca_file())
        .header("Accept", MANIFEST_MEDIA_TYPE)
        .request(method, &format!("{}{path}", proxy.url()), Vec::new())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        .status
}

fn skopeo_ok(out: std::process::Output, what: &str) {
    assert!(out.status.success(), "{what}:\n{}", describe(&out));
}

#[test]
fn prometheus_sees_pushes_pulls_and_denials_counted_exactly() {
    let corp = Registry::start(Auth::None);
    let proxy = proxy_for(&corp, &[]);
    let prometheus = Prometheus::start("portcullis", &[admin(&proxy)]);
    let corp_before = corp.requests().len(); // the harness's own readiness probe
    let skopeo = Skopeo::new();
    let cert_dir = proxy.cert_dir().display().to_string();
    let image = OciImage::random(&[4096, 300 * 1024]);
    let image_bytes =
        image.blobs().iter().map(|b| b.size).sum::<u64>() + image.manifest_bytes().len() as u64;

    let to = format!("docker://{}/corp.example.com/team/app:1", proxy.addr());
    skopeo_ok(
        skopeo.copy(&image.reference(), &to, &["--dest-cert-dir", &cert_dir]),
        "push through portcullis",
    );
    prometheus.scraped_after_now();
    assert_eq!(
        prometheus
            .count(r#"portcullis_bytes_total{direction="upload",registry="corp.example.com"}"#),
        image_bytes as f64,
        "upload bytes must be exactly the blobs and the manifest pushed"
    );
    let pushes = prometheus.count(
        r#"sum(portcullis_requests_total{operation="push",registry="corp.example.com",decision="allow",status="2xx"})"#,
    );
    assert!(
        pushes >= (image.blobs().len() + 1) as f64,
        "{pushes} successful push requests for {} blobs and a manifest",
        image.blobs().len()
    );

    let readback = TestDir::new("readback");
    let from = format!("docker://{}/team/app:1", proxy.addr());
    let into = format!("dir:{}", readback.path().display());
    skopeo_ok(
        skopeo.copy(&from, &into, &["--src-cert-dir", &cert_dir]),
        "pull of a short name through portcullis",
    );
    prometheus.scraped_after_now();
    assert_eq!(
        prometheus
            .count(r#"portcullis_bytes_total{direction="download",registry="corp.example.com"}"#),
        image_bytes as f64,
        "download bytes must be exactly the manifest and blobs pulled"
    );
    assert!(
        prometheus.count(r#"portcullis_short_name_resolutions_total{registry="corp.example.com"}"#)
            >= 1.0,
        "the short name team/app resolved on corp.example.com was not counted"
    );

    let pulls_query = r#"sum(portcullis_requests_total{operation="pull",registry="corp.example.com",decision="allow",status="2xx"})"#;
    let cache_query = |result: &str| {
        format!("sum(portcullis_cache_requests_total{{cache=\"manifest\",result=\"{result}\"}})")
    };
    let (pulls, hits, misses) = (
        prometheus.count(pulls_query),
        prometheus.count(&cache_query("hit")),
        prometheus.count(&cache_query("miss")),
    );
    let by_digest = format!(
        "/v2/corp.example.com/team/app/manifests/{}",
        image.manifest_digest
    );
    for _ in 0..5 {
        assert_eq!(request(&proxy, "GET", &by_digest), 200);
    }
    let denied = ["GET", "HEAD", "GET", "GET", "HEAD", "GET", "HEAD"];
    for method in denied {
        let status = request(&proxy, method, "/v2/evil.example.net/x/manifests/latest");
        assert_eq!(status, 403, "{method} of an unconfigured registry");
    }
    // A policy reload (SIGHUP) counts as one good reload and a new generation.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let reloaded = std::time::Instant::now();
    while !metrics(&proxy).contains("portcullis_policy_generation 2") {
        assert!(
            reloaded.elapsed() < std::time::Duration::from_secs(2),
            "SIGHUP did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    prometheus.scraped_after_now();
    assert_eq!(
        prometheus.count(r#"portcullis_policy_reloads_total{result="ok"}"#),
        2.0
    );
    assert_eq!(prometheus.count("portcullis_policy_generation"), 2.0);

    assert_eq!(
        prometheus.count(pulls_query) - pulls,
        5.0,
        "5 pulls by digest"
    );
    assert_eq!(prometheus.count(&cache_query("miss")) - misses, 1.0);
    assert_eq!(prometheus.count(&cache_query("hit")) - hits, 4.0);
    assert_eq!(
        prometheus.count(r#"sum(portcullis_requests_total{decision="deny"})"#),
        denied.len() as f64,
        "every denial, and nothing else, counts as decision=\"deny\""
    );
    assert_eq!(
        prometheus.count(
            r#"sum(portcullis_requests_total{decision="deny",operation="pull",status="4xx"})"#
        ),
        denied.len() as f64
    );
    assert_eq!(
        prometheus.count("sum(portcullis_request_duration_seconds_count)"),
        prometheus.count("sum(portcullis_requests_total)"),
        "every request answered is timed once"
    );
    assert_eq!(
        prometheus.count(
            r#"portcullis_upstream_request_duration_seconds_count{registry="corp.example.com"}"#
        ),
        (corp.requests().len() - corp_before) as f64,
        "upstream requests timed != requests corp.example.com logged: {:?}",
        corp.requests()
    );
    assert_eq!(
        prometheus.count("sum(portcullis_upstream_errors_total)"),
        0.0
    );
    assert_eq!(
        prometheus.count(r#"sum(portcullis_in_flight_requests{listener="registry"})"#),
        0.0
    );
    assert_eq!(
        prometheus.count(&format!(
            "portcullis_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

#[test]
fn every_dashboard_query_names_live_metrics_and_returns_data_and_promtool_accepts_the_page() {
    let corp = Registry::start(Auth::None);
    corp.seed(&OciImage::random(&[2048]), "team/app:1");
    let closed_port = free_port();
    let down = Upstream::at(
        "down.example.com",
        &format!("https://127.0.0.1:{closed_port}"),
        corp.ca_file(),
    );
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["corp.example.com", "down.example.com"])
            .push("corp.example.com")
            .registry(Upstream::new("corp.example.com", &corp))
            .registry(down)
            .toml(),
    );
    let prometheus = Prometheus::start("portcullis", &[admin(&proxy)]);

    // Traffic that gives every family on the dashboard a series.
    assert_eq!(
        request(&proxy, "GET", "/v1/search?q=app"),
        200,
        "search answers without the registry that is down"
    );
    assert_eq!(request(&proxy, "GET", "/v2/team/app/manifests/1"), 200);
    let digest = https(&proxy.ca_file())
        .header("Accept", MANIFEST_MEDIA_TYPE)
        .get(&format!("{}/v2/team/app/manifests/1", proxy.url()))
        .expect("manifest by tag")
        .header("Docker-Content-Digest")
        .expect("a digest")
        .to_string();
    for _ in 0..2 {
        let path = format!("/v2/corp.example.com/team/app/manifests/{digest}");
        assert_eq!(request(&proxy, "GET", &path), 200);
    }
    assert_eq!(
        request(&proxy, "GET", "/v2/evil.example.net/x/manifests/1"),
        403
    );
    assert_eq!(
        request(&proxy, "GET", "/v2/down.example.com/x/manifests/1"),
        502
    );
    let proxy_env = format!("http://{}", proxy.proxy_addr().expect("proxy listener"));
    let skopeo = Skopeo::new();
    let cert_dir = proxy.cert_dir().display().to_string();
    let intercepted = skopeo.run_with_env(
        &[
            "inspect",
            "--raw",
            "--cert-dir",
            &cert_dir,
            "docker://corp.example.com/team/app:1",
        ],
        &[("HTTPS_PROXY", proxy_env.as_str())],
    );
    skopeo_ok(intercepted, "skopeo inspect through the forward proxy");
    let refused = skopeo.run_with_env(
        &["inspect", "--raw", "docker://evil.example.net/x:1"],
        &[("HTTPS_PROXY", proxy_env.as_str())],
    );
    assert!(!refused.status.success(), "{}", describe(&refused));
    // Two scrapes after the traffic, so rate() has two points to work with.
    prometheus.scraped_after_now();
    prometheus.scraped_after_now();

    let page = metrics(&proxy);
    let check = run(
        {
            let mut c = Command::new("promtool");
            c.args(["check", "metrics"]);
            c
        },
        Some(page.as_bytes()),
        Duration::from_secs(60),
    );
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "promtool check metrics:\n{}\n{page}",
        describe(&check)
    );

    let documented = readme_metrics();
    let live: BTreeSet<String> = series(&page)
        .iter()
        .map(|s| s.split('{').next().unwrap_or(s).to_string())
        .collect();
    let board: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let exprs = dashboard_exprs(&board);
    assert!(
        exprs.len() >= 10,
        "only {} queries on the dashboard",
        exprs.len()
    );
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                live.contains(&name),
                "dashboard query {expr}\nnames {name}, which /metrics does not serve:\n{page}"
            );
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| documented.contains(*b)))
                .unwrap_or(&name)
                .to_string();
            assert!(
                documented.contains(&base),
                "dashboard query {expr} uses {name}, which the README's metrics table does not list"
            );
            used.insert(base);
        }
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        let answer = prometheus
            .query_json(&promql)
            .unwrap_or_else(|e| panic!("Prometheus refused dashboard query {promql}: {e}"));
        assert!(
            !answer["data"]["result"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "dashboard query {promql} returns nothing after traffic that should feed it"
        );
    }
    let missing: Vec<_> = documented.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "README metrics without a panel: {missing:?}"
    );
}

/// The `portcullis_*` names in the README's metrics table.
fn readme_metrics() -> BTreeSet<String> {
    README
        .lines()
        .filter_map(|l| l.strip_prefix("| `portcullis_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("portcullis_{name}"))
        .collect()
}

fn dashboard_exprs(board: &serde_json::Value) -> Vec<String> {
    board["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    regex::Regex::new(r"portcullis_[a-z_]+")
        .expect("regex")
        .find_iter(expr)
        .map(|m| m.as_str().to_string())
        .collect()
}

#[test]
fn the_number_of_series_does_not_grow_with_the_names_clients_ask_for() {
    let corp = Registry::start(Auth::None);
    let proxy = proxy_for(&corp, &[]);
    // Four kinds of name, all distinct: fully qualified on corp (404), nested (404), short
    // (searched, 404) and on an unconfigured registry (403).
    let ask = |i: usize| {
        let (path, status) = match i % 4 {
            0 => (format!("corp.example.com/team/app-{i}"), 404),
            1 => (format!("corp.example.com/a{i}/b{i}/c{i}"), 404),
            2 => (format!("short-{i}"), 404),
            _ => (format!("host-{i}.example.net/x"), 403),
        };
        let got = request(&proxy, "HEAD", &format!("/v2/{path}/manifests/latest"));
        assert_eq!(got, status, "HEAD {path}");
    };
    let answered = || -> u64 {
        metrics(&proxy)
            .lines()
            .filter(|l| l.starts_with("portcullis_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };

    (0..12).for_each(ask);
    let after_12 = series(&metrics(&proxy));
    let counted = answered();
    (12..1012).for_each(ask);
    let after_1012 = series(&metrics(&proxy));

    assert_eq!(answered() - counted, 1000, "every request is counted");
    let new: Vec<_> = after_1012.difference(&after_12).collect();
    assert!(
        new.is_empty(),
        "{} series after 12 names, {} after 1,012; new: {:?}",
        after_12.len(),
        after_1012.len(),
        &new[..new.len().min(20)]
    );
}

#[test]
fn the_image_prints_its_version_offline_and_serves_as_a_non_root_user_on_a_read_only_root() {
    let dockerd = Dockerd::start();
    let tag = "portcullis:ops-test";
    build_image(&dockerd, tag);

    let version = dockerd.docker_ok(&["run", "--rm", "--network", "none", tag, "--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("portcullis {}\n", env!("CARGO_PKG_VERSION"))
    );
    let user = dockerd.docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", tag]);
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "65532:65532");
    let shell = dockerd.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        tag,
    ]);
    assert!(
        !shell.status.success(),
        "the image has a shell:\n{}",
        describe(&shell)
    );

    // serve: the container shares the test's network namespace and reaches a real registry
    // by name (localhost), as the static binary must resolve names without NSS modules.
    let corp = Registry::start(Auth::None);
    let image = OciImage::random(&[4096]);
    corp.seed(&image, "team/app:1");
    let dir = TestDir::new("container");
    let state = dir.subdir("state");
    std::os::unix::fs::chown(&state, Some(65532), Some(65532)).expect("chown state");
    let (registry, admin) = (free_port(), free_port());
    let config = dir.write(
        "portcullis.toml",
        format!(
            "state_dir = \"/var/lib/portcullis/state\"\n\
             [listen]\nregistry = \"127.0.0.1:{registry}\"\nadmin = \"127.0.0.1:{admin}\"\nproxy = \"off\"\n\
             [tls]\nnames = [\"127.0.0.1\"]\n\
             [resolve]\nsearch = [\"corp.example.com\"]\n\
             [[registry]]\nhost = \"corp.example.com\"\nendpoint = \"https://localhost:{}\"\n\
             ca_file = \"/etc/portcullis/corp-ca.crt\"\n",
            corp.port()
        ),
    );
    let mount = |from: &Path, to: &str, mode: &str| format!("{}:{to}:{mode}", from.display());
    let container = Container::run(
        &dockerd,
        &[
            "--network",
            "host",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            &mount(&config, "/etc/portcullis/portcullis.toml", "ro"),
            "-v",
            &mount(&corp.ca_file(), "/etc/portcullis/corp-ca.crt", "ro"),
            "-v",
            &mount(&state, "/var/lib/portcullis/state", "rw"),
            tag,
            "serve",
            "--config",
            "/etc/portcullis/portcullis.toml",
        ],
    );
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    let ready = wait_for(Duration::from_secs(30), || {
        matches!(http_get(admin_addr, "/readyz"), Ok((200, _))).then_some(())
    });
    assert!(
        ready.is_some(),
        "no /readyz from the container:\n{}",
        container.logs()
    );
    assert_eq!(
        http_get(admin_addr, "/healthz"),
        Ok((200, "ok\n".to_string()))
    );
    let pid = container.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("container process");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65532"),
        "{uid}"
    );

    let manifest = https(&state.join("ca.crt"))
        .header("Accept", MANIFEST_MEDIA_TYPE)
        .get(&format!(
            "https://127.0.0.1:{registry}/v2/team/app/manifests/1"
        ))
        .expect("a manifest through the container");
    assert_eq!(
        manifest.status,
        200,
        "{}\n{}",
        manifest.text(),
        container.logs()
    );
    assert_eq!(
        manifest.header("Docker-Content-Digest"),
        Some(image.manifest_digest.as_str())
    );
    assert_eq!(
        container.stop(20),
        0,
        "portcullis did not exit cleanly on SIGTERM:\n{}",
        container.logs()
    );
}
