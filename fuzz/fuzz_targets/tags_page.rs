//! Tag list pagination: the client's `n`/`last` query and the upstream's tag list body.
//! Input: the query string, a NUL byte, the upstream body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::listing::tags::{paginate, PageRequest};

const CLIENT_NAME: &str = "corp.example.com/team/app";

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"n=2"[..], data),
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let page = PageRequest::parse(Some(query));
    let Some((out, link)) = paginate(body, &page, CLIENT_NAME) else {
        return;
    };
    // The page is what the distribution spec describes: lexical order, no repeats, after
    // `last`, at most `n`, under the client's name, and a next link only when more follow.
    let list: serde_json::Value = serde_json::from_slice(&out).expect("a JSON tag list");
    assert_eq!(list["name"], CLIENT_NAME);
    let tags: Vec<String> = serde_json::from_value(list["tags"].clone()).expect("tags");
    assert!(tags.windows(2).all(|w| w[0] < w[1]), "{tags:?}");
    if let Some(last) = &page.last {
        assert!(tags.iter().all(|t| t > last), "{tags:?} after {last:?}");
    }
    if let Some(n) = page.n {
        assert!(tags.len() <= n);
    }
    if let Some(link) = link {
        assert!(page.n.is_some());
        let link = link.to_str().expect("an ASCII Link header");
        let prefix = format!("</v2/{CLIENT_NAME}/tags/list?n=");
        assert!(link.starts_with(&prefix), "{link}");
    }
});
