//! The bypass matrix (issue 11): every policy criterion against every way to reach or move
//! content, through all three listeners, decided as one table.
//!
//! Criteria: registry, repository, tag and digest block rules, allow-list mode, and private
//! pushes by name, label, annotation and provenance. Paths: manifest GET/HEAD by tag and by
//! digest, blob GET/HEAD, referrers, tag list, catalog, search, cross-repository mounts,
//! monolithic and chunked uploads, staged blobs, and skopeo for a real client. Listeners: the
//! registry endpoint, the forward proxy (curl `CONNECT`s to the registry's name) and the
//! docker.io mirror (other registries as containerd's `?ns=`), over HTTP/1.1 and, for some
//! rows, HTTP/2.
//!
//! A [`Case`] is one line of [`cases`]; it expands into a row per listener (and protocol).
//! Every row runs, and the test fails at the end with the full list of rows that failed, so
//! a new criterion or path is one more line and a hole shows up as a named row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::harness::image::{sha256_digest, MANIFEST_MEDIA_TYPE};
use crate::harness::matrix::{
    backend_has_blob, backend_has_manifest, short, Answer, Door, Flavor, Img, Listener, Proto,
    DOCKER_HUB,
};
use crate::harness::net::free_port;
use crate::harness::process::describe;
use crate::harness::tempdir::TestDir;
use crate::harness::*;

use Listener::{Forward as F, Mirror as M, Registry as R};

const EXAMPLE: &str = "registry.example.com";
const EVIL: &str = "evil.example.com";
const HUB: &str = DOCKER_HUB;
const WORKERS: usize = 4;

/// Images seeded before the rows run, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Seeded {
    /// registry.example.com team/app:1 and :bad
    App,
    /// registry.example.com team/blocked:1 (the repository rule)
    Blocked,
    /// registry.example.com team/app:d and team/copy:1 (the digest rule: manifest and layer)
    BadDigest,
    /// docker.io team/app:1: the same name as App, other content
    HubApp,
    /// docker.io team/blocked:1: blocked on registry.example.com only
    HubBlocked,
    /// docker.io team/hubblocked:1 (a docker.io repository rule)
    HubOnly,
    /// evil.example.com evil/thing:1 (the registry rule)
    Evil,
}

const SEEDS: [(Seeded, &str, &str, &[&str]); 7] = [
    (Seeded::App, EXAMPLE, "team/app", &["1", "bad"]),
    (Seeded::Blocked, EXAMPLE, "team/blocked", &["1"]),
    (Seeded::BadDigest, EXAMPLE, "team/app", &["d"]),
    (Seeded::HubApp, HUB, "team/app", &["1"]),
    (Seeded::HubBlocked, HUB, "team/blocked", &["1"]),
    (Seeded::HubOnly, HUB, "team/hubblocked", &["1"]),
    (Seeded::Evil, EVIL, "evil/thing", &["1"]),
];

#[derive(Clone, Copy, Debug)]
enum Dg {
    Manifest(Seeded),
    Layer(Seeded),
    Config(Seeded),
}

#[derive(Clone, Copy, Debug)]
enum Ref {
    Tag(&'static str),
    Digest(Seeded),
}

/// One portcullis per policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Gk {
    Block,
    Allow,
    Named,
    Provenance,
}

#[derive(Clone, Copy, Debug)]
enum Mark {
    None,
    Label,
    Annotation,
}

#[derive(Clone, Copy, Debug)]
enum Source {
    /// Seeded into registry.example.com and pulled through portcullis first.
    PulledFromExample,
    /// A new image, never seen anywhere.
    Fresh(Mark),
}

/// What a row does. Registries and repositories are named as the policy sees them; the
/// [`Door`] spells them the way a client of the row's listener would.
#[derive(Clone, Copy, Debug)]
enum Act {
    Manifest(&'static str, &'static str, &'static str, Ref),
    Blob(&'static str, &'static str, &'static str, Dg),
    Tags(&'static str, &'static str),
    Referrers(&'static str, &'static str, Dg),
    Catalog(&'static str),
    Search(&'static str),
    /// `POST /v2/<registry>/team/app-mount-<row>/blobs/uploads/?mount=<digest>&from=<from>`
    Mount {
        registry: &'static str,
        from: (&'static str, &'static str),
        digest: Dg,
    },
    /// The whole image pushed to docker.io/someone/push-<row>:1.
    Push(Source, Flavor),
    /// One blob of a labelled (staged) push to docker.io, then this method on the blob
    /// through another repository.
    StagedPeek(&'static str),
    SkopeoPull(&'static str, &'static str, &'static str),
    SkopeoPush(Source),
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 403 with OCI code DENIED (HEAD: 403). Through the mirror with `?ns=`: refused.
    Denied,
    /// 200 with exactly this content. Through the mirror with `?ns=`: this, or refused.
    Served(Dg),
    /// Refused, or an answer that names none of these.
    NotListed(&'static [(&'static str, &'static str)]),
    Listed(&'static str, &'static str),
    /// Not 201: 403 DENIED or a plain 202 upload, and the destination has no such blob.
    NotMounted,
    /// Some request of the push is refused with 403 DENIED and docker.io holds nothing.
    PushRefused,
    PushAccepted,
    /// The staged blob is not readable through another repository (404 or 403).
    StagedHidden,
    /// The client fails, saying "denied"; for a push docker.io holds nothing.
    ClientRefused,
    ClientServed(Dg),
}

struct Case {
    criterion: &'static str,
    gk: Gk,
    act: Act,
    expect: Expect,
    doors: &'static [Listener],
    h2: bool,
}

fn case(criterion: &'static str, gk: Gk, act: Act, expect: Expect) -> Case {
    Case {
        criterion,
        gk,
        act,
        expect,
        doors: &Listener::ALL,
        h2: false,
    }
}

impl Case {
    /// Also over HTTP/2, on every listener of the row.
    fn h2(mut self) -> Case {
        self.h2 = true;
        self
    }

    fn only(mut self, doors: &'static [Listener]) -> Case {
        self.doors = doors;
        self
    }
}

/// The matrix. One line per (criterion, path); each expands over listeners and protocols.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Act::*;
    use Expect::*;
    use Gk::*;
    use Ref::{Digest, Tag};
    use Seeded::*;
    let (get, head) = ("GET", "HEAD");
    vec![
        // Controls: what must keep working, so that the refusals below mean something.
        case("control", Block, Manifest(get, EXAMPLE, "team/app", Tag("1")), Served(Dg::Manifest(App))).h2(),
        case("control", Block, Manifest(head, EXAMPLE, "team/app", Tag("1")), Served(Dg::Manifest(App))),
        case("control", Block, Blob(get, EXAMPLE, "team/app", Dg::Layer(App)), Served(Dg::Layer(App))),
        case("control", Block, Manifest(get, HUB, "team/app", Tag("1")), Served(Dg::Manifest(HubApp))),
        case("control", Block, Catalog(EXAMPLE), Listed(EXAMPLE, "team/app")).only(&[R, F]),
        case("control", Block, Search("app"), Listed(EXAMPLE, "team/app")).only(&[R, F]),
        case("control", Block, SkopeoPull(EXAMPLE, "team/app", "1"), ClientServed(Dg::Manifest(App))).only(&[R, F]),
        // registry = "evil.example.com"
        case("registry", Block, Manifest(get, EVIL, "evil/thing", Tag("1")), Denied),
        case("registry", Block, Manifest(head, EVIL, "evil/thing", Tag("1")), Denied),
        case("registry", Block, Manifest(get, EVIL, "evil/thing", Digest(Evil)), Denied),
        case("registry", Block, Blob(get, EVIL, "evil/thing", Dg::Layer(Evil)), Denied),
        case("registry", Block, Blob(head, EVIL, "evil/thing", Dg::Layer(Evil)), Denied),
        case("registry", Block, Tags(EVIL, "evil/thing"), Denied),
        case("registry", Block, Referrers(EVIL, "evil/thing", Dg::Manifest(Evil)), Denied),
        case("registry", Block, Catalog(EVIL), NotListed(&[(EVIL, "evil/thing")])),
        case("registry", Block, Search("thing"), NotListed(&[(EVIL, "evil/thing")])),
        case("registry", Block, Mount { registry: EXAMPLE, from: (EVIL, "evil/thing"), digest: Dg::Layer(Evil) }, NotMounted).only(&[R]),
        case("registry", Block, SkopeoPull(EVIL, "evil/thing", "1"), ClientRefused).only(&[R]),
        // registry = "registry.example.com", repository = "team/blocked"
        case("repository", Block, Manifest(get, EXAMPLE, "team/blocked", Tag("1")), Denied).h2(),
        case("repository", Block, Manifest(head, EXAMPLE, "team/blocked", Tag("1")), Denied),
        case("repository", Block, Manifest(get, EXAMPLE, "team/blocked", Digest(Blocked)), Denied).h2(),
        case("repository", Block, Manifest(head, EXAMPLE, "team/blocked", Digest(Blocked)), Denied),
        case("repository", Block, Blob(get, EXAMPLE, "team/blocked", Dg::Layer(Blocked)), Denied).h2(),
        case("repository", Block, Blob(head, EXAMPLE, "team/blocked", Dg::Layer(Blocked)), Denied),
        case("repository", Block, Blob(get, EXAMPLE, "team/blocked", Dg::Config(Blocked)), Denied),
        case("repository", Block, Tags(EXAMPLE, "team/blocked"), Denied),
        case("repository", Block, Referrers(EXAMPLE, "team/blocked", Dg::Manifest(Blocked)), Denied),
        case("repository", Block, Catalog(EXAMPLE), NotListed(&[(EXAMPLE, "team/blocked")])),
        case("repository", Block, Search("blocked"), NotListed(&[(EXAMPLE, "team/blocked")])),
        case("repository", Block, Mount { registry: EXAMPLE, from: (EXAMPLE, "team/blocked"), digest: Dg::Layer(Blocked) }, NotMounted),
        case("repository", Block, SkopeoPull(EXAMPLE, "team/blocked", "1"), ClientRefused).only(&[R, F]),
        // registry = "docker.io", repository = "team/hubblocked"
        case("repository (docker.io)", Block, Manifest(get, HUB, "team/hubblocked", Tag("1")), Denied),
        case("repository (docker.io)", Block, Blob(get, HUB, "team/hubblocked", Dg::Layer(HubOnly)), Denied),
        case("repository (docker.io)", Block, Tags(HUB, "team/hubblocked"), Denied),
        case("repository (docker.io)", Block, Catalog(HUB), NotListed(&[(HUB, "team/hubblocked")])).only(&[F, M]),
        case("repository (docker.io)", Block, Mount { registry: HUB, from: (HUB, "team/hubblocked"), digest: Dg::Layer(HubOnly) }, NotMounted),
        // tag = "^bad$"
        case("tag", Block, Manifest(get, EXAMPLE, "team/app", Tag("bad")), Denied).h2(),
        case("tag", Block, Manifest(head, EXAMPLE, "team/app", Tag("bad")), Denied),
        case("tag", Block, SkopeoPull(EXAMPLE, "team/app", "bad"), ClientRefused).only(&[R]),
        // digest = [BadDigest's manifest, BadDigest's layer]
        case("digest", Block, Manifest(get, EXAMPLE, "team/app", Digest(BadDigest)), Denied),
        case("digest", Block, Manifest(head, EXAMPLE, "team/app", Digest(BadDigest)), Denied),
        case("digest", Block, Manifest(get, EXAMPLE, "team/app", Tag("d")), Denied).h2(),
        case("digest", Block, Manifest(head, EXAMPLE, "team/app", Tag("d")), Denied),
        case("digest", Block, Manifest(get, EXAMPLE, "team/copy", Tag("1")), Denied),
        case("digest", Block, Blob(get, EXAMPLE, "team/app", Dg::Layer(BadDigest)), Denied),
        case("digest", Block, Blob(head, EXAMPLE, "team/app", Dg::Layer(BadDigest)), Denied),
        case("digest", Block, Blob(get, EXAMPLE, "team/copy", Dg::Layer(BadDigest)), Denied),
        case("digest", Block, Referrers(EXAMPLE, "team/app", Dg::Manifest(BadDigest)), Denied),
        case("digest", Block, Mount { registry: EXAMPLE, from: (EXAMPLE, "team/copy"), digest: Dg::Layer(BadDigest) }, NotMounted),
        case("digest", Block, SkopeoPull(EXAMPLE, "team/copy", "1"), ClientRefused).only(&[R]),
        // mode = "allowlist", allowing registry.example.com team/app* only
        case("allowlist control", Allow, Manifest(get, EXAMPLE, "team/app", Tag("1")), Served(Dg::Manifest(App))),
        case("allowlist", Allow, Manifest(get, EXAMPLE, "team/blocked", Tag("1")), Denied),
        case("allowlist", Allow, Manifest(head, EXAMPLE, "team/blocked", Tag("1")), Denied),
        case("allowlist", Allow, Manifest(get, EXAMPLE, "team/blocked", Digest(Blocked)), Denied),
        case("allowlist", Allow, Blob(get, EXAMPLE, "team/blocked", Dg::Layer(Blocked)), Denied),
        case("allowlist", Allow, Blob(head, EXAMPLE, "team/blocked", Dg::Layer(Blocked)), Denied),
        case("allowlist", Allow, Tags(EXAMPLE, "team/blocked"), Denied),
        case("allowlist", Allow, Referrers(EXAMPLE, "team/blocked", Dg::Manifest(Blocked)), Denied),
        case("allowlist", Allow, Catalog(EXAMPLE), NotListed(&[(EXAMPLE, "team/blocked")])),
        case("allowlist", Allow, Search("blocked"), NotListed(&[(EXAMPLE, "team/blocked")])),
        case("allowlist", Allow, Mount { registry: EXAMPLE, from: (EXAMPLE, "team/blocked"), digest: Dg::Layer(Blocked) }, NotMounted),
        case("allowlist", Allow, Manifest(get, HUB, "team/app", Tag("1")), Denied),
        case("allowlist", Allow, Blob(get, HUB, "team/app", Dg::Layer(HubApp)), Denied),
        case("allowlist", Allow, Manifest(get, EVIL, "evil/thing", Tag("1")), Denied),
        case("allowlist", Allow, SkopeoPull(EXAMPLE, "team/blocked", "1"), ClientRefused).only(&[R]),
        // [[private]] name = ["registry.example.com/"]: content pulled from there
        case("private name", Named, Push(Source::PulledFromExample, Flavor::Monolithic), PushRefused),
        case("private name", Named, Push(Source::PulledFromExample, Flavor::Chunked), PushRefused),
        case("private name", Named, SkopeoPush(Source::PulledFromExample), ClientRefused).only(&[R]),
        // [[private]] labels = ["com.example.classification=internal"]
        case("private label", Named, Push(Source::Fresh(Mark::Label), Flavor::Monolithic), PushRefused).h2(),
        case("private label", Named, Push(Source::Fresh(Mark::Label), Flavor::Chunked), PushRefused),
        case("private label", Named, SkopeoPush(Source::Fresh(Mark::Label)), ClientRefused).only(&[R]),
        // [[private]] annotations = ["com.example.internal"]
        case("private annotation", Named, Push(Source::Fresh(Mark::Annotation), Flavor::Monolithic), PushRefused),
        case("private annotation", Named, Push(Source::Fresh(Mark::Annotation), Flavor::Chunked), PushRefused),
        case("private annotation", Named, SkopeoPush(Source::Fresh(Mark::Annotation)), ClientRefused).only(&[R]),
        // A push in progress is not a way to hand its blobs to others.
        case("private staged blob", Named, StagedPeek(get), StagedHidden),
        case("private staged blob", Named, StagedPeek(head), StagedHidden),
        case("private control", Named, Push(Source::Fresh(Mark::None), Flavor::Monolithic), PushAccepted),
        case("private control", Named, Push(Source::Fresh(Mark::None), Flavor::Chunked), PushAccepted).only(&[R]),
        // [[private]] provenance = true
        case("private provenance", Provenance, Push(Source::PulledFromExample, Flavor::Monolithic), PushRefused),
        case("private provenance", Provenance, Push(Source::PulledFromExample, Flavor::Chunked), PushRefused),
        case("private provenance", Provenance, SkopeoPush(Source::PulledFromExample), ClientRefused).only(&[R]),
        case("provenance control", Provenance, Push(Source::Fresh(Mark::None), Flavor::Monolithic), PushAccepted).only(&[R]),
    ]
}

const BLOCK_POLICY: &str = r#"
public_registries = ["docker.io"]

[[rule]]
id = "registry-blocked"
message = "evil.example.com is blocked"
action = "deny"
registry = "evil.example.com"

[[rule]]
id = "repository-blocked"
message = "team/blocked is compromised"
action = "deny"
registry = "registry.example.com"
repository = "team/blocked"

[[rule]]
id = "hub-repository-blocked"
message = "docker.io team/hubblocked is compromised"
action = "deny"
registry = "docker.io"
repository = "team/hubblocked"

[[rule]]
id = "tag-blocked"
message = "the tag bad is not allowed"
action = "deny"
registry = "registry.example.com"
tag = "^bad$"
"#;

const ALLOW_POLICY: &str = r#"
mode = "allowlist"
public_registries = ["docker.io"]

[[rule]]
id = "app-vetted"
message = "team/app is vetted"
action = "allow"
registry = "registry.example.com"
repository = "team/app*"
"#;

const NAMED_POLICY: &str = r#"
public_registries = ["docker.io"]

[[private]]
id = "from-example"
message = "what came from registry.example.com stays inside"
action = "reject"
name = ["registry.example.com/"]

[[private]]
id = "internal-label"
message = "the image is labelled internal"
action = "reject"
labels = ["com.example.classification=internal"]

[[private]]
id = "internal-annotation"
message = "the image is annotated internal"
action = "reject"
annotations = ["com.example.internal"]
"#;

const PROVENANCE_POLICY: &str = r#"
public_registries = ["docker.io"]

[[private]]
id = "private-layers"
message = "its layers were only ever seen in private registries"
action = "reject"
provenance = true
"#;

struct World {
    example: Registry,
    hub: Registry,
    evil: Registry,
    seeded: HashMap<Seeded, Img>,
    doors: HashMap<(Gk, Listener), Door>,
    _proxies: Vec<Portcullis>,
    _policies: TestDir,
}

impl World {
    fn start() -> World {
        let (example, hub, evil) = std::thread::scope(|s| {
            let a = s.spawn(|| Registry::start(Auth::None));
            let b = s.spawn(|| Registry::start(Auth::None));
            let c = s.spawn(|| Registry::start(Auth::None));
            (join(a), join(b), join(c))
        });
        let mut seeded = HashMap::new();
        for (key, registry, repository, tags) in SEEDS {
            let img = Img::plain();
            let backend = match registry {
                EXAMPLE => &example,
                HUB => &hub,
                _ => &evil,
            };
            for tag in tags {
                img.seed(backend, repository, tag);
            }
            seeded.insert(key, img);
        }
        seeded[&Seeded::BadDigest].seed(&example, "team/copy", "1");
        let bad = &seeded[&Seeded::BadDigest];
        let block = format!(
            "{BLOCK_POLICY}\n[[rule]]\nid = \"digest-blocked\"\nmessage = \"known-bad content\"\naction = \"deny\"\ndigest = [\"{}\", \"{}\"]\n",
            bad.digest,
            bad.layer_digest()
        );
        let policies = TestDir::new("bypass-policies");
        let gatekeepers = [
            (Gk::Block, block.as_str()),
            (Gk::Allow, ALLOW_POLICY),
            (Gk::Named, NAMED_POLICY),
            (Gk::Provenance, PROVENANCE_POLICY),
        ];
        let configs: Vec<(Gk, String)> = gatekeepers
            .iter()
            .map(|(gk, text)| {
                let dir = policies.subdir(&format!("{gk:?}"));
                std::fs::write(dir.join("policy.toml"), text).expect("write policy");
                let config = ProxyConfig::new()
                    .search(&[EXAMPLE, EVIL])
                    .set("listen", "mirror", format!("127.0.0.1:{}", free_port()))
                    .policy_path(dir)
                    .registry(Upstream::new(EXAMPLE, &example))
                    .registry(Upstream::new(EVIL, &evil))
                    .registry(Upstream::new(HUB, &hub));
                (*gk, config.toml())
            })
            .collect();
        let proxies: Vec<(Gk, Portcullis)> = std::thread::scope(|s| {
            let started: Vec<_> = configs
                .iter()
                .map(|(gk, toml)| (*gk, s.spawn(move || Portcullis::start(toml))))
                .collect();
            started.into_iter().map(|(gk, h)| (gk, join(h))).collect()
        });
        let mut doors = HashMap::new();
        for (gk, proxy) in &proxies {
            for listener in Listener::ALL {
                doors.insert((*gk, listener), Door::of(proxy, listener));
            }
        }
        World {
            example,
            hub,
            evil,
            seeded,
            doors,
            _proxies: proxies.into_iter().map(|(_, p)| p).collect(),
            _policies: policies,
        }
    }

    fn door(&self, gk: Gk, listener: Listener) -> &Door {
        &self.doors[&(gk, listener)]
    }

    fn backend(&self, registry: &str) -> &Registry {
        match registry {
            EXAMPLE => &self.example,
            HUB => &self.hub,
            _ => &self.evil,
        }
    }

    fn digest(&self, d: Dg) -> String {
        match d {
            Dg::Manifest(s) => self.seeded[&s].digest.clone(),
            Dg::Layer(s) => self.seeded[&s].layer_digest(),
            Dg::Config(s) => self.seeded[&s].config_digest(),
        }
    }

    /// Which seeded content a digest is, to say *what* was served.
    fn name_of(&self, digest: &str) -> String {
        for (key, img) in &self.seeded {
            for (what, d) in [
                ("manifest", img.digest.clone()),
                ("layer", img.layer_digest()),
                ("config", img.config_digest()),
            ] {
                if d == digest {
                    return format!("{key:?} {what} {}", short(digest));
                }
            }
        }
        short(digest)
    }
}

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// One expanded row: a case through one listener with one protocol.
struct Row<'a> {
    id: usize,
    case: &'a Case,
    listener: Listener,
    proto: Proto,
}

struct Outcome {
    pass: bool,
    request: String,
    expected: String,
    got: String,
    detail: String,
}

fn rows(cases: &[Case]) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    for case in cases {
        let protos: &[Proto] = if case.h2 {
            &[Proto::H1, Proto::H2]
        } else {
            &[Proto::H1]
        };
        for &listener in case.doors {
            for &proto in protos {
                out.push(Row {
                    id: out.len() + 1,
                    case,
                    listener,
                    proto,
                });
            }
        }
    }
    out
}

impl World {
    fn run(&self, row: &Row) -> Outcome {
        let door = self.door(row.case.gk, row.listener);
        let expect = row.case.expect;
        // Through the mirror, another registry is named with containerd's `?ns=`: it is
        // served from that registry with its policy, or refused, never from docker.io.
        // `Some(repository)` when the row goes through the mirror with `?ns=`.
        let ns = |registry: &str, repository: &'static str| {
            (row.listener == M && registry != HUB).then_some(repository)
        };
        match row.case.act {
            Act::Manifest(method, registry, repository, reference) => {
                let reference = match reference {
                    Ref::Tag(t) => t.to_owned(),
                    Ref::Digest(s) => self.seeded[&s].digest.clone(),
                };
                let url = door.repo_url(registry, repository, &format!("manifests/{reference}"));
                let a = door.send(
                    row.proto,
                    method,
                    &url,
                    &[("Accept", MANIFEST_MEDIA_TYPE)],
                    None,
                );
                self.judge_read(expect, method, &url, &a, ns(registry, repository))
            }
            Act::Blob(method, registry, repository, digest) => {
                let url = door.repo_url(
                    registry,
                    repository,
                    &format!("blobs/{}", self.digest(digest)),
                );
                let a = door.send(row.proto, method, &url, &[], None);
                self.judge_read(expect, method, &url, &a, ns(registry, repository))
            }
            Act::Tags(registry, repository) => {
                let url = door.repo_url(registry, repository, "tags/list");
                let a = door.send(row.proto, "GET", &url, &[], None);
                self.judge_read(expect, "GET", &url, &a, ns(registry, repository))
            }
            Act::Referrers(registry, repository, digest) => {
                let url = door.repo_url(
                    registry,
                    repository,
                    &format!("referrers/{}", self.digest(digest)),
                );
                let a = door.send(row.proto, "GET", &url, &[], None);
                self.judge_read(expect, "GET", &url, &a, ns(registry, repository))
            }
            Act::Catalog(registry) => {
                let url = door.catalog_url(registry);
                let a = door.send(row.proto, "GET", &url, &[], None);
                self.judge_read(expect, "GET", &url, &a, ns(registry, ""))
            }
            Act::Search(term) => {
                let url = door.search_url(term);
                let a = door.send(row.proto, "GET", &url, &[], None);
                self.judge_read(expect, "GET", &url, &a, None)
            }
            Act::Mount {
                registry,
                from,
                digest,
            } => self.mount(
                row,
                door,
                registry,
                from,
                &self.digest(digest),
                ns(registry, "").is_some(),
            ),
            Act::Push(source, flavor) => self.push_row(row, door, source, flavor),
            Act::StagedPeek(method) => self.staged_peek(row, door, method),
            Act::SkopeoPull(registry, repository, tag) => {
                self.skopeo_pull(row, door, registry, repository, tag)
            }
            Act::SkopeoPush(source) => self.skopeo_push(row, door, source),
        }
    }

    fn judge_read(
        &self,
        expect: Expect,
        method: &str,
        url: &str,
        a: &Answer,
        ns: Option<&str>,
    ) -> Outcome {
        let hub = ns.is_some_and(|repository| answered_by_hub(a, repository));
        let ns = ns.is_some();
        let refused = a.status >= 400;
        let served = if method == "HEAD" {
            a.header("docker-content-digest")
                .unwrap_or_default()
                .to_owned()
        } else {
            sha256_digest(&a.body)
        };
        let (pass, expected) = match expect {
            Expect::Denied if ns => (
                refused,
                "refused (403 DENIED or another refusal), not docker.io's".to_owned(),
            ),
            // A blob HEAD where a push is refused too is "unknown" (404), so that a client
            // starting a push goes on to the upload whose 403 says why.
            Expect::Denied if method == "HEAD" && url.contains("/blobs/") => (
                a.status == 403 || a.status == 404,
                "403, or 404 where a push is refused too".to_owned(),
            ),
            Expect::Denied => (
                a.status == 403
                    && (method == "HEAD" || a.oci_codes().iter().any(|c| c == "DENIED")),
                "403 DENIED".to_owned(),
            ),
            Expect::Served(d) => {
                let want = self.digest(d);
                let ok = a.status == 200 && served == want;
                if ns {
                    (
                        ok || refused,
                        format!("200 {} or refused, never docker.io's", self.name_of(&want)),
                    )
                } else {
                    (ok, format!("200 {}", self.name_of(&want)))
                }
            }
            Expect::NotListed(names) => {
                let text = a.text();
                let shown = names.iter().any(|(r, repo)| listed(&text, r, repo));
                (
                    refused || (a.status == 200 && !shown),
                    format!(
                        "{} not listed",
                        names
                            .iter()
                            .map(|(r, p)| format!("{r}/{p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
            Expect::Listed(r, repo) => (
                a.status == 200 && listed(&a.text(), r, repo),
                format!("200 listing {r}/{repo}"),
            ),
            other => (false, format!("{other:?} is not a read expectation")),
        };
        let mut got = a.summary();
        if a.status == 200
            && matches!(expect, Expect::Served(_) | Expect::Denied)
            && !served.is_empty()
        {
            got = format!("{got} served {}", self.name_of(&served));
        }
        if hub {
            got.push_str(" (answered by docker.io)");
        }
        Outcome {
            pass: pass && !hub && a.error.is_none(),
            request: format!("{method} {url}"),
            expected,
            got,
            detail: a.detail(),
        }
    }

    fn mount(
        &self,
        row: &Row,
        door: &Door,
        registry: &str,
        from: (&str, &str),
        digest: &str,
        ns: bool,
    ) -> Outcome {
        let dest = format!("team/app-mount-{}", row.id);
        let from_name = door.mount_source(from.0, from.1, registry);
        let url = door.repo_url(
            registry,
            &dest,
            &format!("blobs/uploads/?mount={digest}&from={from_name}"),
        );
        let a = door.send(row.proto, "POST", &url, &[], Some(&[]));
        let mounted = backend_has_blob(self.backend(registry), &dest, digest);
        let denied = a.status == 403 && a.oci_codes().iter().any(|c| c == "DENIED");
        let hub = ns && answered_by_hub(&a, &dest);
        let answer_ok = !hub && (a.status == 202 || denied || (ns && a.status >= 400));
        let mut got = a.summary();
        if hub {
            got.push_str(" (answered by docker.io)");
        }
        if mounted {
            got.push_str(&format!("; {registry}/{dest} now has the blob"));
        }
        Outcome {
            pass: answer_ok && !mounted,
            request: format!("POST {url}"),
            expected: format!(
                "403 DENIED or 202 without mounting; {registry}/{dest} has no {}",
                short(digest)
            ),
            got,
            detail: a.detail(),
        }
    }

    /// The image a push row pushes: fresh, or seeded into registry.example.com and pulled
    /// through this portcullis's registry endpoint first (so it has seen where it came from).
    fn source(&self, row: &Row, source: Source) -> Result<(Img, Option<String>), String> {
        match source {
            Source::Fresh(Mark::None) => Ok((Img::plain(), None)),
            Source::Fresh(Mark::Label) => Ok((
                Img::new(&[("com.example.classification", "internal")], &[]),
                None,
            )),
            Source::Fresh(Mark::Annotation) => {
                Ok((Img::new(&[], &[("com.example.internal", "yes")]), None))
            }
            Source::PulledFromExample => {
                let img = Img::plain();
                let repository = format!("team/src-{}", row.id);
                img.seed(&self.example, &repository, "1");
                let door = self.door(row.case.gk, R);
                let mut urls = vec![door.repo_url(EXAMPLE, &repository, "manifests/1")];
                for (d, _) in img.blobs() {
                    urls.push(door.repo_url(EXAMPLE, &repository, &format!("blobs/{d}")));
                }
                for url in urls {
                    let a = door.send(
                        Proto::H1,
                        "GET",
                        &url,
                        &[("Accept", MANIFEST_MEDIA_TYPE)],
                        None,
                    );
                    if a.status != 200 {
                        return Err(format!(
                            "setup: pulling the source failed: GET {url}: {}",
                            a.detail()
                        ));
                    }
                }
                Ok((img, Some(format!("{EXAMPLE}/{repository}:1"))))
            }
        }
    }

    fn push_row(&self, row: &Row, door: &Door, source: Source, flavor: Flavor) -> Outcome {
        let dest = format!("someone/push-{}", row.id);
        let request = format!("{flavor:?} push of {source:?} to {HUB}/{dest}:1");
        let (img, _) = match self.source(row, source) {
            Ok(s) => s,
            Err(e) => return setup_failure(request, e),
        };
        let log = door.push(row.proto, HUB, &dest, "1", &img, flavor);
        let leaked: Vec<String> = img
            .blobs()
            .iter()
            .filter(|(d, _)| self.hub.has_blob(d))
            .map(|(d, _)| short(d))
            .collect();
        let manifest = backend_has_manifest(&self.hub, &dest, "1");
        let denied = log.last.status == 403 && log.last.oci_codes().iter().any(|c| c == "DENIED");
        let (pass, expected) = match row.case.expect {
            Expect::PushRefused => (
                !log.completed && denied && leaked.is_empty() && !manifest,
                "a request refused with 403 DENIED; docker.io holds no blob and no manifest"
                    .to_owned(),
            ),
            Expect::PushAccepted => (
                log.completed && leaked.len() == 2 && manifest,
                "every request succeeds; docker.io holds both blobs and the manifest".to_owned(),
            ),
            other => (false, format!("{other:?} is not a push expectation")),
        };
        let got = format!(
            "{}; docker.io blobs: [{}]; manifest: {}",
            log.steps.join(" → "),
            leaked.join(", "),
            if manifest { "present" } else { "absent" }
        );
        Outcome {
            pass,
            request,
            expected,
            got,
            detail: log.last.detail(),
        }
    }

    fn staged_peek(&self, row: &Row, door: &Door, method: &str) -> Outcome {
        let img = Img::new(&[("com.example.classification", "internal")], &[]);
        let (digest, bytes) = &img.blobs()[0];
        let dest = format!("someone/wip-{}", row.id);
        let request = format!(
            "{method} {HUB}/other/x blob {} staged by a push to {HUB}/{dest}",
            short(digest)
        );
        let staged = door.upload(row.proto, HUB, &dest, digest, bytes, Flavor::Monolithic);
        if staged.last.status != 201 {
            return setup_failure(
                request,
                format!(
                    "setup: the upload was not accepted: {}",
                    staged.steps.join(" → ")
                ),
            );
        }
        let url = door.repo_url(HUB, "other/x", &format!("blobs/{digest}"));
        let a = door.send(row.proto, method, &url, &[], None);
        Outcome {
            pass: a.status == 404 || a.status == 403,
            request: format!("{method} {url} (staged by a push to {HUB}/{dest})"),
            expected: "404 or 403, not the staged blob".to_owned(),
            got: a.summary(),
            detail: a.detail(),
        }
    }

    fn skopeo_pull(
        &self,
        row: &Row,
        door: &Door,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Outcome {
        let skopeo = Skopeo::new();
        let (out, request) = match row.listener {
            F => {
                let proxy = format!("http://{}", door.addr());
                let ca = door.ca_file().display().to_string();
                let reference = format!("docker://{registry}/{repository}:{tag}");
                let out = skopeo.run_with_env(
                    &["inspect", "--raw", &reference],
                    &[
                        ("HTTPS_PROXY", proxy.as_str()),
                        ("SSL_CERT_FILE", ca.as_str()),
                    ],
                );
                (
                    out,
                    format!("skopeo inspect --raw {reference} (HTTPS_PROXY)"),
                )
            }
            _ => {
                let cert_dir = door.cert_dir().display().to_string();
                let reference = format!("docker://{}/{registry}/{repository}:{tag}", door.addr());
                let out = skopeo.run(&["inspect", "--raw", "--cert-dir", &cert_dir, &reference]);
                (out, format!("skopeo inspect --raw {reference}"))
            }
        };
        let said = describe(&out);
        let denied = said.to_lowercase().contains("denied");
        let (pass, expected) = match row.case.expect {
            Expect::ClientRefused => (
                !out.status.success() && denied,
                "skopeo fails with \"denied\"".to_owned(),
            ),
            Expect::ClientServed(d) => {
                let want = self.digest(d);
                (
                    out.status.success() && sha256_digest(&out.stdout) == want,
                    format!("skopeo gets {}", self.name_of(&want)),
                )
            }
            other => (false, format!("{other:?} is not a client expectation")),
        };
        let got = if out.status.success() {
            format!(
                "success, manifest {}",
                self.name_of(&sha256_digest(&out.stdout))
            )
        } else {
            format!("failed{}", if denied { " (denied)" } else { "" })
        };
        Outcome {
            pass,
            request,
            expected,
            got,
            detail: said,
        }
    }

    fn skopeo_push(&self, row: &Row, door: &Door, source: Source) -> Outcome {
        let dest = format!("someone/skopeo-{}", row.id);
        let cert_dir = door.cert_dir().display().to_string();
        let to = format!("docker://{}/{HUB}/{dest}:1", door.addr());
        let (img, pulled) = match self.source(row, source) {
            Ok(s) => s,
            Err(e) => return setup_failure(format!("skopeo copy {source:?} {to}"), e),
        };
        let layout = TestDir::new("bypass-image");
        let from = match pulled {
            Some(name) => format!("docker://{}/{name}", door.addr()),
            None => {
                img.write_dir(layout.path());
                format!("dir:{}", layout.path().display())
            }
        };
        let out = Skopeo::new().copy(
            &from,
            &to,
            &["--src-cert-dir", &cert_dir, "--dest-cert-dir", &cert_dir],
        );
        let said = describe(&out);
        let denied = said.to_lowercase().contains("denied");
        let leaked: Vec<String> = img
            .blobs()
            .iter()
            .filter(|(d, _)| self.hub.has_blob(d))
            .map(|(d, _)| short(d))
            .collect();
        let manifest = backend_has_manifest(&self.hub, &dest, "1");
        Outcome {
            pass: !out.status.success() && denied && leaked.is_empty() && !manifest,
            request: format!("skopeo copy {from} {to}"),
            expected: "skopeo fails with \"denied\"; docker.io holds no blob and no manifest"
                .to_owned(),
            got: format!(
                "{}; docker.io blobs: [{}]; manifest: {}",
                if out.status.success() {
                    "success"
                } else if denied {
                    "failed (denied)"
                } else {
                    "failed"
                },
                leaked.join(", "),
                if manifest { "present" } else { "absent" }
            ),
            detail: said,
        }
    }
}

fn setup_failure(request: String, why: String) -> Outcome {
    Outcome {
        pass: false,
        request,
        expected: "a working setup".to_owned(),
        got: why.clone(),
        detail: why,
    }
}

/// Whether a request through the mirror with `?ns=<registry>` was answered as docker.io's:
/// portcullis names the registry that served in `Portcullis-Resolved-Name`, and a refusal
/// names what it judged.
fn answered_by_hub(a: &Answer, repository: &str) -> bool {
    a.header("portcullis-resolved-name")
        .is_some_and(|r| r.starts_with("docker.io/"))
        || (!repository.is_empty() && a.text().contains(&format!("docker.io/{repository}")))
}

/// Whether a catalog or search answer names `registry/repository`, fully qualified or
/// relative to the registry the client talks to.
fn listed(text: &str, registry: &str, repository: &str) -> bool {
    text.contains(&format!("\"{registry}/{repository}\""))
        || text.contains(&format!("\"{repository}\""))
}

#[test]
fn every_policy_criterion_holds_on_every_path_through_every_listener() {
    let started = Instant::now();
    let world = World::start();
    let ready = started.elapsed();
    let cases = cases();
    let rows = rows(&cases);
    let results: Vec<Mutex<Option<Outcome>>> = rows.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(row) = rows.get(i) else { break };
                let outcome = world.run(row);
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            });
        }
    });
    let outcomes: Vec<Outcome> = results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every row ran")
        })
        .collect();

    let mut failures = Vec::new();
    println!("\nbypass matrix: {} rows", rows.len());
    for (row, o) in rows.iter().zip(&outcomes) {
        let verdict = if o.pass { "pass" } else { "FAIL" };
        println!(
            "{:>3} {verdict} {:<24} {:<8} {} {} | expected {} | got {}",
            row.id,
            row.case.criterion,
            row.listener.as_str(),
            row.proto.as_str(),
            o.request,
            o.expected,
            o.got
        );
        if !o.pass {
            failures.push(format!(
                "row {} [{}] {} listener, {}: {}\n    expected: {}\n    got:      {}\n    answer:   {}",
                row.id,
                row.case.criterion,
                row.listener.as_str(),
                row.proto.as_str(),
                o.request,
                o.expected,
                o.got,
                o.detail.replace('\n', "\n              ")
            ));
        }
    }
    println!(
        "bypass matrix: {} of {} rows pass; setup {:.1?}, total {:.1?}",
        rows.len() - failures.len(),
        rows.len(),
        ready,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} bypass-matrix rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
