//! `connect`: how long connecting to the upstream may take: the TCP connect, and for an `https://`
//! upstream the TLS handshake after it, as nginx's `proxy_connect_timeout` counts both.
//!
//! hyper-util's `HttpConnector` has a connect timeout of its own, but it reports expiry as an
//! `io::Error` that cannot be told apart from other connect failures without matching on message text,
//! and it would not cover the handshake. Wrapping the whole connector keeps the typed [`TimerExpired`]
//! all the way to the edge, which answers 504 for "timed out" and 502 for "refused", as nginx does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use tower::Service;

use super::{Timer, TimerExpired};
use crate::control::settings::Live;
use crate::BoxError;

/// A connector (`C`) whose connects give up after their limit (never, when `None`).
#[derive(Clone)]
pub struct ConnectTimeout<C> {
    inner: C,
    limit: Limit,
}

/// A limit fixed at start (the health checks'), or the `connect` timer in force at each connect.
#[derive(Clone)]
enum Limit {
    Fixed(Option<Duration>),
    Live(Live),
}

impl<C> ConnectTimeout<C> {
    pub fn new(inner: C, limit: Option<Duration>) -> Self {
        Self {
            inner,
            limit: Limit::Fixed(limit),
        }
    }

    /// Connects under the `connect` timer of the settings in force when each one starts.
    pub fn live(inner: C, live: Live) -> Self {
        Self {
            inner,
            limit: Limit::Live(live),
        }
    }
}

impl<C> Service<Uri> for ConnectTimeout<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = match &self.limit {
            Limit::Fixed(limit) => *limit,
            Limit::Live(live) => live.now().timers.connect,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connector whose connects never end, like a TLS handshake with a peer that never answers.
    #[derive(Clone)]
    struct Never;

    impl Service<Uri> for Never {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Pending<Result<(), BoxError>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _uri: Uri) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_that_never_ends_expires_at_the_limit_with_the_connect_timer() {
        let start = tokio::time::Instant::now();
        let mut connector = ConnectTimeout::new(Never, Some(Duration::from_secs(5)));
        let err = connector
            .call(Uri::from_static("https://upstream.test"))
            .await
            .expect_err("a connect that never ends");
        let expired = err.downcast_ref::<TimerExpired>().expect("a typed expiry");
        assert_eq!(
            *expired,
            TimerExpired::new(Timer::Connect, Duration::from_secs(5))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
