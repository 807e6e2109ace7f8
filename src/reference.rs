//! Image reference grammar: repository names, registry hosts, tags and digests.
//!
//! Follows distribution/reference `regexp.go`, narrowed on purpose in three places: digests are
//! only sha256 and sha512 (the algorithms registries serve and we can verify), bracketed IPv6
//! registry hosts are rejected, and a port must be 1..=65535. The checks are hand-written byte
//! loops rather than regexes because they run on every proxied request.

use std::fmt;
use std::str::FromStr;

pub const DOCKER_HUB: &str = "docker.io";

/// distribution's `NameTotalLengthMax`.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;
/// Hosts that docker itself treats as Docker Hub; without folding them, one image would be
/// subject to different policy depending on how the user spelled the registry.
const DOCKER_HUB_ALIASES: [&str; 3] = [
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid repository name {0}")]
    InvalidName(String),
    #[error("invalid tag {0}")]
    InvalidTag(String),
    #[error("invalid digest {0}")]
    InvalidDigest(String),
    #[error("invalid registry host {0}")]
    InvalidRegistry(String),
    #[error("repository name must not be more than 255 characters (got {0})")]
    TooLong(usize),
}

/// Formats `"input": reason`. Debug-quoting keeps hostile input from forging log lines, and the
/// cut keeps a multi-kilobyte path out of every log line and error body.
pub(crate) fn detail(input: &str, reason: &str) -> String {
    const SHOWN: usize = 256;
    match input.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...: {reason}", &input[..cut]),
        None => format!("{input:?}: {reason}"),
    }
}

/// A content digest, `sha256:<64 hex>` or `sha512:<128 hex>`, lowercase hex only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn algorithm(&self) -> &str {
        self.0
            .split_once(':')
            .map_or("", |(algorithm, _)| algorithm)
    }

    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, hex)| hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = |reason: &str| NameError::InvalidDigest(detail(s, reason));
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("expected <algorithm>:<hex>"))?;
        let expected = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => {
                return Err(bad(
                    "unsupported digest algorithm (expected sha256 or sha512)",
                ))
            }
        };
        if hex.len() != expected {
            let reason = format!(
                "{algorithm} needs {expected} hex characters, got {}",
                hex.len()
            );
            return Err(bad(&reason));
        }
        // Uppercase hex is refused rather than folded: the digest names content byte for byte,
        // and a registry compares it as a string.
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("hex must be lowercase 0-9a-f"));
        }
        Ok(Digest(s.to_owned()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `manifests/` (or `:`/`@` in a user's image reference).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// A tag can never contain ':', so anything shaped `algorithm:...` is judged as a digest:
    /// "md5:..." then gets "unsupported digest algorithm" instead of a puzzling tag error.
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        match s.split_once(':') {
            Some((algorithm, _)) if looks_like_algorithm(algorithm) => {
                s.parse().map(Reference::Digest)
            }
            _ => validate_tag(s).map(|()| Reference::Tag(s.to_owned())),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

/// OCI image-spec algorithm grammar `[a-z0-9]+([+._-][a-z0-9]+)*`, loosely: only used to pick
/// which error to report, never to accept anything.
fn looks_like_algorithm(s: &str) -> bool {
    s.bytes().next().is_some_and(is_lower_alnum)
        && s.bytes()
            .all(|b| is_lower_alnum(b) || matches!(b, b'+' | b'.' | b'_' | b'-'))
}

fn validate_tag(s: &str) -> Result<(), NameError> {
    let bad = |reason: &str| Err(NameError::InvalidTag(detail(s, reason)));
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match s.bytes().next() {
        None => bad("tag must not be empty"),
        Some(_) if s.len() > TAG_MAX => bad("tag must not be more than 128 characters"),
        Some(first) if !is_word(first) => bad("tag must start with a letter, digit or '_'"),
        _ if !s.bytes().all(|b| is_word(b) || b == b'.' || b == b'-') => {
            bad("tag may only contain letters, digits, '_', '.' and '-'")
        }
        _ => Ok(()),
    }
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A validated repository path such as `library/alpine`, without any registry host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository(String);

impl Repository {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bad = |reason: &str| NameError::InvalidName(detail(s, reason));
        if s.is_empty() {
            return Err(bad("repository name must not be empty"));
        }
        if s.len() > NAME_MAX {
            return Err(NameError::TooLong(s.len()));
        }
        // Reported before the per-character check so that "%2e%2e" says what is wrong.
        if s.contains('%') {
            return Err(bad("percent-encoded characters are not allowed"));
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase"));
        }
        for component in s.split('/') {
            check_component(component).map_err(|reason| bad(&reason))?;
        }
        Ok(Repository(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> usize {
        self.0.bytes().filter(|&b| b == b'/').count() + 1
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn check_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("empty path component (\"//\" or a leading or trailing '/')".into());
    }
    if c == "." || c == ".." {
        return Err("'.' and '..' are not allowed as path components".into());
    }
    if let Some(ch) = c
        .chars()
        .find(|&ch| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)))
    {
        return Err(format!("invalid character {ch:?}"));
    }
    let bytes = c.as_bytes();
    if !bytes.first().is_some_and(|&b| is_lower_alnum(b))
        || !bytes.last().is_some_and(|&b| is_lower_alnum(b))
    {
        return Err("path components must start and end with a lowercase letter or digit".into());
    }
    let separators_ok = bytes
        .split(|&b| is_lower_alnum(b))
        .all(|run| matches!(run, b"" | b"." | b"_" | b"__") || run.iter().all(|&b| b == b'-'));
    if !separators_ok {
        return Err("separators must be '.', '_', '__' or a run of '-'".into());
    }
    Ok(())
}

/// The `<name>` of `/v2/<name>/...`, as written by the client: with or without a registry host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Name {
    Qualified {
        registry: String,
        repository: Repository,
    },
    Short(Repository),
}

impl Name {
    /// Parse the `<name>` part of `/v2/<name>/...`. The first path component is a registry
    /// host when it contains '.' or ':' or is exactly "localhost" (docker's rule); the host is
    /// lowercased and the docker.io family ("index.docker.io", "registry-1.docker.io",
    /// "registry.hub.docker.com") is normalised to "docker.io". A qualified name needs at least
    /// one repository component after the host. For docker.io, a single-component repository
    /// becomes "library/<name>".
    ///
    /// The 255-character limit applies to `s` as written, host included, as docker applies it.
    pub fn parse(s: &str) -> Result<Name, NameError> {
        if s.len() > NAME_MAX {
            return Err(NameError::TooLong(s.len()));
        }
        let split = s.split_once('/').filter(|(first, _)| {
            first.contains(['.', ':']) || *first == "localhost" || first.contains('@')
        });
        let Some((host, rest)) = split else {
            return Repository::parse(s).map(Name::Short);
        };
        let bad_host = |reason: &str| Err(NameError::InvalidRegistry(detail(host, reason)));
        if host.contains('@') {
            return bad_host("credentials (user@host) are not allowed");
        }
        if host.contains('%') {
            return bad_host("percent-encoded characters are not allowed");
        }
        if host.starts_with('[') {
            return bad_host("IPv6 literal hosts are not supported");
        }
        if !is_valid_registry_host(host) {
            return bad_host(
                "expected a DNS name or IPv4 address, with an optional :port in 1..=65535",
            );
        }
        if rest.is_empty() {
            return Err(NameError::InvalidName(detail(
                s,
                "a registry host must be followed by a repository",
            )));
        }
        let registry = normalize_registry(host);
        // Cannot exceed NAME_MAX: the host this replaces is longer than "library".
        let repository = with_library(&registry, Repository::parse(rest)?);
        Ok(Name::Qualified {
            registry,
            repository,
        })
    }

    /// Resolves the name against `registry`, the one to use when the client gave no host.
    ///
    /// For a Short single-component name longer than 247 characters the result is over
    /// 255 characters after "library/"; the upstream registry rejects it, not us.
    pub fn qualify(&self, registry: &str) -> (String, Repository) {
        match self {
            Name::Qualified {
                registry,
                repository,
            } => (registry.clone(), repository.clone()),
            Name::Short(repository) => {
                let registry = normalize_registry(registry);
                let repository = with_library(&registry, repository.clone());
                (registry, repository)
            }
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Qualified {
                registry,
                repository,
            } => write!(f, "{registry}/{repository}"),
            Name::Short(repository) => repository.fmt(f),
        }
    }
}

fn with_library(registry: &str, repository: Repository) -> Repository {
    if registry == DOCKER_HUB && repository.components() == 1 {
        Repository(format!("library/{}", repository.0))
    } else {
        repository
    }
}

/// An image reference as a user types it: `name[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    pub name: Name,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// The tag is after the last ':' that follows the last '/', so a registry port is never
    /// read as a tag; the digest is after the '@'.
    pub fn parse(s: &str) -> Result<ImageReference, NameError> {
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (s, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(colon) => {
                let (name, tag) = (&rest[..slash + colon], &rest[slash + colon + 1..]);
                validate_tag(tag)?;
                (name, Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        Ok(ImageReference {
            name: Name::parse(name)?,
            tag,
            digest,
        })
    }
}

/// "registry/repository" as a user would type it fully qualified, e.g. "docker.io/library/fedora".
pub fn fully_qualified(registry: &str, repo: &Repository) -> String {
    format!("{registry}/{repo}")
}

/// Normalise a registry host as written in configuration or a Host header (lowercase, docker.io
/// family -> docker.io).
pub fn normalize_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_owned()
    } else {
        host
    }
}

/// `domain(:port)?` with domain components `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`; IPv4
/// literals pass as domains. Bracketed IPv6 literals are rejected: they would need a parser of
/// their own for a case no registry we front uses.
pub fn is_valid_registry_host(host: &str) -> bool {
    let valid_domain = |d: &str| d.split('.').all(is_domain_component);
    host.len() <= NAME_MAX
        && match host.split_once(':') {
            // Stricter than the grammar's `[0-9]+`: a port we could never connect to is a typo.
            Some((domain, port)) => {
                port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && port.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
                    && valid_domain(domain)
            }
            None => valid_domain(host),
        }
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_tag_and_digest() {
        let r = ImageReference::parse("localhost:5000/a:1").expect("parses");
        assert_eq!(r.name.to_string(), "localhost:5000/a");
        assert_eq!((r.tag.as_deref(), r.digest), (Some("1"), None));
        let r = ImageReference::parse("a").expect("parses");
        assert_eq!(
            (r.name, r.tag, r.digest),
            (Name::Short(Repository("a".into())), None, None)
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageReference::parse(&format!("r.example:5000/a/b:1@{digest}")).expect("parses");
        assert_eq!(r.name.to_string(), "r.example:5000/a/b");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.digest.map(|d| d.to_string()), Some(digest.clone()));
        let r = ImageReference::parse(&format!("a/b@{digest}")).expect("parses");
        assert_eq!(
            (r.tag, r.digest.map(|d| d.to_string())),
            (None, Some(digest))
        );
        assert!(matches!(
            ImageReference::parse("a/b@notadigest"),
            Err(NameError::InvalidDigest(_))
        ));
        assert!(matches!(
            ImageReference::parse("a:.bad"),
            Err(NameError::InvalidTag(_))
        ));
        assert!(matches!(
            ImageReference::parse("A:1"),
            Err(NameError::InvalidName(_))
        ));
    }

    /// "[registry] repository" for a qualified name, "repository" for a short one.
    fn show(s: &str) -> Result<String, NameError> {
        Name::parse(s).map(|n| match n {
            Name::Qualified {
                registry,
                repository,
            } => format!("[{registry}] {repository}"),
            Name::Short(repository) => repository.0,
        })
    }

    fn kind(e: NameError) -> &'static str {
        match e {
            NameError::InvalidName(_) => "name",
            NameError::InvalidTag(_) => "tag",
            NameError::InvalidDigest(_) => "digest",
            NameError::InvalidRegistry(_) => "registry",
            NameError::TooLong(_) => "too long",
        }
    }

    #[test]
    fn good_names() {
        let a63 = "a".repeat(63);
        let long_ok = format!("{a63}/{a63}/{a63}/{a63}"); // exactly 255
        assert_eq!(show(&long_ok), Ok(long_ok.clone()));
        let table = [
            ("alpine", "alpine"),
            ("team/app", "team/app"),
            ("a/b/c/d/e/f/g", "a/b/c/d/e/f/g"),
            ("x/a.b_c__d---e/f-g", "x/a.b_c__d---e/f-g"),
            ("quay.io", "quay.io"), // no '/': docker's rule makes it a repository
            ("localhost", "localhost"),
            ("docker.io/alpine", "[docker.io] library/alpine"),
            ("docker.io/library/alpine", "[docker.io] library/alpine"),
            ("index.docker.io/alpine", "[docker.io] library/alpine"),
            (
                "registry-1.docker.io/bitnami/redis",
                "[docker.io] bitnami/redis",
            ),
            ("Registry.Hub.Docker.COM/x", "[docker.io] library/x"),
            ("docker.io:5000/x", "[docker.io:5000] x"),
            ("localhost/x", "[localhost] x"),
            ("localhost:5000/x", "[localhost:5000] x"),
            ("quay.io/coreos/etcd", "[quay.io] coreos/etcd"),
            ("Quay.IO/coreos/etcd", "[quay.io] coreos/etcd"),
            ("127.0.0.1:5443/team/app", "[127.0.0.1:5443] team/app"),
            ("my-reg:65535/x", "[my-reg:65535] x"),
            ("ghcr.io/a/b/c/d/e/f/g/h", "[ghcr.io] a/b/c/d/e/f/g/h"),
        ];
        for (input, expected) in table {
            assert_eq!(show(input), Ok(expected.to_owned()), "{input}");
        }
    }

    #[test]
    fn bad_names() {
        let too_long = format!("{}/b", "a".repeat(254));
        assert_eq!(show(&too_long), Err(NameError::TooLong(256)));
        assert_eq!(
            Name::parse("Foo/Bar").map_err(|e| e.to_string()),
            Err("invalid repository name \"Foo/Bar\": repository names must be lowercase".into())
        );
        assert_eq!(show("").map_err(kind), Err("name"));
        let bad_repository = "a//b /a a/ a/./b a/../b .. -a a- _a a. a..b a___b a._b a-_b \
            team/App a%2fb %2e%2e/x caf\u{e9} a:b quay.io/ quay.io/a/../b quay.io/Coreos/x";
        for input in bad_repository.split_whitespace() {
            assert_eq!(show(input).map_err(kind), Err("name"), "{input:?}");
        }
        let bad_registry = "user@quay.io/x u:p@quay.io/x user@host/x quay.io%2f/x [::1]:5000/x \
            -bad.io/x bad-.io/x bad..io/x .io/x reg.io:/x reg.io:0/x reg.io:65536/x \
            reg.io:5000:1/x reg_x.io/x reg.io:5x/x";
        for input in bad_registry.split_whitespace() {
            assert_eq!(show(input).map_err(kind), Err("registry"), "{input:?}");
        }
    }

    #[test]
    fn qualify_and_helpers() {
        let qualified = |name: &str, registry: &str| {
            let (registry, repository) = Name::parse(name).map(|n| n.qualify(registry)).unwrap();
            fully_qualified(&registry, &repository)
        };
        assert_eq!(
            qualified("alpine", "Index.Docker.io"),
            "docker.io/library/alpine"
        );
        assert_eq!(qualified("alpine", "quay.io"), "quay.io/alpine");
        assert_eq!(qualified("team/app", "docker.io"), "docker.io/team/app");
        assert_eq!(
            qualified("localhost:5000/x", "docker.io"),
            "localhost:5000/x"
        );
        assert_eq!(normalize_registry("REGISTRY-1.docker.io"), DOCKER_HUB);
        assert_eq!(normalize_registry("Quay.io:443"), "quay.io:443");
        assert_eq!(Repository::parse("a/b/c").map(|r| r.components()), Ok(3));
        for host in ["localhost", "10.0.0.1:5000", "a-b.c0", "X.IO"] {
            assert!(is_valid_registry_host(host), "{host}");
        }
        for host in "a.io:x a.io: [::1] a@b.io a.io/x a..io a.io. -a.io"
            .split(' ')
            .chain([""])
        {
            assert!(!is_valid_registry_host(host), "{host}");
        }
    }

    #[test]
    fn references() {
        let hex256 = "0123456789abcdef".repeat(4);
        let hex512 = hex256.repeat(2);
        for good in ["latest", "v1.2.3", "_x", "A-b_c.D", &"t".repeat(128)] {
            assert_eq!(Reference::parse(good), Ok(Reference::Tag(good.into())));
            assert_eq!(
                Reference::parse(good).map(|r| r.to_string()),
                Ok(good.into())
            );
        }
        for (algorithm, hex) in [("sha256", &hex256), ("sha512", &hex512)] {
            let s = format!("{algorithm}:{hex}");
            let digest: Digest = s.parse().unwrap();
            assert_eq!(
                (digest.algorithm(), digest.hex()),
                (algorithm, hex.as_str())
            );
            assert_eq!(
                (digest.as_str(), digest.to_string()),
                (s.as_str(), s.clone())
            );
            assert_eq!(Reference::parse(&s), Ok(Reference::Digest(digest)));
        }
        let bad_tags = format!(". .x -x a/b a@b \u{e9} Sha256:x {}", "t".repeat(129));
        for bad in bad_tags.split(' ').chain([""]) {
            assert_eq!(Reference::parse(bad).map_err(kind), Err("tag"), "{bad:?}");
        }
        let bad_digests = [
            format!("sha256:{}", &hex256[1..]),
            format!("sha256:{hex256}0"),
            format!("sha256:{}", hex256.to_uppercase()),
            format!("sha256:{}g", &hex256[1..]),
            format!("sha512:{hex256}"),
            format!("sha384:{hex256}"),
            format!("md5:{}", &hex256[..32]),
            "sha256:".into(),
        ];
        for bad in &bad_digests {
            assert_eq!(Reference::parse(bad).map_err(kind), Err("digest"), "{bad}");
        }
        assert!("latest".parse::<Digest>().is_err());
    }

    #[test]
    fn never_panics_and_display_reparses() {
        let pieces: Vec<&str> =
            "/ / . .. : a z9 - _ __ @ %2e A docker.io localhost :5000 sha256: \u{e9} ["
                .split(' ')
                .collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64: deterministic and dependency-free, enough to shake out panics.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed_ok = 0;
        for _ in 0..5000 {
            let mut s = String::new();
            for _ in 0..next() % 12 {
                let r = next();
                match r % 4 {
                    0 => s.push(char::from((r >> 8) as u8)),
                    _ => s.push_str(pieces[(r >> 8) as usize % pieces.len()]),
                }
            }
            let _ = Reference::parse(&s);
            let _ = is_valid_registry_host(&s);
            if let Ok(name) = Name::parse(&s) {
                assert_eq!(Name::parse(&name.to_string()), Ok(name), "{s:?}");
                parsed_ok += 1;
            }
        }
        assert!(
            parsed_ok > 50,
            "generator too hostile to test the Ok path: {parsed_ok}"
        );
    }
}
