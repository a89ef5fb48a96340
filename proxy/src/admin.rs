//! The admin listener (`PROXY_ADMIN_ADDR`): `/metrics` for Prometheus, `/healthz` for orchestrators,
//! the control API (`control::api`) and the live page that draws it (`live`). Kept off the proxy port so that a scrape, a health check
//! or a control request never goes through the timers it measures or changes.
//!
//! From SIGTERM until the drain ends, `/healthz` answers `503`, as Envoy's `/ready` does while it
//! drains: a balancer in front takes the proxy out of rotation while its open streams finish. So the
//! binary keeps this listener up until the proxy has drained, not merely until the signal.
//!
//! Whoever reaches the control API can change every timer and cut every stream, so it stays on
//! loopback unless a token guards it: [`check`] refuses a wider address without one.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use keepalive_common::exposition;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::ProxyConfig;
use crate::control::{api, Control};
use crate::metrics::Metrics;

/// The admin listener bound beyond loopback with no token to guard the control API.
#[derive(Debug, thiserror::Error)]
#[error("PROXY_ADMIN_ADDR={addr} is not a loopback address and PROXY_ADMIN_TOKEN is unset: anyone who can reach it could change the timers and cut every stream. Set PROXY_ADMIN_TOKEN to a secret (clients send Authorization: Bearer TOKEN), or bind it to 127.0.0.1")]
pub struct Exposed {
    pub addr: SocketAddr,
}

/// Refuses an admin address beyond loopback without a token.
pub fn check(config: &ProxyConfig) -> Result<(), Exposed> {
    if config.admin_addr.ip().is_loopback() || config.admin_token.is_some() {
        Ok(())
    } else {
        Err(Exposed {
            addr: config.admin_addr,
        })
    }
}

/// What the admin routes serve; made by [`crate::Prepared::admin`].
#[derive(Clone)]
pub struct Admin {
    pub(crate) metrics: Metrics,
    pub(crate) control: Control,
    pub(crate) config: std::sync::Arc<ProxyConfig>,
}

/// Every admin route.
pub fn app(admin: &Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(admin.metrics.clone())
        .merge(api::routes(admin.control.clone(), &admin.config))
        .merge(crate::live::routes(&admin.config))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: the admin listener serves /metrics, /healthz, /live, /config, /streams and /events\n",
            )
        })
}

/// OpenMetrics, or the classic text format for a scraper that asks for `text/plain` only.
async fn metrics(State(metrics): State<Metrics>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok());
    let (content_type, body) = exposition::negotiate(metrics.encode(), accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn healthz(State(metrics): State<Metrics>) -> (StatusCode, &'static str) {
    if metrics.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down, open streams are finishing\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Serves the admin routes until `shutdown` resolves; `/healthz` answers `503` once the proxy is
/// draining. Open connections (an event follower's) end with it.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let app = app(&admin);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let service = TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::control::settings::Settings;

    fn admin_with(config: ProxyConfig) -> Admin {
        let metrics = Metrics::new();
        Admin {
            control: Control::new(Settings::of(&config), metrics.clone()),
            metrics,
            config: std::sync::Arc::new(config),
        }
    }

    fn admin() -> Admin {
        admin_with(ProxyConfig::default())
    }

    async fn get(app: &Router, uri: &str, accept: Option<&str>) -> (StatusCode, String) {
        let mut request = http::Request::builder().uri(uri);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        (response.status(), content_type)
    }

    #[tokio::test]
    async fn healthz_answers_503_once_the_proxy_drains() {
        let admin = admin();
        let app = app(&admin);
        assert_eq!(get(&app, "/healthz", None).await.0, StatusCode::OK);
        admin.metrics.drain_started();
        assert_eq!(
            get(&app, "/healthz", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&app, "/metrics", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_unless_only_text_is_asked_for() {
        let app = app(&admin());
        assert!(get(&app, "/metrics", None)
            .await
            .1
            .starts_with("application/openmetrics-text"));
        assert!(get(&app, "/metrics", Some("text/plain"))
            .await
            .1
            .starts_with("text/plain; version=0.0.4"));
    }

    #[tokio::test]
    async fn with_a_token_metrics_and_healthz_still_answer_without_it() {
        let app = app(&admin_with(ProxyConfig {
            admin_token: api::Token::parse("s3cret").expect("infallible"),
            ..ProxyConfig::default()
        }));
        assert_eq!(get(&app, "/metrics", None).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/healthz", None).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/config", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&app, "/nowhere", None).await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn an_admin_address_beyond_loopback_needs_a_token() {
        let mut config = ProxyConfig {
            admin_addr: "0.0.0.0:9090".parse().expect("address"),
            ..ProxyConfig::default()
        };
        let refused = check(&config).expect_err("open to all without a token");
        assert!(
            refused.to_string().contains("PROXY_ADMIN_TOKEN"),
            "{refused}"
        );
        config.admin_token = api::Token::parse("s3cret").expect("infallible");
        assert!(check(&config).is_ok());
        assert!(
            check(&ProxyConfig::default()).is_ok(),
            "loopback needs none"
        );
    }
}
