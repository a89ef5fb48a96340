//! The client's request body on its way to the upstream, with its failure kept for the response.
//! hyper's client reports a request body that breaks off (bad chunked framing, a client gone mid-
//! upload) in one of two ways: before the response, as "error from user's Body stream" wrapping this
//! body's own error, a [`ClientError`] here; once the response has begun, only as a bare "connection
//! error" on the response body, which would blame the upstream. So the request body leaves its error
//! where the response body ([`UpstreamBody`]) finds it, and the edge sees the client's mistake both times.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::forward::ClientError;
use crate::replicas::OpenStream;
use crate::BoxError;

/// The request body's error, once it broke off; shared by the two bodies of one exchange.
#[derive(Clone, Default)]
struct Broken(Arc<OnceLock<Arc<hyper::Error>>>);

/// The client's request body, its errors marked as the client's; `None` for the empty body of a
/// retry, which is only ever made for a request whose body was empty.
pub struct RequestBody {
    body: Option<Incoming>,
    broken: Broken,
}

/// The upstream's response body, whose failure is the client's when the request body broke first.
/// It holds its replica's count of open streams until it is dropped.
pub struct UpstreamBody {
    body: Incoming,
    broken: Broken,
    _open: OpenStream,
}

impl RequestBody {
    /// `body`, and a tie to the response that will come back for it.
    pub fn new(body: Incoming) -> (Self, ResponseTie) {
        let broken = Broken::default();
        let tie = ResponseTie(broken.clone());
        (
            Self {
                body: Some(body),
                broken,
            },
            tie,
        )
    }

    /// An empty body, for a request sent again to another replica.
    pub fn empty() -> Self {
        Self {
            body: None,
            broken: Broken::default(),
        }
    }
}

/// What the response body needs to know about its request body.
pub struct ResponseTie(Broken);

impl ResponseTie {
    pub fn body(self, body: Incoming, open: OpenStream) -> UpstreamBody {
        UpstreamBody {
            body,
            broken: self.0,
            _open: open,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Err(err))) => {
                let err = Arc::new(err);
                // A body fails once: hyper does not poll it again.
                let _ = self.broken.0.set(Arc::clone(&err));
                Poll::Ready(Some(Err(ClientError::Body(err))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(match self.broken.0.get() {
                Some(cause) => ClientError::Body(Arc::clone(cause)).into(),
                None => err.into(),
            }))),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
