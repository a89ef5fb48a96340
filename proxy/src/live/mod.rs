//! The live page (`GET /live` on the admin listener): every stream of a run drawn as it happens, in
//! the browser, one lane each for the client, the proxy and the origin. It is plain HTML, CSS and
//! JavaScript in one file compiled into the binary: no build step, nothing fetched from anywhere.
//!
//! The page runs its streams through the proxy's own port and follows the proxy's event feed on
//! this listener; it is told the proxy's port and scheme when served (a query parameter `proxy=URL`
//! overrides them, for a proxy published on another port). The page itself needs no token: it holds
//! no secret, and its requests to the control routes carry the one given to it (`?token=`).
//!
//! With `run=1` the page starts a run as it loads, and its response is held open until the page
//! says it has a verdict (`POST /live/release/{hold}`), two minutes at most: the page is still
//! loading while its autorun runs, so a headless browser that dumps a page once loaded
//! (`chromium --dump-dom`) dumps the verdict, and one that gives up first dumps the run as it is.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::config::ProxyConfig;

const PAGE: &str = include_str!("page.html");

/// The longest a page's response is held open for its autorun.
const HOLD_AT_MOST: Duration = Duration::from_secs(120);

#[derive(Clone)]
struct Live {
    page: Arc<String>,
    holds: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    next: Arc<AtomicU64>,
}

/// `/live` and its release, for the proxy `config` describes.
pub fn routes(config: &ProxyConfig) -> Router {
    let live = Live {
        page: Arc::new(page(config)),
        holds: Arc::default(),
        next: Arc::default(),
    };
    Router::new()
        .route("/live", get(show))
        .route("/live/release/{hold}", post(release))
        .with_state(live)
}

fn page(config: &ProxyConfig) -> String {
    let scheme = if config.tls_cert.is_some() || config.tls_self_signed.is_some() {
        "https"
    } else {
        "http"
    };
    PAGE.replace("{{PROXY_PORT}}", &config.addr.port().to_string())
        .replace("{{PROXY_SCHEME}}", scheme)
}

/// Where a held page's response is.
enum Step {
    Page(Bytes, oneshot::Receiver<()>, Hold),
    Wait(oneshot::Receiver<()>, Hold),
}

/// A held response's place in the table; leaves it when the response ends, however it ends.
struct Hold {
    id: u64,
    holds: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

async fn show(State(live): State<Live>, Query(query): Query<HashMap<String, String>>) -> Response {
    let autorun = query.get("run").is_some_and(|run| run == "1");
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    if !autorun {
        return (headers, live.page.replace("{{HOLD}}", "")).into_response();
    }
    let id = live.next.fetch_add(1, Ordering::Relaxed) + 1;
    let (sender, released) = oneshot::channel();
    live.holds
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, sender);
    let hold = Hold {
        id,
        holds: Arc::clone(&live.holds),
    };
    let page = Bytes::from(live.page.replace("{{HOLD}}", &id.to_string()));
    // The page first, then the wait for its release; the hold leaves the table with the stream.
    let body =
        futures_util::stream::unfold(Some(Step::Page(page, released, hold)), |step| async move {
            match step? {
                Step::Page(page, released, hold) => {
                    Some((Ok::<_, Infallible>(page), Some(Step::Wait(released, hold))))
                }
                Step::Wait(released, hold) => {
                    let _ = tokio::time::timeout(HOLD_AT_MOST, released).await;
                    drop(hold);
                    None
                }
            }
        });
    (headers, Body::from_stream(body)).into_response()
}

async fn release(State(live): State<Live>, Path(hold): Path<u64>) -> StatusCode {
    let sender = live
        .holds
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&hold);
    match sender {
        Some(sender) => {
            let _ = sender.send(());
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn send(app: &Router, method: &str, uri: &str) -> Response {
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        app.clone().oneshot(request).await.expect("infallible")
    }

    #[tokio::test]
    async fn the_page_is_told_where_the_proxy_is_and_fetches_nothing_from_elsewhere() {
        let app = routes(&ProxyConfig {
            addr: "127.0.0.1:18080".parse().expect("address"),
            ..ProxyConfig::default()
        });
        let response = send(&app, "GET", "/live").await;
        assert_eq!(response.status(), StatusCode::OK);
        let page = response
            .into_body()
            .collect()
            .await
            .expect("page")
            .to_bytes();
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains(r#"PROXY_PORT = "18080""#), "{page}");
        assert!(!page.contains("{{"), "every placeholder filled");
        assert!(
            !page.contains("src=\"http") && !page.contains("href=\"http"),
            "nothing from elsewhere"
        );
    }

    #[tokio::test]
    async fn an_autorun_page_keeps_loading_until_it_is_released() {
        let app = routes(&ProxyConfig::default());
        let mut body = send(&app, "GET", "/live?sleep=3s&run=1").await.into_body();
        let page = body.frame().await.expect("the page").expect("bytes");
        let page = String::from_utf8_lossy(page.data_ref().expect("data"));
        let hold = page
            .split(r#"HOLD = ""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a hold id")
            .to_owned();
        let more = tokio::time::timeout(Duration::from_millis(100), body.frame()).await;
        assert!(more.is_err(), "the page is still loading");
        let released = send(&app, "POST", &format!("/live/release/{hold}")).await;
        assert_eq!(released.status(), StatusCode::NO_CONTENT);
        let end = tokio::time::timeout(Duration::from_secs(1), body.frame())
            .await
            .expect("the page ends once released");
        assert!(end.is_none());
        let again = send(&app, "POST", &format!("/live/release/{hold}")).await;
        assert_eq!(again.status(), StatusCode::NOT_FOUND);
    }
}
