//! The blob cache stage: a blob is fetched upstream once and then served from disk, by every
//! client and protocol; concurrent misses share one fetch; nothing unverified is kept, and a
//! cached file that no longer matches its digest is cut off, evicted and fetched again.

use http::{header, HeaderMap, HeaderValue};

use super::*;

const CACHE: &str = "[cache]\nblobs_max_bytes = 16777216\n";

fn blob_bytes() -> Vec<u8> {
    (0..600_000u32).map(|i| (i % 251) as u8).collect()
}

async fn cached(one: Content) -> (Fake, Portcullis) {
    let one = one.start().await;
    let two = Content::default().start().await;
    let p = Portcullis::new(&format!("{CACHE}{}", config(&one, &two)), ALLOW_ALL);
    (one, p)
}

fn blob_gets(one: &Fake, digest: &str) -> usize {
    one.asked()
        .iter()
        .filter(|(m, p)| *m == Method::GET && p.ends_with(digest))
        .count()
}

fn cache_counter(p: &Portcullis, result: &str) -> f64 {
    p.counter(
        "portcullis_cache_requests_total",
        &[("cache", "blobs"), ("result", result)],
    )
}

#[tokio::test]
async fn a_blob_is_fetched_once_then_served_from_disk_over_h1_and_h2() {
    let bytes = blob_bytes();
    let d = digest(&bytes);
    let (one, p) = cached(Content::default().blob("team/app", &d, &bytes)).await;
    let path = format!("/v2/one.test/team/app/blobs/{d}");
    for version in [Version::HTTP_11, Version::HTTP_2, Version::HTTP_11] {
        let mut client = p.client(version).await;
        let got = client.get(&path).await;
        assert_eq!(got.status, StatusCode::OK, "{version:?}");
        assert_eq!(got.body.as_deref().ok(), Some(&bytes[..]), "{version:?}");
        assert_eq!(got.header("docker-content-digest"), Some(d.as_str()));
    }
    assert_eq!(blob_gets(&one, &d), 1);
    assert_eq!(
        (cache_counter(&p, "miss"), cache_counter(&p, "hit")),
        (1.0, 2.0)
    );
    let on_disk = p
        .state_dir()
        .join("blobs/sha256")
        .join(&d["sha256:".len()..]);
    assert_eq!(std::fs::read(on_disk).expect("cached file"), bytes);
    assert_eq!(
        p.counter("portcullis_blob_cache_bytes", &[]),
        bytes.len() as f64
    );
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_upstream_fetch() {
    let bytes = blob_bytes();
    let d = digest(&bytes);
    let (one, p) = cached(Content::default().blob("team/app", &d, &bytes)).await;
    let path = format!("/v2/one.test/team/app/blobs/{d}");
    let mut clients = Vec::new();
    for i in 0..16 {
        let version = if i % 2 == 0 {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        clients.push(p.client(version).await);
    }
    let gets = clients.iter_mut().map(|c| c.get(&path));
    for got in futures_util::future::join_all(gets).await {
        assert_eq!(got.body.as_deref().ok(), Some(&bytes[..]));
    }
    assert_eq!(blob_gets(&one, &d), 1, "{:?}", one.asked());
    let answered = ["miss", "hit", "coalesced"].map(|r| cache_counter(&p, r));
    assert_eq!(answered.iter().sum::<f64>(), 16.0, "{answered:?}");
    assert_eq!(answered[0], 1.0);
}

#[tokio::test]
async fn bytes_that_are_not_their_digest_are_never_kept_nor_served_whole() {
    let bytes = blob_bytes();
    let claimed = digest(b"something else");
    let (one, p) = cached(Content::default().blob("team/app", &claimed, &bytes)).await;
    let path = format!("/v2/one.test/team/app/blobs/{claimed}");
    for _ in 0..2 {
        let got = p.client(Version::HTTP_2).await.get(&path).await;
        assert!(got.body.is_err(), "a wrong blob was served whole");
    }
    assert_eq!(blob_gets(&one, &claimed), 2, "nothing was kept");
    let kept = std::fs::read_dir(p.state_dir().join("blobs/sha256")).expect("dir");
    assert_eq!(kept.count(), 0);
    let tmp = std::fs::read_dir(p.state_dir().join("blobs/tmp")).expect("dir");
    assert_eq!(tmp.count(), 0, "a failed fill left its file");
}

#[tokio::test]
async fn a_cached_file_that_no_longer_matches_is_cut_off_evicted_and_fetched_again() {
    let bytes = blob_bytes();
    let d = digest(&bytes);
    let (one, p) = cached(Content::default().blob("team/app", &d, &bytes)).await;
    let path = format!("/v2/one.test/team/app/blobs/{d}");
    let first = p.client(Version::HTTP_11).await.get(&path).await;
    assert_eq!(first.body.as_deref().ok(), Some(&bytes[..]));
    // The disk flips a bit.
    let on_disk = p
        .state_dir()
        .join("blobs/sha256")
        .join(&d["sha256:".len()..]);
    let mut rotten = bytes.clone();
    rotten[1234] ^= 1;
    std::fs::write(&on_disk, &rotten).expect("rot");

    let cut = p.client(Version::HTTP_11).await.get(&path).await;
    assert!(cut.body.is_err(), "a corrupt blob was served whole");
    assert_eq!(p.counter("portcullis_blob_cache_corrupt_total", &[]), 1.0);
    let again = p.client(Version::HTTP_2).await.get(&path).await;
    assert_eq!(again.body.as_deref().ok(), Some(&bytes[..]));
    assert_eq!(blob_gets(&one, &d), 2);
    assert_eq!(std::fs::read(&on_disk).expect("refetched"), bytes);
}

#[tokio::test]
async fn a_range_of_a_cached_blob_is_read_from_disk() {
    let bytes = blob_bytes();
    let d = digest(&bytes);
    let (one, p) = cached(Content::default().blob("team/app", &d, &bytes)).await;
    let path = format!("/v2/one.test/team/app/blobs/{d}");
    let mut client = p.client(Version::HTTP_2).await;
    assert_eq!(client.get(&path).await.status, StatusCode::OK);
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, HeaderValue::from_static("bytes=1000-1999"));
    let part = client.send_with(Method::GET, &path, &headers, b"").await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body.as_deref().ok(), Some(&bytes[1000..2000]));
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000-1999/{}", bytes.len()).as_str())
    );
    assert_eq!(blob_gets(&one, &d), 1);
}

#[tokio::test]
async fn a_blob_cached_from_one_repository_is_served_in_another_only_if_the_upstream_has_it_there()
{
    let bytes = blob_bytes();
    let d = digest(&bytes);
    let one = Content::default()
        .blob("team/app", &d, &bytes)
        .blob("team/fork", &d, &bytes);
    let (one, p) = cached(one).await;
    let mut client = p.client(Version::HTTP_11).await;
    let got = client
        .get(&format!("/v2/one.test/team/app/blobs/{d}"))
        .await;
    assert_eq!(got.body.as_deref().ok(), Some(&bytes[..]));

    // Not in that repository upstream: its refusal, and not a byte of the cached blob.
    let elsewhere = client
        .get(&format!("/v2/one.test/team/private/blobs/{d}"))
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(elsewhere.body.as_deref().ok(), Some(&b""[..]));
    // There: confirmed once by HEAD, then served from disk.
    for _ in 0..2 {
        let fork = client
            .get(&format!("/v2/one.test/team/fork/blobs/{d}"))
            .await;
        assert_eq!(fork.body.as_deref().ok(), Some(&bytes[..]));
    }
    let asked = one.asked();
    let heads = |repo: &str| {
        asked
            .iter()
            .filter(|(m, p)| *m == Method::HEAD && p == &format!("/v2/{repo}/blobs/{d}"))
            .count()
    };
    assert_eq!(
        (heads("team/private"), heads("team/fork")),
        (1, 1),
        "{asked:?}"
    );
    assert_eq!(blob_gets(&one, &d), 1, "{asked:?}");
}
