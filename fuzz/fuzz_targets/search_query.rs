//! The `/v1/search` query string (`q`, `n`, `page`, and anything else docker adds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::listing::search::Query;

/// Docker Hub's largest page, which the proxy caps `n` at.
const MAX_LIMIT: usize = 100;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(q) = Query::parse(Some(s)) else {
        return;
    };
    assert!(!q.term.is_empty());
    assert_eq!(q.term, q.term.trim());
    assert_eq!(q.term, q.term.to_ascii_lowercase());
    assert!((1..=MAX_LIMIT).contains(&q.limit), "{q:?}");
    assert!(q.page >= 1, "{q:?}");
    // The page arithmetic the search response does.
    let start = (q.page - 1).saturating_mul(q.limit);
    let _ = start.saturating_add(q.limit);
    let _ = usize::MAX.div_ceil(q.limit);
});
