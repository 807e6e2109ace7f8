//! Forwarded upload sessions, tracked by portcullis itself.
//!
//! An upstream's upload `Location` carries its state (distribution's signed `_state`, which
//! holds the offset). A client that reuses an older one makes distribution cancel the upload,
//! and distribution ignores `Content-Range`, so an out-of-order or retried chunk is appended.
//! So the client gets an id of portcullis's own (`/v2/<name>/blobs/uploads/pcu-<id>`); the
//! upstream's latest location and the offset stay here, in a bounded map that forgets idle
//! sessions. A chunk that does not start at the offset is answered `416` before anything is
//! forwarded, and only the latest upstream location is ever sent on.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tokio::sync::Mutex;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::pipeline::plan::Target;
use crate::route::Route;
use crate::upstream::location::{ForeignLocation, Reason};
use crate::upstream::UpstreamError;

use super::Proxy;

/// The ids portcullis hands out for forwarded uploads (staged ones are `pcs-`).
pub const UPLOAD_PREFIX: &str = "pcu-";
/// Sessions kept at once; each is a few hundred bytes.
const MAX_SESSIONS: u64 = 65_536;
/// distribution purges uploads after days; a client idle this long starts again.
const IDLE: Duration = Duration::from_secs(6 * 3600);

/// One forwarded upload: where it lives upstream and how many bytes it holds.
#[derive(Debug)]
struct Session {
    registry: String,
    repository: String,
    /// The upstream's latest location after `/v2/<repository>/blobs/uploads/`, with its query.
    upstream: String,
    offset: u64,
}

pub(super) struct Uploads {
    sessions: moka::sync::Cache<String, Arc<Mutex<Session>>>,
}

impl Uploads {
    pub fn new() -> Uploads {
        Uploads {
            sessions: moka::sync::Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .time_to_idle(IDLE)
                .build(),
        }
    }
}

/// The `<start>-<end>` of a chunk's `Content-Range` (the spec's `^[0-9]+-[0-9]+$`), if sent.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ProxyError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || ProxyError::RangeInvalid(format!("Content-Range {value:?} is not <start>-<end>"));
    let text = value.to_str().map_err(|_| bad())?;
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (number(start), number(end)) {
        (Some(start), Some(end)) if start <= end => Ok(Some((start, end))),
        _ => Err(bad()),
    }
}

/// A chunk must start where the upload stands (`offset`) and be as long as its range says.
pub(crate) fn check_chunk(headers: &HeaderMap, offset: u64) -> Result<(), ProxyError> {
    let Some((start, end)) = content_range(headers)? else {
        return Ok(());
    };
    if start != offset {
        return Err(ProxyError::RangeInvalid(format!(
            "the chunk starts at {start}, but the upload holds {offset} bytes; \
             GET the upload for its offset"
        )));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) if length != end - start + 1 => Err(ProxyError::RangeInvalid(format!(
            "Content-Range {start}-{end} is {} bytes, Content-Length {length}",
            end - start + 1
        ))),
        _ => Ok(()),
    }
}

/// The session and query of an upload `Location` already rewritten to the client's name, or
/// `None` for any other location (a pushed blob's).
fn upload_part<'a>(location: &'a str, raw_name: &str) -> Option<&'a str> {
    let rest = location.strip_prefix(&format!("/v2/{raw_name}/blobs/uploads/"))?;
    let session = rest.split_once('?').map_or(rest, |(s, _)| s);
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b'-');
    (!session.is_empty() && session.len() <= 256 && session.bytes().all(safe)).then_some(rest)
}

/// The bytes an upload holds after an answer with `Range: 0-<end>`, given what it held
/// before and the length of the chunk just sent. distribution answers `0-0` for an empty
/// upload as for one byte, so that one is told apart by what was sent.
fn held_after(headers: &HeaderMap, before: u64, sent: Option<u64>) -> u64 {
    let end = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("0-"))
        .and_then(|v| v.parse::<u64>().ok());
    let counted = before.saturating_add(sent.unwrap_or(0));
    match end {
        Some(0) => counted.min(1),
        Some(end) => end.saturating_add(1),
        None => counted,
    }
}

/// `/v2/<raw_name>/blobs/uploads/<upstream>`, with the client's query (minus any `_state`:
/// only the upstream's own, latest one goes) after the upstream's.
fn upstream_uri(
    raw_name: &str,
    upstream: &str,
    client_query: Option<&str>,
) -> Result<Uri, ProxyError> {
    let mut target = format!("/v2/{raw_name}/blobs/uploads/{upstream}");
    let client: Vec<(String, String)> =
        form_urlencoded::parse(client_query.unwrap_or("").as_bytes())
            .into_owned()
            .filter(|(k, _)| k != "_state")
            .collect();
    if !client.is_empty() {
        let mut extra = form_urlencoded::Serializer::new(String::new());
        extra.extend_pairs(client);
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(&extra.finish());
    }
    target
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("upload location: {e}")))
}

impl Proxy {
    /// Forward a request that starts or continues an upload, through portcullis's ids.
    pub(super) async fn forward_upload(
        &self,
        route: &Route,
        raw_name: &str,
        target: &Target,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Route::Upload { session: id, .. } = route else {
            let resp = Box::pin(self.forward(route, raw_name, target, req)).await?;
            return self.adopt(resp, raw_name, target, None, None);
        };
        let unknown = || ProxyError::UploadUnknown(format!("upload {id} is unknown"));
        let entry = id
            .starts_with(UPLOAD_PREFIX)
            .then(|| self.uploads.sessions.get(id))
            .flatten()
            .ok_or_else(unknown)?;
        let mut session = entry.clone().lock_owned().await;
        if session.registry != target.registry || session.repository != target.repository.as_str() {
            return Err(unknown());
        }
        check_chunk(req.headers(), session.offset)?;
        let method = req.method().clone();
        let sent = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        *req.uri_mut() = upstream_uri(raw_name, &session.upstream, req.uri().query())?;
        let upstream_session = session
            .upstream
            .split_once('?')
            .map_or(session.upstream.as_str(), |(s, _)| s)
            .to_owned();
        let upstream_route = Route::Upload {
            name: raw_name.to_owned(),
            session: upstream_session,
        };
        let resp = Box::pin(self.forward(&upstream_route, raw_name, target, req)).await?;
        let status = resp.status();
        // Done (201), cancelled (a DELETE) or dead upstream (404): the id goes with it.
        let over = status == StatusCode::CREATED
            || status == StatusCode::NOT_FOUND
            || (method == Method::DELETE && status.is_success());
        if over {
            self.uploads.sessions.invalidate(id);
        }
        let resp = self.adopt(resp, raw_name, target, Some((id, &mut *session)), sent)?;
        if !over && status.is_success() {
            // Back in, in case it was evicted while the chunk was on its way.
            self.uploads.sessions.insert(id.clone(), entry);
        }
        Ok(resp)
    }

    /// Take an upstream upload location into portcullis's keeping (`session` when the upload
    /// is already known) and give the client portcullis's id instead.
    fn adopt(
        &self,
        mut resp: Response<ProxyBody>,
        raw_name: &str,
        target: &Target,
        session: Option<(&String, &mut Session)>,
        sent: Option<u64>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(location) = location else {
            return Ok(resp);
        };
        let Some(upstream) = upload_part(&location, raw_name) else {
            // A pushed blob's location passes; an upload location we cannot track does not.
            if location.contains("/blobs/uploads/") {
                return Err(UpstreamError::ForeignLocation {
                    registry: target.registry.clone(),
                    header: "Location",
                    location: ForeignLocation {
                        location: location.split('?').next().unwrap_or("").to_owned(),
                        reason: Reason::OutsideRepository,
                    },
                }
                .into());
            }
            return Ok(resp);
        };
        let ok = resp.status().is_success();
        let id = match session {
            Some((id, session)) => {
                if ok {
                    session.upstream = upstream.to_owned();
                    session.offset = held_after(resp.headers(), session.offset, sent);
                }
                id.clone()
            }
            None if !ok => {
                // No session was opened, and the upstream's state stays here all the same.
                resp.headers_mut().remove(header::LOCATION);
                return Ok(resp);
            }
            None => {
                let id = format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple());
                let session = Session {
                    registry: target.registry.clone(),
                    repository: target.repository.to_string(),
                    upstream: upstream.to_owned(),
                    offset: held_after(resp.headers(), 0, None),
                };
                self.uploads
                    .sessions
                    .insert(id.clone(), Arc::new(Mutex::new(session)));
                id
            }
        };
        let headers = resp.headers_mut();
        let ours = format!("/v2/{raw_name}/blobs/uploads/{id}");
        if let (Ok(location), Ok(uuid)) = (HeaderValue::from_str(&ours), HeaderValue::from_str(&id))
        {
            headers.insert(header::LOCATION, location);
            headers.insert("docker-upload-uuid", uuid);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn chunks_must_start_at_the_offset_and_match_their_length() {
        assert!(check_chunk(&headers(&[]), 7).is_ok(), "no range: a stream");
        let first = headers(&[("content-range", "0-9"), ("content-length", "10")]);
        assert!(check_chunk(&first, 0).is_ok());
        assert!(
            matches!(check_chunk(&first, 10), Err(ProxyError::RangeInvalid(_))),
            "a retried chunk"
        );
        let second = headers(&[("content-range", "10-19")]);
        assert!(check_chunk(&second, 10).is_ok());
        assert!(check_chunk(&second, 0).is_err(), "out of order");
        let short = headers(&[("content-range", "0-9"), ("content-length", "5")]);
        assert!(check_chunk(&short, 0).is_err());
        for bad in ["bytes=0-9", "9-0", "-9", "0-", "a-b", "0-9/10", " 0-9"] {
            let h = headers(&[("content-range", bad)]);
            assert!(check_chunk(&h, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_upload_locations_of_this_name_are_taken_over() {
        let name = "corp.example.com/team/app";
        assert_eq!(
            upload_part(
                "/v2/corp.example.com/team/app/blobs/uploads/u-1?_state=x%3D",
                name
            ),
            Some("u-1?_state=x%3D")
        );
        assert_eq!(
            upload_part("/v2/corp.example.com/team/app/blobs/sha256:aa", name),
            None
        );
        assert_eq!(upload_part("/v2/other/blobs/uploads/u", name), None);
        assert_eq!(
            upload_part("/v2/corp.example.com/team/app/blobs/uploads/a/b", name),
            None
        );
        assert_eq!(
            upload_part("/v2/corp.example.com/team/app/blobs/uploads/?x", name),
            None
        );
    }

    #[test]
    fn the_upstream_state_is_the_only_state_sent() {
        let uri =
            upstream_uri("n", "u?_state=new", Some("_state=old&digest=sha256%3Aab")).expect("uri");
        assert_eq!(
            uri.to_string(),
            "/v2/n/blobs/uploads/u?_state=new&digest=sha256%3Aab"
        );
        let uri = upstream_uri("n", "u", None).expect("uri");
        assert_eq!(uri.to_string(), "/v2/n/blobs/uploads/u");
    }

    #[test]
    fn ranges_report_held_bytes_and_0_0_is_told_apart_by_what_was_sent() {
        assert_eq!(held_after(&headers(&[("range", "0-9")]), 0, Some(10)), 10);
        assert_eq!(
            held_after(&headers(&[("range", "0-0")]), 0, None),
            0,
            "a new upload"
        );
        assert_eq!(held_after(&headers(&[("range", "0-0")]), 0, Some(1)), 1);
        assert_eq!(
            held_after(&headers(&[("range", "0-0")]), 1, None),
            1,
            "a GET"
        );
        assert_eq!(held_after(&headers(&[]), 4, Some(3)), 7);
        assert_eq!(held_after(&headers(&[("range", "bytes=0-9")]), 2, None), 2);
    }
}
