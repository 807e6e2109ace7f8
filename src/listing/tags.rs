//! Tag list pagination (`n`, `last`) made uniform: registries that ignore the parameters
//! (CNCF distribution before 3.0 among them) are paginated by portcullis, so every
//! upstream answers a client the way the distribution spec describes.

use bytes::Bytes;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
struct TagList {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The requested page: `n` tags after `last`, in lexical order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub n: Option<usize>,
    pub last: Option<String>,
}

impl PageRequest {
    pub fn parse(query: Option<&str>) -> PageRequest {
        let mut page = PageRequest::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "n" => page.n = v.parse().ok(),
                "last" if !v.is_empty() => page.last = Some(v.into_owned()),
                _ => {}
            }
        }
        page
    }

    pub fn is_paged(&self) -> bool {
        self.n.is_some() || self.last.is_some()
    }
}

/// Apply the page to an upstream tag list. Returns the new body and, when more tags
/// follow, the `Link` header for the next page (under the client's name). `None` when the
/// body is not a tag list (it is then passed on unchanged).
pub fn paginate(
    body: &[u8],
    page: &PageRequest,
    client_name: &str,
) -> Option<(Bytes, Option<HeaderValue>)> {
    let mut list: TagList = serde_json::from_slice(body).ok()?;
    let mut tags = list.tags.take().unwrap_or_default();
    tags.sort();
    tags.dedup();
    if let Some(last) = &page.last {
        tags.retain(|t| t > last);
    }
    let more = page.n.is_some_and(|n| tags.len() > n);
    if let Some(n) = page.n {
        tags.truncate(n);
    }
    let link = match (more, tags.last(), page.n) {
        (true, Some(last), Some(n)) => {
            let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
            HeaderValue::from_str(&format!(
                "</v2/{client_name}/tags/list?n={n}&last={last}>; rel=\"next\""
            ))
            .ok()
        }
        _ => None,
    };
    list.name = client_name.to_owned();
    list.tags = Some(tags);
    let body = serde_json::to_vec(&list).ok()?;
    Some((Bytes::from(body), link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(body: &Bytes) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        serde_json::from_value(v["tags"].clone()).unwrap_or_default()
    }

    #[test]
    fn pages_follow_lexical_order_with_a_next_link() {
        let body = br#"{"name":"team/app","tags":["3","1","2"]}"#;
        let page = PageRequest::parse(Some("n=2"));
        let (out, link) = paginate(body, &page, "corp.example.com/team/app").expect("tag list");
        assert_eq!(tags(&out), ["1", "2"]);
        assert_eq!(
            link.expect("more").to_str().ok(),
            Some(r#"</v2/corp.example.com/team/app/tags/list?n=2&last=2>; rel="next""#)
        );
        let (out, link) =
            paginate(body, &PageRequest::parse(Some("n=2&last=2")), "x").expect("tag list");
        assert_eq!(tags(&out), ["3"]);
        assert!(link.is_none());
    }

    #[test]
    fn unpaged_requests_and_other_bodies() {
        assert!(!PageRequest::parse(None).is_paged());
        assert!(paginate(b"not json", &PageRequest::parse(Some("n=1")), "x").is_none());
        let (out, _) = paginate(
            br#"{"name":"a","tags":null}"#,
            &PageRequest::parse(Some("n=1")),
            "a",
        )
        .expect("list");
        assert!(tags(&out).is_empty());
    }
}
