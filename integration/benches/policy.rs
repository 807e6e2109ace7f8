//! Cost of one policy decision against 10,000 rules: registry hosts, wildcards, repository
//! prefixes, globs and regexes (most anchored on a literal first component, some that could
//! match anywhere), tags and digests. Every proxied request pays for one decision, so this
//! has to stay in microseconds.
//!
//! `rotating` cycles through 1,000 different subjects so that the regex engines' lazily built
//! states do not flatter the figure by seeing the same input every time.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::policy::{self, Operation, Policy, Subject};

const RULES: usize = 10_000;

fn rule(out: &mut String, id: &str, action: &str, criteria: &str) {
    out.push_str(&format!(
        "[[rule]]\nid = \"{id}\"\nmessage = \"{id}\"\naction = \"{action}\"\n{criteria}\n\n"
    ));
}

/// 10,000 rules, in five kinds of 2,000, interleaved so that no kind sits in one block.
fn policy_text() -> String {
    let mut out = String::with_capacity(RULES * 120);
    for i in 0..RULES / 5 {
        rule(
            &mut out,
            &format!("host-{i}"),
            "deny",
            &format!("registry = \"reg{i}.example.com\""),
        );
        rule(
            &mut out,
            &format!("prefix-{i}"),
            "deny",
            &format!("registry = \"quay.io\"\nrepository = \"team{i}/\""),
        );
        rule(
            &mut out,
            &format!("glob-{i}"),
            "confirm",
            &format!("repository = \"proj{i}/*-internal\""),
        );
        rule(
            &mut out,
            &format!("regex-{i}"),
            "warn",
            &format!("repository = \"regex:^grp{i}/[a-z]+-[0-9]+$\"\noperations = [\"pull\"]"),
        );
        // Every tenth of these could match anywhere, so they run on every lookup.
        let last = match i % 10 {
            0 => format!("repository = \"regex:(^|/)scratch-{i}(/|$)\""),
            1 => format!("registry = \"*.zone{i}.example.net\""),
            2 => format!("tag = \"^rc-{i}$\""),
            3 => format!("digest = \"sha256:{i:064x}\""),
            _ => format!("registry = \"ghcr.io\"\nrepository = \"org{i}/app\""),
        };
        rule(&mut out, &format!("mixed-{i}"), "deny", &last);
    }
    out
}

fn compiled() -> Policy {
    policy::parse("bench.toml", &policy_text()).unwrap_or_else(|problems| {
        panic!(
            "{}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// (registry, repository, tag): hits of every kind and misses, in equal measure.
fn subjects() -> Vec<(String, String, String)> {
    (0..1_000)
        .map(|i| {
            let n = (i * 7) % (RULES / 5);
            match i % 6 {
                0 => (format!("reg{n}.example.com"), "any/app".into(), "v1".into()),
                1 => ("quay.io".into(), format!("team{n}/sub/app"), "v1".into()),
                2 => (
                    "docker.io".into(),
                    format!("proj{n}/svc-internal"),
                    "v1".into(),
                ),
                3 => (
                    "docker.io".into(),
                    format!("grp{n}/svc-{i}"),
                    "latest".into(),
                ),
                4 => (
                    "docker.io".into(),
                    format!("library/nothing{i}"),
                    "3.20".into(),
                ),
                _ => (
                    "ghcr.io".into(),
                    format!("org{n}/scratch-{n}"),
                    format!("rc-{n}"),
                ),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let policy = compiled();
    let stats = policy.stats();
    eprintln!(
        "policy: {} rules, {} repository regex sets (largest {})",
        stats.rules, stats.regex_sets, stats.largest_regex_set
    );
    let subject = |registry, repository, tag| Subject {
        op: Operation::Pull,
        registry,
        repository,
        tag: Some(tag),
        digest: None,
    };

    let mut group = c.benchmark_group("policy evaluate, 10k rules");
    group.bench_function("glob hit", |b| {
        let s = subject("docker.io", "proj1234/svc-internal", "v1");
        b.iter(|| black_box(policy.evaluate(black_box(&s))))
    });
    group.bench_function("regex hit", |b| {
        let s = subject("docker.io", "grp1234/svc-42", "v1");
        b.iter(|| black_box(policy.evaluate(black_box(&s))))
    });
    group.bench_function("miss (default applies)", |b| {
        let s = subject("docker.io", "library/alpine", "3.20");
        b.iter(|| black_box(policy.evaluate(black_box(&s))))
    });
    let all = subjects();
    group.bench_function("rotating 1,000 subjects", |b| {
        let mut i = 0;
        b.iter(|| {
            let (registry, repository, tag) = &all[i % all.len()];
            i += 1;
            black_box(policy.evaluate(&subject(registry, repository, tag)))
        })
    });
    group.finish();

    let text = policy_text();
    let mut group = c.benchmark_group("policy compile");
    group.sample_size(10);
    group.bench_function("10k rules from TOML", |b| {
        b.iter(|| black_box(policy::parse("bench.toml", black_box(&text)).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
