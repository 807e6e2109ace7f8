//! Bodies read from the cache's files: behind a fill in flight, or a committed blob checked
//! against its digest again as it is served.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::TryStreamExt as _;
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::fill::{Fill, Phase};
use crate::body::{boxed, BoxError, DigestMismatch, ProxyBody, Verified};

const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("the upstream fetch of this blob failed; it was not served whole")]
pub struct FillFailed;

/// The blob a fill is writing, from the start, as fast as it arrives. The last byte waits
/// for the commit, so a fetch that fails (a wrong digest above all) never looks complete.
pub fn follow(fill: Arc<Fill>, size: u64) -> ProxyBody {
    struct At {
        fill: Arc<Fill>,
        rx: tokio::sync::watch::Receiver<super::fill::State>,
        file: Option<tokio::fs::File>,
        pos: u64,
    }
    let start = At {
        rx: fill.watch(),
        fill,
        file: None,
        pos: 0,
    };
    let stream = futures_util::stream::try_unfold(start, move |mut at| async move {
        loop {
            let state = *at.rx.borrow_and_update();
            let available = match state.phase {
                Phase::Failed => return Err(BoxError::from(FillFailed)),
                Phase::Committed => size,
                Phase::Running => state.written.min(size.saturating_sub(1)),
            };
            if at.pos >= size && state.phase == Phase::Committed {
                return Ok(None);
            }
            if at.pos < available {
                if at.file.is_none() {
                    at.file = Some(open(&at.fill, state.phase).await?);
                }
                let want = usize::try_from(available - at.pos).map_or(CHUNK, |n| n.min(CHUNK));
                let mut buf = BytesMut::zeroed(want);
                let file = at.file.as_mut().ok_or(FillFailed)?;
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Err(BoxError::from(FillFailed));
                }
                buf.truncate(n);
                at.pos += n as u64;
                return Ok(Some((Frame::data(buf.freeze()), at)));
            }
            if at.rx.changed().await.is_err() && at.rx.borrow().phase != Phase::Committed {
                return Err(BoxError::from(FillFailed));
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// The file being written, or where it went once committed.
async fn open(fill: &Fill, phase: Phase) -> Result<tokio::fs::File, BoxError> {
    match tokio::fs::File::open(&fill.tmp).await {
        Ok(f) => Ok(f),
        Err(_) if phase == Phase::Committed || fill.watch().borrow().phase == Phase::Committed => {
            Ok(tokio::fs::File::open(&fill.committed).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A committed blob, whole: hashed again as it is served, and `on_corrupt` called (the
/// stream failing before its end) if the file no longer holds what its name says.
pub fn verified(
    file: tokio::fs::File,
    digest: &str,
    on_corrupt: impl FnOnce() + Send + 'static,
) -> ProxyBody {
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
        .map_ok(Frame::data)
        .map_err(BoxError::from);
    let mut on_corrupt = Some(on_corrupt);
    boxed(
        Verified::new(StreamBody::new(stream), digest).map_err(move |e: BoxError| {
            if e.is::<DigestMismatch>() {
                if let Some(f) = on_corrupt.take() {
                    f();
                }
            }
            e
        }),
    )
}

/// Bytes `start..=end` of a committed blob, for a `Range` request.
pub async fn range(path: PathBuf, start: u64, end: u64) -> std::io::Result<ProxyBody> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::Start(start)).await?;
    let part = file.take(end - start + 1);
    let stream = tokio_util::io::ReaderStream::with_capacity(part, CHUNK)
        .map_ok(Frame::data)
        .map_err(BoxError::from);
    Ok(StreamBody::new(stream).boxed_unsync())
}
