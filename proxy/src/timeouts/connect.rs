//! `connect`: how long a TCP connect to the upstream may take.
//!
//! hyper-util's `HttpConnector` has a connect timeout of its own, but it reports expiry as an
//! `io::Error` that cannot be told apart from other connect failures without matching on message text.
//! Wrapping the connector keeps the typed [`TimerExpired`] all the way to the edge, which answers 504
//! for "timed out" and 502 for "refused", as nginx does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::{Timer, TimerExpired};
use crate::BoxError;

/// An `HttpConnector` whose connects give up after `limit` (never, when `None`).
#[derive(Clone)]
pub struct ConnectTimeout {
    inner: HttpConnector,
    limit: Option<Duration>,
}

impl ConnectTimeout {
    pub fn new(limit: Option<Duration>) -> Self {
        let mut inner = HttpConnector::new();
        // Streams are latency-sensitive: a heartbeat must not wait for Nagle.
        inner.set_nodelay(true);
        inner.enforce_http(true);
        Self { inner, limit }
    }
}

impl Service<Uri> for ConnectTimeout {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match limit {
                None => connecting.await.map_err(Into::into),
                Some(limit) => match tokio::time::timeout(limit, connecting).await {
                    Ok(connected) => connected.map_err(Into::into),
                    Err(_) => Err(TimerExpired::new(Timer::Connect, limit).into()),
                },
            }
        })
    }
}
