//! The rules of request bodies: bounded in size, in stalls, in total time and in rate,
//! and read to their end (for a while) when answered early.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// How long the rest of a refused body is read and thrown away.
const LINGER: Duration = Duration::from_secs(10);

/// Reads and discards what remains of a body that was answered without being read to
/// its end (refused as too large, or ignored by its handler), for a while, as nginx's
/// lingering close does: a client that sends its whole body before reading (most do,
/// without `Expect: 100-continue`) would otherwise meet a reset connection instead of
/// the answer. Bounded in time; the bytes go nowhere.
pub(crate) fn linger<B>(body: B)
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
{
    if body.is_end_stream() {
        return;
    }
    // Bodies may be dropped where no runtime runs; then there is nobody to read for.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut body = body;
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

/// What bounds a request body in size and in time, all of it client-controlled.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes (413 beyond).
    pub max_bytes: u64,
    /// Longest time without a byte.
    pub stall: Duration,
    /// Longest time for the whole body, from when its head has arrived.
    pub deadline: Duration,
    /// Fewest bytes a second, on average, once `grace` has passed (0: no minimum).
    pub min_rate: u64,
    pub grace: Duration,
}

/// Frames smaller than this, past a body's first, are copied out of the read buffer.
const SMALL_FRAME: usize = 1024;

/// Why a body was cut off; shared with the dispatcher, which answers for it whatever
/// the handler made of the failed read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Cut {
    No = 0,
    TooLarge = 1,
    TooSlow = 2,
}

/// The error a cut-off body gives its reader.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyCut {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("the request body was not complete within {0:?}")]
    Deadline(Duration),
    #[error("the request body came slower than {0} bytes a second")]
    TooSlow(u64),
}

/// Bounds a body in size, in stalls, in total time and in rate (nginx's
/// `client_max_body_size` and `client_body_timeout`, HAProxy's `timeout http-request`):
/// a client trickling bytes cannot hold a connection, nor what a handler holds for it,
/// for long. Dropped unfinished (and not for being slow), it leaves the rest of the
/// body to [`linger`].
pub(crate) struct BodyGuard<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> {
    /// Taken when dropped, to be read to its end; gone at once if it was too slow.
    inner: Option<B>,
    limits: BodyLimits,
    received: u64,
    frames: u32,
    started: tokio::time::Instant,
    /// The earlier of the next stall limit and the deadline; made at the first wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: Arc<AtomicU8>,
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> BodyGuard<B> {
    pub(crate) fn new(inner: B, limits: BodyLimits, cut: Arc<AtomicU8>) -> Self {
        BodyGuard {
            inner: Some(inner),
            limits,
            received: 0,
            frames: 0,
            started: tokio::time::Instant::now(),
            timer: None,
            cut,
        }
    }

    fn next_wake(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        (now + self.limits.stall).min(self.started + self.limits.deadline)
    }

    /// Fails the body: `cut` says why, to the dispatcher.
    fn fail(
        &mut self,
        cut: Cut,
        error: BodyCut,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        match cut {
            // A refused body is still read to its end, so its sender reads the 413.
            Cut::TooLarge => {
                if let Some(inner) = self.inner.take() {
                    linger(inner);
                }
            }
            // A slow one is not worth waiting for.
            _ => self.inner = None,
        }
        self.cut.store(cut as u8, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> Drop for BodyGuard<B> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            linger(inner);
        }
    }
}

impl<B> HttpBody for BodyGuard<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = tokio::time::Instant::now();
                this.frames += 1;
                let mut frame = frame;
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limits.max_bytes {
                        return this.fail(Cut::TooLarge, BodyCut::TooLarge(this.limits.max_bytes));
                    }
                    // A small frame is a slice of the connection's read buffer and
                    // keeps all of it alive: a client trickling a byte at a time would
                    // make a handler that collects the body hold KiBs per byte. Past the
                    // first frame (most bodies have one), small ones are copied out.
                    if this.frames > 1 && data.len() < SMALL_FRAME {
                        frame = frame.map_data(|data| Bytes::copy_from_slice(&data));
                    }
                }
                let elapsed = now.duration_since(this.started);
                if this.limits.min_rate > 0
                    && elapsed > this.limits.grace
                    && u128::from(this.received) * 1000
                        < u128::from(this.limits.min_rate) * elapsed.as_millis()
                {
                    return this.fail(Cut::TooSlow, BodyCut::TooSlow(this.limits.min_rate));
                }
                // Progress: the next frame gets a fresh stall allowance.
                let wake = this.next_wake(now);
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(wake);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|result| result.map_err(Into::into))),
            Poll::Pending => {
                let wake = this.next_wake(tokio::time::Instant::now());
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let limits = this.limits;
                        let error = if tokio::time::Instant::now() >= this.started + limits.deadline
                        {
                            BodyCut::Deadline(limits.deadline)
                        } else {
                            BodyCut::Stalled(limits.stall)
                        };
                        this.fail(Cut::TooSlow, error)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}
