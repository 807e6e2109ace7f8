//! The world the integration tests run in.
//!
//! Every piece owns its processes and its temporary directory: dropping it stops the
//! processes by PID (after checking the PID still names the process it started) and
//! removes the directory. Set `PORTCULLIS_KEEP_TEST_DIRS=1` to keep the directories
//! for a post-mortem; when a test panics, each piece prints the tail of its log.

#![allow(dead_code)]

pub mod ca;
pub mod container;
pub mod dockerd;
pub mod fault;
pub mod http;
pub mod image;
pub mod jail;
pub mod matrix;
pub mod net;
pub mod portcullis;
pub mod process;
pub mod prometheus;
pub mod proxy_config;
pub mod redirect;
pub mod registry;
pub mod rss;
pub mod rt;
pub mod shape;
pub mod sockets;
pub mod tempdir;
pub mod token_server;
pub mod tools;

#[allow(unused_imports)]
pub use ca::Ca;
pub use dockerd::Dockerd;
pub use fault::{Bystander, Fault, FaultyUpstream, TruncatingUpstream};
pub use http::{https, raw_tls};
pub use image::OciImage;
pub use portcullis::Portcullis;
pub use process::ProcessId;
pub use proxy_config::{ProxyConfig, Upstream};
pub use redirect::RedirectingUpstream;
pub use registry::{Auth, Registry};
pub use token_server::TokenServer;
#[allow(unused_imports)]
pub use tools::{Buildah, Podman, Skopeo};

/// A policy whose content rule on docker.io makes portcullis stage every push there (the
/// rule needs the image's labels, so the push is held until its manifest is judged).
pub const STAGE_DOCKER_IO_PUSHES: &str = r#"
public_registries = ["docker.io"]

[[private]]
id = "internal-label"
message = "the image is labelled internal"
action = "reject"
labels = ["com.example.classification=internal"]
"#;
