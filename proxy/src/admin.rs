//! The admin listener (`PROXY_ADMIN_ADDR`): `/metrics` for Prometheus and `/healthz` for orchestrators.
//! Kept off the proxy port so that a scrape or a health check never goes through the timers it measures.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin routes until `shutdown` resolves.
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
                            std::future::ready(Ok::<_, Infallible>(route(&request, &metrics)))
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

fn route(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (StatusCode::OK, OPENMETRICS, metrics.encode()),
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
