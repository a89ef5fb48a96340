//! The admin listener (`PROXY_ADMIN_ADDR`): `/metrics` for Prometheus and `/healthz` for orchestrators.
//! Kept off the proxy port so that a scrape or a health check never goes through the timers it measures.
//!
//! From SIGTERM until the drain ends, `/healthz` answers `503`, as Envoy's `/ready` does while it
//! drains: a balancer in front takes the proxy out of rotation while its open streams finish. So the
//! binary keeps this listener up until the proxy has drained, not merely until the signal.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin routes until `shutdown` resolves; `/healthz` answers `503` once `metrics` says the
/// proxy is draining.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let metrics = metrics.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            std::future::ready(Ok::<_, Infallible>(route(request.uri().path(), &metrics)))
                        });
                        if let Err(err) = http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await
                        {
                            tracing::debug!(%err, "admin connection ended with an error");
                        }
                    });
                }
                Err(err) => tracing::warn!(%err, "admin accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn route(path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, OPENMETRICS, metrics.encode()),
        "/healthz" if metrics.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "draining: shutting down, open streams are finishing\n".to_owned(),
        ),
        "/healthz" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the admin listener serves /metrics and /healthz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_answers_503_once_the_proxy_drains() {
        let metrics = Metrics::new();
        assert_eq!(route("/healthz", &metrics).status(), StatusCode::OK);
        metrics.drain_started();
        assert_eq!(
            route("/healthz", &metrics).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(route("/metrics", &metrics).status(), StatusCode::OK);
    }
}
