//! Streaming bodies: the one boxed body type the proxy passes around, and wrappers that
//! keep a stream honest (idle timeout, digest verification) without buffering it, and say
//! so when they cut one off ([`Reported`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::time::{Instant, Sleep};
use tracing::warn;

use crate::metrics::Metrics;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct BodyTimeout(Duration);

#[derive(Debug, thiserror::Error)]
#[error("body ended after {got} bytes, content digest {actual} does not match {expected}")]
pub struct DigestMismatch {
    pub expected: String,
    pub actual: String,
    pub got: u64,
}

pin_project_lite::pin_project! {
    /// Fails the stream when no frame arrives for `timeout`: a stalled upstream must not
    /// hold a client connection (and its memory) forever.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            sleep: tokio::time::sleep(timeout),
            timeout,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + *this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.sleep.poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Says when a request body has been sent whole (or failed, or was dropped): an upstream's
    /// time to answer counts from there, not from the first byte of a long upload.
    pub struct Sent<B> {
        #[pin]
        inner: B,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    }
}

/// `body`, and a receiver that completes once it has been sent (or can no longer be).
pub fn until_sent<B>(body: B) -> (Sent<B>, tokio::sync::oneshot::Receiver<()>) {
    let (done, sent) = tokio::sync::oneshot::channel();
    (
        Sent {
            inner: body,
            done: Some(done),
        },
        sent,
    )
}

impl<B> Body for Sent<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if matches!(frame, None | Some(Err(_))) {
            if let Some(done) = this.done.take() {
                let _ = done.send(());
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Remembers why a body failed: when a request sent on fails because the *client's* body
    /// did (it stalled or went away), the failure is the client's, not the registry's.
    pub struct Watched<B> {
        #[pin]
        inner: B,
        failure: Arc<std::sync::OnceLock<String>>,
    }
}

/// `body`, and where the reason lands if it fails.
pub fn watched<B>(body: B) -> (Watched<B>, Arc<std::sync::OnceLock<String>>) {
    let failure = Arc::new(std::sync::OnceLock::new());
    (
        Watched {
            inner: body,
            failure: failure.clone(),
        },
        failure,
    )
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Err(e)) = &frame {
            let _ = this.failure.set(e.to_string());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn for_digest(expected: &str) -> Option<Hasher> {
        match expected.split_once(':')?.0 {
            "sha256" => Some(Hasher::Sha256(Sha256::new())),
            "sha512" => Some(Hasher::Sha512(Sha512::new())),
            _ => None,
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    fn finish(&mut self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(std::mem::take(h).finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(std::mem::take(h).finalize())),
        }
    }
}

pin_project_lite::pin_project! {
    /// Verifies a content-addressed body against its digest while streaming it. The last
    /// data frame is held back until the digest is known, so a client never receives a
    /// complete-looking body whose content is wrong: on a mismatch the stream fails instead
    /// and the connection is aborted.
    pub struct Verified<B> {
        #[pin]
        inner: B,
        hasher: Option<Hasher>,
        expected: String,
        held: Option<Bytes>,
        got: u64,
        done: bool,
    }
}

impl<B> Verified<B> {
    /// A digest algorithm we cannot check streams through unverified.
    pub fn new(inner: B, expected: &str) -> Self {
        Verified {
            inner,
            hasher: Hasher::for_digest(expected),
            expected: expected.to_owned(),
            held: None,
            got: 0,
            done: false,
        }
    }
}

impl<B> Body for Verified<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(h) = this.hasher.as_mut() {
                            h.update(&data);
                        }
                        *this.got += data.len() as u64;
                        if let Some(previous) = this.held.replace(data) {
                            return Poll::Ready(Some(Ok(Frame::data(previous))));
                        }
                    }
                    // Trailers are not part of the content; registries do not send them.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    *this.done = true;
                    let actual = this.hasher.as_mut().map(Hasher::finish);
                    if let Some(actual) = actual.filter(|a| a != this.expected) {
                        return Poll::Ready(Some(Err(Box::new(DigestMismatch {
                            expected: this.expected.clone(),
                            actual,
                            got: *this.got,
                        }))));
                    }
                    return Poll::Ready(this.held.take().map(|d| Ok(Frame::data(d))));
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why an upstream body was cut off before its end; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The content did not match its digest ([`Verified`]).
    DigestMismatch,
    /// The upstream closed before the length it announced.
    Truncated,
    /// The upstream stopped sending ([`IdleTimeout`]).
    IdleTimeout,
    /// Any other failure reading the upstream's body (a reset, a bad chunk).
    UpstreamError,
}

impl AbortReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::DigestMismatch => "digest_mismatch",
            AbortReason::Truncated => "truncated",
            AbortReason::IdleTimeout => "idle_timeout",
            AbortReason::UpstreamError => "upstream_error",
        }
    }

    /// Classify a body error by its cause chain. hyper reports a body shorter than its
    /// `Content-Length` as a body error caused by an `UnexpectedEof` I/O error.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> AbortReason {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.is::<DigestMismatch>() {
                return AbortReason::DigestMismatch;
            }
            if e.is::<BodyTimeout>() {
                return AbortReason::IdleTimeout;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_incomplete_message() {
                    return AbortReason::Truncated;
                }
            }
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
            {
                return AbortReason::Truncated;
            }
            cause = e.source();
        }
        AbortReason::UpstreamError
    }
}

pin_project_lite::pin_project! {
    /// An upstream body that, when it fails, logs one warning naming the registry, the
    /// digest and the reason, and counts it in `portcullis_body_aborts_total`: the client
    /// only sees a connection cut short, and the access line was written with the headers.
    pub struct Reported<B> {
        #[pin]
        inner: B,
        registry: String,
        digest: String,
        metrics: Arc<Metrics>,
        reported: bool,
    }
}

impl<B> Reported<B> {
    /// `digest` is what the client asked for, or `-` for a body that is not content-addressed.
    pub fn new(inner: B, registry: &str, digest: &str, metrics: Arc<Metrics>) -> Self {
        Reported {
            inner,
            registry: registry.to_owned(),
            digest: digest.to_owned(),
            metrics,
            reported: false,
        }
    }
}

impl<B> Body for Reported<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Err(e)) => {
                let e: BoxError = e.into();
                if !*this.reported {
                    *this.reported = true;
                    let reason = AbortReason::of(e.as_ref());
                    warn!(
                        registry = %this.registry,
                        digest = %this.digest,
                        reason = %reason.as_str(),
                        error = %e,
                        "upstream body aborted"
                    );
                    this.metrics.body_aborted(this.registry, reason.as_str());
                }
                Poll::Ready(Some(Err(e)))
            }
            other => Poll::Ready(other.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Counts the bytes of a body as they stream through.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        counter: prometheus::IntCounter,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: prometheus::IntCounter) -> Self {
        Counted { inner, counter }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.inc_by(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn sha256(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_body_remembers_why_it_failed() {
        let stalled = futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>();
        let body = IdleTimeout::new(
            http_body_util::StreamBody::new(stalled),
            Duration::from_secs(3),
        );
        let (body, failure) = watched(body);
        assert!(body.collect().await.is_err());
        assert_eq!(
            failure.get().map(String::as_str),
            Some("no body data for 3s")
        );
        let (body, failure) = watched(chunks(&[b"fine"]));
        assert!(body.collect().await.is_ok());
        assert!(failure.get().is_none());
    }

    #[tokio::test]
    async fn verified_body_passes_matching_content_whole() {
        let digest = sha256(b"hello world");
        let body = Verified::new(chunks(&[b"hello ", b"wor", b"ld"]), &digest);
        let out = body.collect().await.expect("matches").to_bytes();
        assert_eq!(&out[..], b"hello world");
    }

    #[tokio::test]
    async fn verified_body_withholds_the_last_frame_on_mismatch() {
        let digest = sha256(b"something else");
        let mut body = Box::pin(Verified::new(chunks(&[b"hello ", b"world"]), &digest));
        let mut seen = Vec::new();
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => seen.extend_from_slice(f.data_ref().map(|b| &b[..]).unwrap_or_default()),
                Err(e) => {
                    assert!(e.to_string().contains("does not match"), "{e}");
                    failed = true;
                }
            }
        }
        assert!(failed);
        assert_eq!(seen, b"hello ", "the final frame must not reach the client");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_stalled_body() {
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let body = IdleTimeout::new(stalled, Duration::from_secs(5));
        let Err(err) = body.collect().await else {
            panic!("a stalled body must time out")
        };
        assert!(err.to_string().contains("no body data"), "{err}");
    }

    #[test]
    fn abort_reasons_come_from_the_cause_chain() {
        let mismatch: BoxError = Box::new(DigestMismatch {
            expected: "a".into(),
            actual: "b".into(),
            got: 1,
        });
        assert_eq!(
            AbortReason::of(mismatch.as_ref()),
            AbortReason::DigestMismatch
        );
        let timeout: BoxError = Box::new(BodyTimeout(Duration::from_secs(1)));
        assert_eq!(AbortReason::of(timeout.as_ref()), AbortReason::IdleTimeout);
        #[derive(Debug, thiserror::Error)]
        #[error("body error")]
        struct Wrapper(#[source] std::io::Error);
        let eof: BoxError = Box::new(Wrapper(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "incomplete body",
        )));
        assert_eq!(AbortReason::of(eof.as_ref()), AbortReason::Truncated);
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(AbortReason::of(reset.as_ref()), AbortReason::UpstreamError);
    }

    #[tokio::test]
    async fn a_failed_body_is_reported_once_and_a_good_one_never() {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(Metrics::new(&registry, ["corp".to_owned()]).expect("metrics"));
        let digest = sha256(b"something else");
        let bad = Reported::new(
            Verified::new(chunks(&[b"hello ", b"world"]), &digest),
            "corp",
            &digest,
            metrics.clone(),
        );
        assert!(bad.collect().await.is_err());
        let good = Reported::new(chunks(&[b"hello"]), "corp", "-", metrics.clone());
        assert!(good.collect().await.is_ok());
        let count = |reason: &str| {
            metrics
                .body_aborts
                .with_label_values(&["corp", reason])
                .get()
        };
        assert_eq!(count("digest_mismatch"), 1);
        assert_eq!(count("truncated"), 0);
    }

    #[tokio::test]
    async fn counted_bodies_count_bytes() {
        let counter = prometheus::IntCounter::new("c", "c").expect("counter");
        let body = Counted::new(full(Bytes::from_static(b"hello")), counter.clone());
        let out = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        assert_eq!(&out[..], b"hello");
        assert_eq!(counter.get(), 5);
    }
}
