//! The whole pipeline in process: each test drives [`super::Proxy::handle`] through hyper
//! (over an in-memory pipe) in front of fake upstream registries that are tokio tasks on
//! 127.0.0.1, and checks what one stage is responsible for by what a client and the
//! upstream can see: status, OCI error code, headers, the requests the upstream received,
//! metrics and audit lines. No subprocess, no sleep.

mod harness;
mod upstream;

mod cached;
mod intent;
mod outcome;
mod plan;
mod push;
mod respond;
mod send;
mod signed;
mod verdict;

use http::{Method, StatusCode, Version};

use harness::Portcullis;
use upstream::{digest, Content, Fake};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

/// Nothing is blocked, on purpose.
const ALLOW_ALL: &str = "mode = \"blocklist\"\n";

/// Two configured registries, searched in order for short names. docker.io, always
/// configured, is pointed at a closed local port so that no mistake leaves the machine.
fn config(one: &Fake, two: &Fake) -> String {
    format!(
        r#"
[resolve]
search = ["one.test", "two.test"]
[[registry]]
host = "docker.io"
endpoint = "http://127.0.0.1:9"
[[registry]]
host = "one.test"
endpoint = "{}"
[[registry]]
host = "two.test"
endpoint = "{}"
"#,
        one.endpoint(),
        two.endpoint()
    )
}

async fn two_registries(one: Content, two: Content, policy: &str) -> (Fake, Fake, Portcullis) {
    let (one, two) = (one.start().await, two.start().await);
    let portcullis = Portcullis::new(&config(&one, &two), policy);
    (one, two, portcullis)
}

const DENY_SECRET: &str = r#"
mode = "blocklist"

[[rule]]
id = "no-secret"
message = "team/secret is internal only"
action = "deny"
operations = ["pull"]
registry = "one.test"
repository = "team/secret"

[[rule]]
id = "old-app"
message = "team/old is deprecated, move to team/app"
action = "warn"
operations = ["pull"]
registry = "one.test"
repository = "team/old"
"#;
