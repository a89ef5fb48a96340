//! The origin's routes, all in one table: the Django tutorial's two views, plus health and metrics for operators.
//!
//! Handlers are thin: they read the request into typed values and hand over to [`crate::stream`] or
//! [`crate::metrics`]; anything refused becomes an [`ApiError`], so every error has the same JSON shape,
//! including unknown paths and methods.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Router};
use keepalive_common::exposition;

use crate::error::ApiError;
use crate::jobs::routes as jobs;
use crate::params::StreamParams;
use crate::state::AppState;
use crate::stream;

/// The Django tutorial's `polls.views.index`, byte for byte.
pub const POLLS_INDEX: &str = "Hello, world. You're at the polls index.";

/// The origin as a router, ready for `axum::serve`, [`crate::serve`] or `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        // Django's APPEND_SLASH would redirect `/polls`; answering it directly keeps one round trip
        // out of every measurement.
        .route("/polls", get(polls_index))
        .route("/polls/", get(polls_index))
        .route("/polls/streamed", get(streamed))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(job_routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(readable_anywhere))
        .with_state(state)
}

/// Any page may read the poem and the jobs, as any curl may: they are public, and the proxy's live
/// page, served on the proxy's admin port, runs its streams from there. Only reading is allowed
/// across origins: the page sends nothing a preflight would ask about, so none is answered, and
/// `OPTIONS` stays the 405 it was.
async fn readable_anywhere(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::HeaderValue::from_static("location, keepalive-epoch"),
    );
    response
}

/// The tutorial's "special measures": work that outlives its connection (see [`crate::jobs`]).
fn job_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/jobs", post(jobs::start))
        .route("/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/jobs/{id}/stream", get(jobs::follow))
        .route_layer(middleware::map_response_with_state(state, jobs::add_epoch))
}

async fn polls_index() -> &'static str {
    POLLS_INDEX
}

/// `ok`, or `503 draining` from SIGTERM on: a balancer's active health check takes the origin out
/// of rotation while its streams drain.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.drain().is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// OpenMetrics, or the classic text format for a scraper that asks for `text/plain` only.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok());
    let (content_type, body) = exposition::negotiate(state.metrics().encode(), accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// `/polls/streamed`: the peer comes from [`crate::serve`]'s connection; absent under `oneshot`.
async fn streamed(
    State(state): State<AppState>,
    method: Method,
    RawQuery(query): RawQuery,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Response, ApiError> {
    let params = StreamParams::from_query(query.as_deref().unwrap_or_default(), state.config())?;
    if method == Method::HEAD {
        return Ok(stream::head_only(&params));
    }
    if !params.delay.is_zero() {
        // Holding back the response head is what a first-byte timer measures.
        tokio::time::sleep(params.delay).await;
    }
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    Ok(stream::response(
        params,
        state.metrics().clone(),
        state.drain().clone(),
        peer,
    ))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let path = uri.path().to_owned();
    let allowed = match path.split('/').collect::<Vec<_>>()[..] {
        ["", "jobs"] => "POST",
        ["", "jobs", _] => "GET, HEAD and DELETE",
        _ => "GET and HEAD",
    };
    ApiError::MethodNotAllowed {
        method,
        path,
        allowed,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use keepalive_common::accept::Phase;
    use keepalive_common::duration::{DURATION_FORM, TIMER_FORM};
    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;
    use crate::config::ServerConfig;
    use crate::drain::DrainState;

    async fn state() -> AppState {
        AppState::new(ServerConfig {
            max_sleep: Duration::from_secs(60),
            data_dir: crate::jobs::Storage::Memory,
            ..ServerConfig::default()
        })
        .await
        .expect("an in-memory job store")
    }

    async fn get(app: Router, uri: &str) -> Response {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        app.oneshot(request).await.expect("infallible")
    }

    async fn text(response: Response) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ascii header")
    }

    async fn json(response: Response) -> serde_json::Value {
        assert_eq!(header(&response, "content-type"), "application/json");
        serde_json::from_str(&text(response).await).expect("json body")
    }

    #[tokio::test]
    async fn polls_index_is_the_tutorials_text() {
        for uri in ["/polls/", "/polls"] {
            let response = get(app(state().await), uri).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                header(&response, "content-type"),
                "text/plain; charset=utf-8"
            );
            assert_eq!(
                text(response).await,
                "Hello, world. You're at the polls index."
            );
        }
    }

    #[tokio::test]
    async fn healthz_says_ok() {
        let response = get(app(state().await), "/healthz").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "ok");
    }

    #[tokio::test]
    async fn healthz_says_draining_with_503_once_shutdown_begins() {
        let (phase, following) = tokio::sync::watch::channel(Phase::Serving);
        let state = state()
            .await
            .draining_with(DrainState::following(following));
        assert_eq!(
            get(app(state.clone()), "/healthz").await.status(),
            StatusCode::OK
        );
        phase.send_replace(Phase::Draining);
        let response = get(app(state), "/healthz").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(text(response).await, "draining\n");
    }

    #[tokio::test]
    async fn bad_parameters_get_400_naming_parameter_value_and_form() {
        let cases = [
            ("sleep=abc", "sleep", "abc", DURATION_FORM),
            ("sleep=-1", "sleep", "-1", DURATION_FORM),
            ("sleep=NaN", "sleep", "NaN", DURATION_FORM),
            ("heartbeat=xyz", "heartbeat", "xyz", TIMER_FORM),
            ("format=xml", "format", "xml", "text or sse"),
            ("delay=-3", "delay", "-3", DURATION_FORM),
            ("lines=0", "lines", "0", "1 or more"),
            ("lines=x", "lines", "x", "1 or more"),
            ("heartbeat=1ns", "heartbeat", "1ns", "at least 10ms"),
            ("sleep=0", "sleep", "0", "lines=N"),
            (
                "sleep=0&lines=20000000",
                "lines",
                "20000000",
                "at most 10000000",
            ),
        ];
        for (query, parameter, value, form) in cases {
            let response = get(app(state().await), &format!("/polls/streamed?{query}")).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            let body = json(response).await;
            assert_eq!(body["status"], 400, "{query}: {body}");
            assert_eq!(body["error"], "invalid parameter", "{query}: {body}");
            assert_eq!(body["parameter"], parameter, "{query}: {body}");
            assert_eq!(body["value"], value, "{query}: {body}");
            let detail = body["detail"].as_str().expect("detail");
            assert!(
                detail.starts_with(&format!("{parameter}={value:?}: expected ")),
                "{query}: {detail}"
            );
            assert!(detail.contains(form), "{query}: {detail}");
        }
    }

    #[tokio::test]
    async fn durations_above_max_sleep_get_400_with_the_bound() {
        for query in ["sleep=2m", "delay=61", "heartbeat=1h"] {
            let response = get(app(state().await), &format!("/polls/streamed?{query}")).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            let body = json(response).await;
            let detail = body["detail"].as_str().expect("detail");
            assert!(
                detail.ends_with("at most 1m (SERVER_MAX_SLEEP)"),
                "{detail}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_routes_get_404_json() {
        let response = get(app(state().await), "/nope").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = json(response).await;
        assert_eq!(body["status"], 404);
        assert_eq!(body["error"], "not found");
        assert!(body["detail"].as_str().expect("detail").contains("/nope"));
        assert!(body.get("parameter").is_none(), "{body}");
    }

    #[tokio::test]
    async fn other_methods_get_405_json() {
        let request = Request::post("/polls/streamed")
            .body(Body::empty())
            .expect("request");
        let response = app(state().await)
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body = json(response).await;
        assert_eq!(body["status"], 405);
        assert_eq!(
            body["detail"],
            "POST /polls/streamed: this path answers GET and HEAD"
        );
    }

    #[tokio::test]
    async fn head_answers_the_stream_headers_without_starting_a_stream() {
        let state = state().await;
        let request = Request::head("/polls/streamed?format=sse")
            .body(Body::empty())
            .expect("request");
        let response = app(state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        assert_eq!(header(&response, "x-accel-buffering"), "no");
        assert_eq!(text(response).await, "");
        let metrics = state.metrics().encode();
        assert!(
            metrics.contains("origin_streams_started_total 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("origin_streams_ended_total{reason=\"client_gone\"} 0\n"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn streams_tell_proxies_not_to_buffer() {
        for (format, content_type) in [
            ("text", "text/plain; charset=utf-8"),
            ("sse", "text/event-stream"),
        ] {
            let uri = format!("/polls/streamed?format={format}&lines=1&sleep=0");
            let response = get(app(state().await), &uri).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header(&response, "content-type"), content_type);
            assert_eq!(header(&response, "cache-control"), "no-cache, no-transform");
            assert_eq!(header(&response, "x-accel-buffering"), "no");
        }
    }

    #[tokio::test]
    async fn finite_text_stream_is_the_tutorials_bytes() {
        let response = get(
            app(state().await),
            "/polls/streamed?lines=5&sleep=0&unknown=1",
        )
        .await;
        assert_eq!(
            text(response).await,
            "[         0 s] Little brown lady\n\
             [         0 s] Jumped into the blue water\n\
             [         0 s] And smiled\n\
             =========== Here we go again ===========\n\
             [         0 s] Little brown lady\n\
             [         0 s] Jumped into the blue water\n"
        );
    }

    #[tokio::test]
    async fn finite_sse_stream_numbers_lines_and_not_the_banner_and_says_when_it_is_over() {
        let response = get(
            app(state().await),
            "/polls/streamed?format=sse&lines=4&sleep=0",
        )
        .await;
        assert_eq!(
            text(response).await,
            "id: 1\ndata: [         0 s] Little brown lady\n\n\
             id: 2\ndata: [         0 s] Jumped into the blue water\n\n\
             id: 3\ndata: [         0 s] And smiled\n\n\
             data: =========== Here we go again ===========\n\n\
             id: 4\ndata: [         0 s] Little brown lady\n\n\
             event: end\ndata: {\"lines\":4}\n\n"
        );
    }

    #[tokio::test]
    async fn finite_text_stream_ends_with_a_marker_when_asked() {
        let response = get(
            app(state().await),
            "/polls/streamed?lines=2&sleep=0&end=marker",
        )
        .await;
        assert_eq!(
            text(response).await,
            "[         0 s] Little brown lady\n\
             [         0 s] Jumped into the blue water\n\
             =========== end of stream: 2 lines ===========\n"
        );
        let response = get(
            app(state().await),
            "/polls/streamed?format=sse&lines=1&sleep=0&end=none",
        )
        .await;
        assert_eq!(
            text(response).await,
            "id: 1\ndata: [         0 s] Little brown lady\n\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_back_the_response_head() {
        let start = Instant::now();
        let response = get(
            app(state().await),
            "/polls/streamed?delay=3s&lines=1&sleep=0",
        )
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            text(response).await,
            "[         0 s] Little brown lady\n",
            "the stream's clock starts after the delay"
        );
    }

    #[tokio::test]
    async fn any_page_may_read_the_answers_but_nothing_else_changes() {
        let response = get(app(state().await), "/polls/").await;
        assert_eq!(header(&response, "access-control-allow-origin"), "*");
        let request = Request::builder()
            .method("OPTIONS")
            .uri("/polls/streamed")
            .body(Body::empty())
            .expect("request");
        let response = app(state().await)
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn metrics_come_as_classic_text_to_a_scraper_that_asks_only_for_text() {
        let request = Request::get("/metrics")
            .header("accept", "text/plain")
            .body(Body::empty())
            .expect("request");
        let response = app(state().await)
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(
            header(&response, "content-type"),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let exposition = text(response).await;
        assert!(
            exposition.contains("# TYPE origin_streams_started_total counter\n"),
            "{exposition}"
        );
        assert!(!exposition.contains("# EOF"), "{exposition}");
    }

    #[tokio::test]
    async fn metrics_count_completed_and_abandoned_streams() {
        let state = state().await;
        text(get(app(state.clone()), "/polls/streamed?lines=3&sleep=0").await).await;
        let abandoned = get(app(state.clone()), "/polls/streamed?sleep=5").await;
        let mut body = abandoned.into_body();
        body.frame().await.expect("first line").expect("data");
        assert_eq!(state.metrics().streams_active(), 1);
        drop(body);

        let response = get(app(state.clone()), "/metrics").await;
        assert_eq!(
            header(&response, "content-type"),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let exposition = text(response).await;
        for sample in [
            "origin_streams_active 0\n",
            "origin_streams_started_total 2\n",
            "origin_streams_ended_total{reason=\"completed\"} 1\n",
            "origin_streams_ended_total{reason=\"client_gone\"} 1\n",
            "origin_lines_sent_total 4\n",
        ] {
            assert!(
                exposition.contains(sample),
                "no {sample:?} in:\n{exposition}"
            );
        }
    }
}
