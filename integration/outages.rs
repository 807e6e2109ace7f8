//! Outages as users see them. A short name searched across `[a, b]`, where `b` has the
//! image and `a` is down (connection refused), times out (accepts and never answers) or
//! answers 5xx: the search stops at `a` and never serves `b`'s image of the same name
//! (README, "Names and resolution"), portcullis warns naming `a` and counts it, and docker,
//! skopeo and podman each fail with the status line. The same for fully qualified names,
//! a policy denial and a blob whose bytes do not match its digest: what each client prints
//! is what the README's Troubleshooting table quotes.
//!
//! Run with `--nocapture` to see what each client printed.

use std::process::Output;

use crate::harness::net::free_port;
use crate::harness::process::describe;
use crate::harness::prometheus::http_get;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

/// The first search registry, the one that fails.
const A: &str = "a.example.com";
/// The second search registry, which has the image.
const B: &str = "b.example.com";
const REPO: &str = "team/app";
const TAG: &str = "1";
/// Seconds portcullis waits for a's response headers when it never answers.
const TIMEOUT_SECS: u64 = 2;

const DENY: &str = r#"
[[rule]]
id = "no-withdrawn"
message = "team/withdrawn is withdrawn; use team/app"
action = "deny"
operations = ["pull"]
registry = "b.example.com"
repository = "team/withdrawn"
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// Nothing listens on a's port: connection refused.
    Down,
    /// a accepts, reads the request and never answers.
    Timeout,
    /// a answers 503 to every request for the repository.
    ServerError,
}

impl Outage {
    const ALL: [Outage; 3] = [Outage::Down, Outage::Timeout, Outage::ServerError];

    /// The `kind` label of `portcullis_upstream_errors_total`.
    fn kind(self) -> &'static str {
        match self {
            Outage::Down => "connect",
            Outage::Timeout => "timeout",
            Outage::ServerError => "status",
        }
    }

    /// The stable words of portcullis's error for it (its log line and the error body).
    fn error(self) -> String {
        match self {
            Outage::Down => format!("registry {A} is unreachable"),
            Outage::Timeout => format!("registry {A} did not answer within {TIMEOUT_SECS}s"),
            Outage::ServerError => format!("registry {A} answered 503 Service Unavailable"),
        }
    }

    /// The status line portcullis answers a short-name search that stopped at a with.
    fn status(self) -> &'static str {
        match self {
            Outage::Timeout => "504 Gateway Timeout",
            Outage::Down | Outage::ServerError => "502 Bad Gateway",
        }
    }

    /// The status line of a fully qualified pull from a: a registry's own 5xx is passed on.
    fn qualified_status(self) -> &'static str {
        match self {
            Outage::ServerError => "503 Service Unavailable",
            _ => self.status(),
        }
    }
}

/// portcullis searching `[a, b]`, `a` failing as asked, `b` holding `team/app:1`, and a
/// policy that denies `b.example.com/team/withdrawn`.
struct World {
    outage: Outage,
    proxy: Portcullis,
    b: Registry,
    /// a, when something listens there.
    faulty: Option<FaultyUpstream>,
    /// b's requests before the client ran (its seeding).
    b_seen: usize,
    _policy: TestDir,
}

impl World {
    fn start(outage: Outage) -> World {
        let b = Registry::start(Auth::None);
        b.seed(&OciImage::random(&[4096]), &format!("{REPO}:{TAG}"));
        let faulty = match outage {
            Outage::Down => None,
            Outage::Timeout => Some(FaultyUpstream::start(
                1024,
                &[Fault::Hang { repo: REPO.into() }],
            )),
            Outage::ServerError => Some(FaultyUpstream::start(
                1024,
                &[Fault::ServerError {
                    repo: REPO.into(),
                    status: 503,
                }],
            )),
        };
        let a = match &faulty {
            Some(f) => Upstream::at(A, &f.url(), f.ca_file()),
            // A port nothing listens on; the CA is never used.
            None => Upstream::at(
                A,
                &format!("https://127.0.0.1:{}", free_port()),
                b.ca_file(),
            ),
        }
        .response_timeout_secs(TIMEOUT_SECS);
        let policy = TestDir::new("policy");
        let file = policy.write("deny.toml", DENY);
        let proxy = Portcullis::start(
            &ProxyConfig::new()
                .search(&[A, B])
                .registry(a)
                .registry(Upstream::new(B, &b))
                .policy_path(file)
                .toml(),
        );
        let b_seen = b.requests().len();
        World {
            outage,
            proxy,
            b,
            faulty,
            b_seen,
            _policy: policy,
        }
    }

    /// `127.0.0.1:<port>/team/app:1`: a short name to portcullis.
    fn short(&self) -> String {
        format!("{}/{REPO}:{TAG}", self.proxy.addr())
    }

    /// `127.0.0.1:<port>/a.example.com/team/app:1`.
    fn qualified(&self) -> String {
        format!("{}/{A}/{REPO}:{TAG}", self.proxy.addr())
    }

    fn cert_dir(&self) -> String {
        self.proxy.cert_dir().display().to_string()
    }

    /// One series of the `/metrics` page (0 when absent).
    fn sample(&self, series: &str) -> u64 {
        let admin = self.proxy.admin_addr().expect("admin listener");
        let (status, page) = http_get(admin, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{page}");
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn errors_counted(&self) -> u64 {
        self.sample(&format!(
            "portcullis_upstream_errors_total{{kind=\"{}\",registry=\"{A}\"}}",
            self.outage.kind()
        ))
    }

    /// Pulls `reference` with `client` and checks that it failed at a: a was asked for the
    /// manifest (when it listens), b never was, portcullis logged a's failure for the
    /// request's path and counted it. Returns the client's message.
    fn pull_failing_at_a(&self, client: &Client, reference: &str, path: &str) -> String {
        let counted = self.errors_counted();
        let out = client.pull(self, reference);
        let shown = describe(&out);
        assert!(
            !out.status.success(),
            "{} pulled {reference} despite {A} failing ({:?}):\n{shown}",
            client.name(),
            self.outage
        );
        if let Some(f) = &self.faulty {
            assert!(
                f.requests()
                    .iter()
                    .any(|r| r.contains(&format!("/v2/{REPO}/manifests/"))),
                "{A} was never asked: {:?}",
                f.requests()
            );
        }
        let after = &self.b.requests()[self.b_seen..];
        assert!(
            !after.iter().any(|r| r.contains("/manifests/")),
            "the search went on to {B} past a failing {A}: {after:?}"
        );
        let log = self.proxy.log();
        let path = format!("path={path}");
        let logged = if path.contains(A) && self.outage == Outage::ServerError {
            // a's own 503 is passed on, with the access line saying so.
            log.lines().any(|l| {
                l.contains("INFO portcullis::access: request ")
                    && l.contains(&path)
                    && l.contains("status=503")
            })
        } else {
            let error = format!("error={}", self.outage.error());
            log.lines().any(|l| {
                l.contains("WARN portcullis::pipeline: request failed")
                    && l.contains(&path)
                    && l.contains(&error)
            })
        };
        assert!(logged, "no log line for {path} names {A}'s failure:\n{log}");
        assert!(
            self.errors_counted() > counted,
            "{A}'s failure was not counted"
        );
        let message = message(&out);
        println!(
            "{}, {:?}, {reference}:\n    {message}\n    portcullis: {}",
            client.name(),
            self.outage,
            log.lines()
                .filter(|l| l.contains(&path) && !l.contains("status=200"))
                .map(|l| l.split_once("Z ").map_or(l, |(_, rest)| rest.trim()))
                .collect::<Vec<_>>()
                .join("\n    portcullis: ")
        );
        message
    }
}

/// What a client printed last on stderr: its error.
fn message(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}

/// A client pulling through portcullis.
enum Client {
    /// One dockerd for every case (it is slow to start). With `max-download-attempts = 1`
    /// dockerd 20.10 still retries a failed layer once, after 5 s.
    Docker(Dockerd),
    Skopeo,
    Podman,
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Docker(_) => "docker",
            Client::Skopeo => "skopeo",
            Client::Podman => "podman",
        }
    }

    fn pull(&self, world: &World, reference: &str) -> Output {
        match self {
            Client::Docker(dockerd) => dockerd.docker(&["pull", reference]),
            Client::Skopeo => {
                let to = TestDir::new("pulled");
                Skopeo::new().copy(
                    &format!("docker://{reference}"),
                    &format!("dir:{}", to.path().display()),
                    &["--src-cert-dir", &world.cert_dir(), "--retry-times", "0"],
                )
            }
            Client::Podman => {
                Podman::new().run(&["pull", "--cert-dir", &world.cert_dir(), reference])
            }
        }
    }

    /// The client failed a manifest GET that was answered `status`, and said so in its
    /// own words (none of them prints a 5xx's body; the status line is all they show).
    fn assert_status_message(&self, message: &str, reference: &str, status: &str) {
        let (name, tag) = reference.rsplit_once(':').expect("name:tag");
        let said = format!("received unexpected HTTP status: {status}");
        let ok = match self {
            Client::Docker(_) => message == format!("Error response from daemon: {said}"),
            Client::Skopeo => message.contains(&format!(
                "level=fatal msg=\"initializing source docker://{reference}: reading manifest {tag} in {name}: {said}\""
            )),
            Client::Podman => message == format!(
                "Error: initializing source docker://{reference}: reading manifest {tag} in {name}: {said}"
            ),
        };
        assert!(ok, "{} printed {message:?}", self.name());
    }

    /// Every case, one world per outage.
    fn sees_outages_as_the_readme_says(&self) {
        for outage in Outage::ALL {
            let world = World::start(outage);
            let short = world.short();
            let path = format!("/v2/{REPO}/manifests/{TAG}");
            let said = world.pull_failing_at_a(self, &short, &path);
            self.assert_status_message(&said, &short, outage.status());

            let qualified = world.qualified();
            let path = format!("/v2/{A}/{REPO}/manifests/{TAG}");
            let said = world.pull_failing_at_a(self, &qualified, &path);
            self.assert_status_message(&said, &qualified, outage.qualified_status());
            if outage == Outage::Down {
                self.sees_a_denial(&world);
                self.sees_a_blob_that_does_not_match_its_digest(&world);
            }
        }
    }

    fn sees_a_denial(&self, world: &World) {
        let reference = format!("{}/{B}/team/withdrawn:1", world.proxy.addr());
        let out = self.pull(world, &reference);
        assert!(!out.status.success(), "{}", describe(&out));
        let said = message(&out);
        println!("{}, denied, {reference}:\n    {said}", self.name());
        let denial = format!(
            "denied: {B}/team/withdrawn:1: denied by rule no-withdrawn: team/withdrawn is withdrawn; use team/app"
        );
        let (name, _) = reference.rsplit_once(':').expect("name:tag");
        let ok = match self {
            Client::Docker(_) => said == format!(
                "Error response from daemon: pull access denied for {name}, repository does not exist or may require 'docker login': {denial}"
            ),
            Client::Skopeo => said.contains(&format!(
                "level=fatal msg=\"initializing source docker://{reference}: reading manifest 1 in {name}: {denial}\""
            )),
            Client::Podman => said == format!(
                "Error: initializing source docker://{reference}: reading manifest 1 in {name}: {denial}"
            ),
        };
        assert!(ok, "{} printed {said:?}", self.name());
        let log = world.proxy.log();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("WARN portcullis::pipeline::verdict: policy decision")
                    && l.contains(&format!("reference={B}/team/withdrawn:1"))
                    && l.contains(r#"rule="no-withdrawn" action="deny""#)
            })
            .collect();
        println!("    portcullis: {}", warned.join("\n    portcullis: "));
        assert!(!warned.is_empty(), "no warning for the denial:\n{log}");
        assert!(
            world
                .sample("portcullis_policy_decisions_total{action=\"deny\",rule=\"no-withdrawn\"}")
                > 0,
            "the denial was not counted"
        );
        let after = &world.b.requests()[world.b_seen..];
        assert!(
            !after.iter().any(|r| r.contains("/team/withdrawn/")),
            "a denied pull reached {B}: {after:?}"
        );
    }

    fn sees_a_blob_that_does_not_match_its_digest(&self, world: &World) {
        let image = OciImage::random(&[256 * 1024]);
        world.b.seed(&image, "team/corrupt:1");
        let layer = &image.layers[0].digest;
        // Same length, other bytes: b serves them as the layer, only the digest can tell.
        let hex = layer.trim_start_matches("sha256:");
        let stored = world
            .b
            .storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let bytes = std::fs::read(&stored).expect("read the stored layer");
        let flipped: Vec<u8> = bytes.iter().map(|b| !b).collect();
        std::fs::write(&stored, flipped).expect("corrupt the stored layer");
        let series =
            format!("portcullis_body_aborts_total{{reason=\"digest_mismatch\",registry=\"{B}\"}}");
        let aborted = world.sample(&series);

        let reference = format!("{}/{B}/team/corrupt:1", world.proxy.addr());
        let out = self.pull(world, &reference);
        assert!(!out.status.success(), "{}", describe(&out));
        let said = message(&out);
        let log = world.proxy.log();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("WARN portcullis::body: upstream body aborted")
                    && l.contains(&format!("registry={B}"))
                    && l.contains(&format!("digest={layer}"))
                    && l.contains("reason=digest_mismatch")
            })
            .collect();
        println!(
            "{}, digest mismatch, {reference}:\n    {said}\n    portcullis: {}",
            self.name(),
            warned.join("\n    portcullis: ")
        );
        assert!(!warned.is_empty(), "no warning for {layer}:\n{log}");
        // Each client fails the layer in its own words: skopeo and podman see the cut
        // connection; docker resumes with a Range request (a part portcullis cannot check)
        // and then finds the digest wrong itself.
        let eof = "happened during read: unexpected EOF";
        let ok = match self {
            Client::Docker(_) => {
                said == format!("filesystem layer verification failed for digest {layer}")
            }
            Client::Skopeo => said.ends_with(&format!("level=fatal msg=\"writing blob: {eof}\"")),
            Client::Podman => {
                said.starts_with("Error: writing blob: storing blob to file \"")
                    && said.ends_with(&format!("\": {eof}"))
            }
        };
        assert!(ok, "{} printed {said:?}:\n{}", self.name(), describe(&out));
        if let Client::Docker(_) = self {
            let resumed = &world.b.requests()[world.b_seen..];
            assert!(
                resumed
                    .iter()
                    .any(|r| r.contains(&format!("/blobs/{layer} 206"))),
                "docker did not resume the layer with a Range request: {resumed:?}"
            );
        }
        assert!(world.sample(&series) > aborted, "the abort was not counted");
    }
}

#[test]
fn docker_pulls_stop_at_a_registry_that_is_down_times_out_or_answers_5xx_and_say_so() {
    let dockerd = Dockerd::start_with(serde_json::json!({ "max-download-attempts": 1 }));
    Client::Docker(dockerd).sees_outages_as_the_readme_says();
}

#[test]
fn skopeo_copies_stop_at_a_registry_that_is_down_times_out_or_answers_5xx_and_say_so() {
    Client::Skopeo.sees_outages_as_the_readme_says();
}

#[test]
fn podman_pulls_stop_at_a_registry_that_is_down_times_out_or_answers_5xx_and_say_so() {
    Client::Podman.sees_outages_as_the_readme_says();
}

/// What portcullis answers, as curl sees it: its own errors are `UNAVAILABLE` naming the
/// registry, with 502 or 504; a registry's own 5xx to a fully qualified name is passed on.
#[test]
fn outages_answer_502_or_504_unavailable_naming_the_registry() {
    for outage in Outage::ALL {
        let world = World::start(outage);
        for name in [REPO.to_owned(), format!("{A}/{REPO}")] {
            let url = format!("{}/v2/{name}/manifests/{TAG}", world.proxy.url());
            let out = std::process::Command::new("curl")
                .args(["-sS", "--cacert"])
                .arg(world.proxy.ca_file())
                .args(["-w", "\n%{http_code}", &url])
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, status) = text.rsplit_once('\n').expect("body and status");
            println!("curl, {outage:?}, {name}: {status} {body}");
            if outage == Outage::ServerError && name.starts_with(A) {
                assert_eq!(status, "503", "{text}");
                assert_eq!(body, "no healthy upstream\n", "a's body is passed on");
                continue;
            }
            let expected = &outage.status()[..3];
            assert_eq!(status, expected, "{text}");
            let json: serde_json::Value = serde_json::from_str(body).expect("an OCI error body");
            assert_eq!(json["errors"][0]["code"], "UNAVAILABLE", "{body}");
            let said = json["errors"][0]["message"].as_str().unwrap_or("");
            assert!(said.starts_with(&outage.error()), "{body}");
        }
    }
}
