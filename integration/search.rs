//! `docker search` through portcullis: every search registry asked, names fully
//! qualified, priority order, partial failure, and the catalog cache.

use std::time::{Duration, Instant};

use crate::harness::process::describe;
use crate::harness::*;

/// Makes `repositories` appear in a registry's catalog without pushing each: distribution
/// lists a repository when its storage has a `_layers` directory.
fn fake_repositories(registry: &Registry, repositories: impl IntoIterator<Item = String>) {
    let root = registry
        .storage_dir()
        .join("docker/registry/v2/repositories");
    for repo in repositories {
        std::fs::create_dir_all(root.join(&repo).join("_layers"))
            .expect("create repository directory");
    }
}

/// The NAME column of `docker search` output.
fn names(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn docker_search_lists_every_search_registry_fully_qualified_in_priority_order() {
    let example = Registry::start(Auth::None);
    let corp = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    let blocked = Registry::start(Auth::None);
    fake_repositories(&blocked, ["fedora".into()]);
    let policy = crate::harness::tempdir::TestDir::new("policy");
    let policy_file = policy.write(
        "block.toml",
        "[[rule]]\nid = \"no-untrusted\"\nmessage = \"untrusted registry\"\naction = \"deny\"\nregistry = \"untrusted.example.com\"\n",
    );
    fake_repositories(
        &example,
        ["fedora".into(), "team/fedora-tools".into(), "alpine".into()],
    );
    fake_repositories(&corp, ["fedora".into()]);
    fake_repositories(&hub, ["library/fedora".into(), "library/debian".into()]);
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&[
                "untrusted.example.com",
                "registry.example.com",
                "corp.example.com",
                "docker.io",
            ])
            .set("resolve", "catalog_ttl_secs", 1)
            .policy_path(policy_file)
            .registry(Upstream::new("untrusted.example.com", &blocked))
            .registry(Upstream::new("registry.example.com", &example))
            .registry(Upstream::new("corp.example.com", &corp))
            .registry(Upstream::new("docker.io", &hub).with("search", "catalog"))
            .toml(),
    );
    let dockerd = Dockerd::start();
    let term = format!("{}/fedora", proxy.addr());

    let all = dockerd.docker(&["search", &term]);
    assert!(all.status.success(), "docker search:\n{}", describe(&all));
    // The registry the policy blocks is not even asked; the others answer in priority order.
    assert!(
        blocked.requests().iter().all(|r| !r.contains("_catalog")),
        "{:?}",
        blocked.requests()
    );
    assert_eq!(
        names(&all),
        [
            "registry.example.com/fedora",
            "registry.example.com/team/fedora-tools",
            "corp.example.com/fedora",
            "docker.io/library/fedora"
        ],
        "{}",
        describe(&all)
    );

    let one = dockerd.docker(&["search", "--limit", "1", &term]);
    assert_eq!(
        names(&one),
        ["registry.example.com/fedora"],
        "{}",
        describe(&one)
    );
    let starred = dockerd.docker(&["search", "--filter", "stars=1", &term]);
    assert!(starred.status.success(), "{}", describe(&starred));
    assert!(
        names(&starred).is_empty(),
        "nothing here has a star: {}",
        describe(&starred)
    );

    // One registry goes away: the search still answers from the others, and says so.
    drop(corp);
    std::thread::sleep(Duration::from_millis(1100));
    let partial = dockerd.docker(&["search", &term]);
    assert!(partial.status.success(), "{}", describe(&partial));
    assert_eq!(
        names(&partial),
        [
            "registry.example.com/fedora",
            "registry.example.com/team/fedora-tools",
            "docker.io/library/fedora"
        ],
        "{}",
        describe(&partial)
    );
    let direct = https(&proxy.ca_file())
        .get(&format!("{}/v1/search?q=fedora", proxy.url()))
        .expect("GET /v1/search");
    assert_eq!(direct.status, 200);
    assert!(
        direct
            .header("Warning")
            .is_some_and(|w| w.contains("corp.example.com")),
        "no Warning names the failed registry: {:?}",
        direct.headers
    );
    assert!(
        proxy.log().contains("search registry failed"),
        "{}",
        proxy.log()
    );
}

#[test]
fn a_5000_repository_catalog_is_searched_from_cache_after_the_first_call() {
    let big = Registry::start(Auth::None);
    fake_repositories(
        &big,
        (0..5000).map(|i| format!("team{}/app-{i:04}", i % 50)),
    );
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["registry.example.com"])
            .registry(Upstream::new("registry.example.com", &big))
            .toml(),
    );
    let client = https(&proxy.ca_file());
    let url = format!("{}/v1/search?q=app-00&n=100", proxy.url());

    let started = Instant::now();
    let first = client.get(&url).expect("first search");
    let cold = started.elapsed();
    let catalog_calls = big
        .requests()
        .iter()
        .filter(|r| r.contains("/v2/_catalog"))
        .count();
    let started = Instant::now();
    let second = client.get(&url).expect("second search");
    let warm = started.elapsed();

    println!("search over a 5,000-repository catalog: first {cold:?}, cached {warm:?}");
    assert_eq!(first.status, 200, "{}", first.text());
    let body: serde_json::Value = serde_json::from_slice(&first.body).expect("JSON");
    assert_eq!(body["num_results"], 100, "app-0000..app-0099 match: {body}");
    assert_eq!(first.body, second.body, "the cached answer differs");
    assert!(
        catalog_calls >= 5,
        "5,000 names need 5 catalog pages, saw {catalog_calls}"
    );
    let after = big
        .requests()
        .iter()
        .filter(|r| r.contains("/v2/_catalog"))
        .count();
    assert_eq!(
        after, catalog_calls,
        "the second search walked the catalog again"
    );
    assert!(
        warm < cold,
        "cached {warm:?} is not faster than the first {cold:?}"
    );
}

/// The NAME column of `podman search` output.
fn podman_names(out: &std::process::Output) -> Vec<String> {
    names(out)
}

#[test]
fn podman_search_prints_pullable_names_and_a_registry_it_addresses_answers_alone() {
    let example = Registry::start(Auth::None);
    let hub = Registry::start(Auth::None);
    fake_repositories(&example, ["fedora".into(), "team/app".into()]);
    fake_repositories(&hub, ["library/fedora".into(), "team/app-hub".into()]);
    let proxy = Portcullis::start(
        &ProxyConfig::new()
            .search(&["registry.example.com", "docker.io"])
            .registry(Upstream::new("registry.example.com", &example))
            .registry(Upstream::new("docker.io", &hub).with("search", "catalog"))
            .toml(),
    );
    let podman = Podman::new();
    podman.registries_conf(
        "unqualified-search-registries = [\"registry.example.com\", \"docker.io\"]\n",
    );
    let proxy_url = format!("http://{}", proxy.proxy_addr().expect("proxy listener"));
    let ca = proxy.ca_file().display().to_string();
    let env = [
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let search = |term: &str| {
        let out = podman.run_with_env(&["search", term], &env);
        assert!(
            out.status.success(),
            "podman search {term}:\n{}",
            describe(&out)
        );
        podman_names(&out)
    };

    // Through the forward proxy: each registry podman asks answers for itself, in the form
    // podman prefixes with the host it asked (it printed docker.io/docker.io/library/fedora).
    assert_eq!(
        search("fedora"),
        ["registry.example.com/fedora", "docker.io/library/fedora"]
    );
    assert_eq!(
        search("registry.example.com/app"),
        ["registry.example.com/team/app"]
    );
    assert_eq!(search("docker.io/app"), ["docker.io/team/app-hub"]);

    // On the registry endpoint podman prefixes the endpoint, which takes fully qualified
    // names; a configured registry in the term addresses that registry alone.
    let on_endpoint = |term: &str| {
        let out = podman.run(&[
            "search",
            "--tls-verify=false",
            &format!("{}/{term}", proxy.addr()),
        ]);
        assert!(
            out.status.success(),
            "podman search {term}:\n{}",
            describe(&out)
        );
        podman_names(&out)
    };
    let endpoint = proxy.addr();
    assert_eq!(
        on_endpoint("app"),
        [
            format!("{endpoint}/registry.example.com/team/app"),
            format!("{endpoint}/docker.io/team/app-hub")
        ]
    );
    assert_eq!(
        on_endpoint("docker.io/app"),
        [format!("{endpoint}/docker.io/team/app-hub")]
    );
}
