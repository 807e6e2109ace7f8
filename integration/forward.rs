//! Forward-proxy and mirror mode: an unmodified dockerd (and skopeo) with `HTTPS_PROXY`
//! pointing at portcullis, registry hosts mapped to local registries by portcullis's own
//! configuration. Everything stays in the test's network namespace.

use crate::harness::net::free_port;
use crate::harness::process::describe;
use crate::harness::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dockerd_behind_the_proxy_pulls_and_pushes_through_intercepted_registries_and_nothing_else() {
    let hub = Registry::start(Auth::None);
    hub.seed(
        &OciImage::random(&[32 * 1024, 64 * 1024]),
        "library/alpine:latest",
    );
    let example = Registry::start(Auth::None);
    example.seed(&OciImage::random(&[16 * 1024]), "team/tool:1");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["docker.io"])
            .registry(Upstream::new("docker.io", &hub))
            .registry(Upstream::new("registry.example.com", &example))
            .toml(),
    );
    let dockerd = Dockerd::start_behind_proxy(
        proxy.proxy_addr().expect("proxy listener"),
        &proxy.ca_file(),
    );

    let pull = dockerd.docker(&["pull", "alpine"]);
    assert!(
        pull.status.success(),
        "docker pull alpine:\n{}",
        describe(&pull)
    );
    assert!(
        stdout(&pull).contains("docker.io/library/alpine:latest"),
        "{}",
        describe(&pull)
    );
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.starts_with("GET /v2/library/alpine/blobs/")),
        "the docker.io stand-in served no alpine blob: {:?}",
        hub.requests()
    );

    let pull = dockerd.docker(&["pull", "registry.example.com/team/tool:1"]);
    assert!(
        pull.status.success(),
        "docker pull registry.example.com/team/tool:1:\n{}",
        describe(&pull)
    );

    // The default policy (Atomic's --confirm-def-push): a push to a public registry is
    // refused until the same push is repeated.
    dockerd.docker_ok(&["tag", "alpine", "docker.io/someone/app:1"]);
    let first = dockerd.docker(&["push", "docker.io/someone/app:1"]);
    assert!(
        !first.status.success(),
        "an unconfirmed push to docker.io went through"
    );
    assert!(
        describe(&first).contains("To confirm, run the same command again"),
        "{}",
        describe(&first)
    );
    assert!(
        !hub.requests()
            .iter()
            .any(|r| r.contains("/v2/someone/app/") && !r.starts_with("HEAD ")),
        "the unconfirmed push reached the registry: {:?}",
        hub.requests()
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    let push = dockerd.docker(&["push", "docker.io/someone/app:1"]);
    assert!(
        push.status.success(),
        "the confirmed push failed:\n{}",
        describe(&push)
    );
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.starts_with("PUT /v2/someone/app/manifests/1")),
        "the push did not reach the docker.io stand-in: {:?}",
        hub.requests()
    );

    let refused = dockerd.docker(&["pull", "evil.example.net/x:1"]);
    assert!(
        !refused.status.success(),
        "a pull from an unconfigured registry succeeded"
    );
    assert!(
        describe(&refused).contains("Forbidden"),
        "{}",
        describe(&refused)
    );
    assert!(
        proxy.log().contains("refused CONNECT") && proxy.log().contains("evil.example.net"),
        "the refusal was not logged:\n{}",
        proxy.log()
    );
    assert!(
        proxy.log().contains("issued interception certificate")
            && proxy.log().contains("registry-1.docker.io"),
        "{}",
        proxy.log()
    );
}

#[test]
fn skopeo_with_https_proxy_is_intercepted_and_refused_the_same_way() {
    let example = Registry::start(Auth::None);
    let image = OciImage::random(&[16 * 1024]);
    example.seed(&image, "team/tool:1");
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["registry.example.com"])
            .registry(Upstream::new("registry.example.com", &example))
            .toml(),
    );
    let proxy_url = format!("http://{}", proxy.proxy_addr().expect("proxy listener"));
    let ca = proxy.ca_file().display().to_string();
    let env = [
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let skopeo = Skopeo::new();

    let inspect = skopeo.run_with_env(
        &[
            "inspect",
            "--raw",
            "docker://registry.example.com/team/tool:1",
        ],
        &env,
    );
    assert!(inspect.status.success(), "{}", describe(&inspect));
    assert_eq!(
        inspect.stdout,
        image.manifest_bytes(),
        "the manifest came back changed"
    );

    let refused = skopeo.run_with_env(&["inspect", "--raw", "docker://evil.example.net/x:1"], &env);
    assert!(
        !refused.status.success(),
        "skopeo reached an unconfigured registry"
    );
    assert!(
        describe(&refused).contains("Forbidden"),
        "{}",
        describe(&refused)
    );
}

#[test]
fn with_docker_hub_search_a_plain_docker_pull_resolves_across_the_search_registries() {
    let example = Registry::start(Auth::None);
    example.seed(&OciImage::random(&[16 * 1024]), "fedora:latest");
    let hub = Registry::start(Auth::None);
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["registry.example.com", "docker.io"])
            .set("forward", "docker_hub_search", true)
            .registry(Upstream::new("registry.example.com", &example))
            .registry(Upstream::new("docker.io", &hub))
            .toml(),
    );
    let dockerd = Dockerd::start_behind_proxy(
        proxy.proxy_addr().expect("proxy listener"),
        &proxy.ca_file(),
    );

    let pull = dockerd.docker(&["pull", "fedora"]);

    assert!(
        pull.status.success(),
        "docker pull fedora:\n{}",
        describe(&pull)
    );
    assert!(
        example
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /v2/fedora/blobs/")),
        "registry.example.com did not serve fedora: {:?}",
        example.requests()
    );
    assert!(
        proxy.log().contains("resolved=registry.example.com/fedora"),
        "the serving registry is not in the log:\n{}",
        proxy.log()
    );
}

#[test]
fn dockerd_with_portcullis_as_its_registry_mirror_pulls_through_it() {
    let hub = Registry::start(Auth::None);
    hub.seed(&OciImage::random(&[16 * 1024]), "library/alpine:latest");
    let mirror = format!("127.0.0.1:{}", free_port());
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["docker.io"])
            .set("listen", "mirror", mirror.as_str())
            .registry(Upstream::new("docker.io", &hub))
            .toml(),
    );
    let dockerd = Dockerd::start_with(
        serde_json::json!({ "registry-mirrors": [format!("https://{mirror}")] }),
    );

    // Nothing but the mirror can answer in this network namespace: success means it served.
    let pull = dockerd.docker(&["pull", "alpine"]);

    assert!(
        pull.status.success(),
        "docker pull alpine via the mirror:\n{}",
        describe(&pull)
    );
    assert!(
        proxy.log().contains("resolved=docker.io/library/alpine"),
        "portcullis did not serve the pull:\n{}",
        proxy.log()
    );
}

#[test]
fn docker_search_through_the_proxy_answers_fully_qualified_from_every_search_registry() {
    let example = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    for (registry, repo) in [(&example, "fedora"), (&hub, "library/fedora")] {
        let dir = registry
            .storage_dir()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_layers");
        std::fs::create_dir_all(dir).expect("repository directory");
    }
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["registry.example.com", "docker.io"])
            .registry(Upstream::new("registry.example.com", &example))
            .registry(Upstream::new("docker.io", &hub).with("search", "catalog"))
            .toml(),
    );
    let dockerd = Dockerd::start_behind_proxy(
        proxy.proxy_addr().expect("proxy listener"),
        &proxy.ca_file(),
    );

    let search = dockerd.docker(&["search", "fedora"]);

    assert!(
        search.status.success(),
        "docker search fedora:\n{}",
        describe(&search)
    );
    let names: Vec<String> = stdout(&search)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["registry.example.com/fedora", "docker.io/library/fedora"],
        "{}",
        describe(&search)
    );
    assert!(
        proxy.log().contains("host=\"index.docker.io\""),
        "search did not go through the proxy:\n{}",
        proxy.log()
    );
}

#[test]
fn the_proxy_can_require_credentials_of_its_clients() {
    let example = Registry::start(Auth::None);
    example.seed(&OciImage::random(&[8 * 1024]), "team/tool:1");
    let proxy = Portcullis::start_with_env(
        &ProxyConfig::new()
            .search(&["registry.example.com"])
            .set(
                "forward",
                "proxy_auth",
                toml::Value::Table(toml::toml! { username = "docker"
                password_env = "PROXY_PASSWORD" }),
            )
            .registry(Upstream::new("registry.example.com", &example))
            .toml(),
        &[("PROXY_PASSWORD", "let-me-in")],
    );
    let addr = proxy.proxy_addr().expect("proxy listener");
    let ca = proxy.ca_file().display().to_string();
    let skopeo = Skopeo::new();
    let inspect = |proxy_url: &str| {
        skopeo.run_with_env(
            &[
                "inspect",
                "--raw",
                "docker://registry.example.com/team/tool:1",
            ],
            &[("HTTPS_PROXY", proxy_url), ("SSL_CERT_FILE", ca.as_str())],
        )
    };

    let anonymous = inspect(&format!("http://{addr}"));
    assert!(
        !anonymous.status.success(),
        "the proxy served a client without credentials"
    );
    assert!(
        describe(&anonymous).contains("Proxy Authentication Required"),
        "{}",
        describe(&anonymous)
    );
    let wrong = inspect(&format!("http://docker:wrong@{addr}"));
    assert!(
        !wrong.status.success(),
        "the proxy accepted a wrong password"
    );
    let right = inspect(&format!("http://docker:let-me-in@{addr}"));
    assert!(right.status.success(), "{}", describe(&right));
    assert!(
        !proxy.log().contains("let-me-in"),
        "the proxy password reached the log"
    );
}
