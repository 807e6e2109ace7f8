//! The access log: one `request` line per request, written when the response body has
//! ended rather than when its headers went out, so that it says whether the client got
//! all of it. A blob cut short for a digest mismatch was logged `status=200` and nothing
//! else; now its line says `outcome=aborted reason=digest_mismatch`.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tracing::info;

use crate::body::{boxed, AbortReason, BoxError, ProxyBody};

use super::intent::Intent;

/// What is known of a request once its response headers are decided.
pub(super) struct AccessLine {
    /// What was asked: peer, method, path, version, listener, operation, start.
    pub intent: Intent,
    pub resolved: String,
    pub decision: &'static str,
    pub status: u16,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Complete,
    /// The body failed on portcullis's side (upstream cut, digest mismatch, stall).
    Aborted(AbortReason),
    /// The client went away before the end.
    Cancelled,
}

impl Outcome {
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Complete => ("complete", "-"),
            Outcome::Aborted(reason) => ("aborted", reason.as_str()),
            Outcome::Cancelled => ("cancelled", "-"),
        }
    }
}

impl AccessLine {
    fn write(&self, bytes: u64, outcome: Outcome) {
        let (outcome, reason) = outcome.words();
        // Display, not Debug: the path is a parsed URI path (no spaces or control
        // characters) and the rest are portcullis's own words, so nothing needs escaping.
        info!(
            target: "portcullis::access",
            peer = %self.intent.peer,
            method = %self.intent.method,
            path = %self.intent.path,
            version = ?self.intent.version,
            listener = %self.intent.listener,
            operation = %self.intent.operation,
            resolved = %self.resolved,
            decision = %self.decision,
            status = self.status,
            outcome = %outcome,
            reason = %reason,
            bytes,
            ms = self.intent.started.elapsed().as_millis() as u64,
            "request"
        );
    }
}

/// The response body, counted into `downloaded` and logged when it ends, fails or is
/// dropped. A body that is already at its end (a HEAD answer) is logged at once.
pub(super) fn logged(body: ProxyBody, line: AccessLine, downloaded: IntCounter) -> ProxyBody {
    if body.is_end_stream() {
        line.write(0, Outcome::Complete);
        return body;
    }
    let length = body.size_hint().exact();
    boxed(Logged {
        inner: body,
        pending: Pending {
            line: Some(line),
            bytes: 0,
            outcome: None,
        },
        length,
        downloaded,
    })
}

/// The line not yet written. Dropping it writes it: a body dropped before its end is a
/// client that went away.
struct Pending {
    line: Option<AccessLine>,
    bytes: u64,
    outcome: Option<Outcome>,
}

impl Pending {
    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        if let Some(line) = self.line.take() {
            line.write(self.bytes, outcome);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

pin_project_lite::pin_project! {
    struct Logged<B> {
        #[pin]
        inner: B,
        pending: Pending,
        // hyper stops polling a body once it has sent the length it announced, so a body
        // of known length is complete at its last byte.
        length: Option<u64>,
        downloaded: IntCounter,
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.pending.bytes += n;
                    this.downloaded.inc_by(n);
                }
                // hyper stops polling a body that says it has ended.
                if this.inner.is_end_stream() || *this.length == Some(this.pending.bytes) {
                    this.pending.finish(Outcome::Complete);
                }
            }
            Some(Err(e)) => this
                .pending
                .finish(Outcome::Aborted(AbortReason::of(e.as_ref()))),
            None => this.pending.finish(Outcome::Complete),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http::{Method, Version};

    use super::*;
    use crate::body::full;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    /// The log lines written while `f` runs.
    fn logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn line() -> AccessLine {
        AccessLine {
            intent: Intent {
                peer: "127.0.0.1:1".parse().expect("addr"),
                method: Method::GET,
                path: "/v2/x/blobs/sha256:00".to_owned(),
                version: Version::HTTP_2,
                listener: "registry",
                operation: "pull",
                user: None,
                started: Instant::now(),
            },
            resolved: "-".to_owned(),
            decision: "allow",
            status: 200,
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").expect("counter")
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_whole_body_is_counted_and_logged_complete_at_its_end() {
        let downloaded = counter();
        let out = logs(|| {
            let body = logged(full(&b"abcdef"[..]), line(), downloaded.clone());
            let got = run(body.collect()).expect("body").to_bytes();
            assert_eq!(&got[..], b"abcdef");
        });
        assert_eq!(downloaded.get(), 6);
        assert_eq!(out.matches(" request").count(), 1, "{out}");
        assert!(out.contains("outcome=complete reason=- bytes=6"), "{out}");
        assert!(out.contains("version=HTTP/2.0"), "{out}");
    }

    #[test]
    fn a_failing_body_is_logged_aborted_with_its_reason() {
        let out = logs(|| {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"abc"))),
                Err(Box::new(crate::body::DigestMismatch {
                    expected: "sha256:00".to_owned(),
                    actual: "sha256:11".to_owned(),
                    got: 3,
                })),
            ];
            let body = logged(
                boxed(StreamBody::new(futures_util::stream::iter(frames))),
                line(),
                counter(),
            );
            assert!(run(body.collect()).is_err());
        });
        assert_eq!(out.matches(" request").count(), 1, "{out}");
        assert!(
            out.contains("outcome=aborted reason=digest_mismatch bytes=3"),
            "{out}"
        );
    }

    #[test]
    fn a_body_dropped_before_its_end_is_logged_cancelled() {
        let out = logs(|| {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                vec![Ok(Frame::data(Bytes::from_static(b"abc")))];
            let endless = futures_util::stream::iter(frames).chain(futures_util::stream::pending());
            let mut body = logged(boxed(StreamBody::new(endless)), line(), counter());
            run(body.frame()).expect("a frame").expect("data");
        });
        assert_eq!(out.matches(" request").count(), 1, "{out}");
        assert!(out.contains("outcome=cancelled reason=- bytes=3"), "{out}");
    }

    #[test]
    fn an_empty_body_is_logged_at_once() {
        let out = logs(|| {
            let body = logged(crate::body::empty(), line(), counter());
            drop(body);
        });
        assert_eq!(out.matches(" request").count(), 1, "{out}");
        assert!(out.contains("outcome=complete reason=- bytes=0"), "{out}");
    }
}
