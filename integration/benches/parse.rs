//! Parsing cost per request: every proxied call goes through `route::parse` and then
//! `Name::parse`, so both are measured on the paths docker actually sends.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::reference::Name;
use portcullis::route;

const PATHS: &[&str] = &[
    "/v2/",
    "/v2/library/alpine/manifests/latest",
    "/v2/quay.io/coreos/etcd/manifests/v3.5.0",
    "/v2/localhost:5000/team/app/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "/v2/ghcr.io/org/group/sub/project/image/blobs/uploads/3f1c2d4e-9a8b-4c7d-b6e5-f4a3b2c1d0e9",
];

const NAMES: &[&str] = &[
    "alpine",
    "library/alpine",
    "docker.io/bitnami/redis",
    "registry-1.docker.io/alpine",
    "127.0.0.1:5443/team/app",
    "ghcr.io/org/group/sub/project/image",
];

fn bench(c: &mut Criterion) {
    c.bench_function("route::parse", |b| {
        b.iter(|| {
            for path in PATHS {
                let _ = black_box(route::parse(black_box(path)));
            }
        })
    });
    c.bench_function("Name::parse", |b| {
        b.iter(|| {
            for name in NAMES {
                let _ = black_box(Name::parse(black_box(name)));
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
