//! The control routes of the admin listener, JSON in and out:
//!
//! - `GET /config`: the settings in force, which of them differ from the start, when a change to
//!   each applies, and what is fixed at start;
//! - `PATCH /config` with `{"idle": "1s", …}`: changes settings, all or none; `POST /config/reset`
//!   goes back to the start;
//! - `GET /streams`: the open streams; `POST /streams/{id}/cut` and `POST /streams/cut` (all) cut
//!   them now, with `{"style": "truncate" | "clean" | "reset"}` or the style in force;
//! - `GET /events`: what happens to every stream, as server-sent events.
//!
//! Every refusal is a 400 (404 for a stream that is not open, 409 for one already ending) with
//! `error`, `field` and `accepts`, and changes nothing. With a token set, each of these routes needs `Authorization: Bearer TOKEN`
//! (401 without); `/metrics` and `/healthz` never do, since scrapers and orchestrators hold no
//! token.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::settings::{Rejected, KEYS};
use super::streams::Cut;
use super::Control;
use crate::config::ProxyConfig;
use crate::cut_style::CutStyle;

/// `PROXY_ADMIN_TOKEN`: a bearer token, never shown in logs or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A token, or none for an empty value (so that compose can pass the variable through unset).
    pub fn parse(value: &str) -> Result<Option<Token>, Infallible> {
        let trimmed = value.trim();
        Ok((!trimmed.is_empty()).then(|| Token(trimmed.to_owned())))
    }

    /// Whether an `Authorization` header carries this token. Compared in time that does not depend
    /// on where the first difference is, so that timing cannot guess the token byte by byte.
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        // RFC 9110 11.1: the scheme's name is case-insensitive.
        let Some(given) = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
        else {
            return false;
        };
        let (given, expected) = (given.trim().as_bytes(), self.0.as_bytes());
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }
}

/// What the control routes read and act on.
#[derive(Clone)]
struct Api {
    control: Control,
    /// What `GET /config` reports as fixed at start.
    fixed: Value,
}

/// The control routes, behind `config.admin_token` when there is one.
pub fn routes(control: Control, config: &ProxyConfig) -> Router {
    let api = Api {
        control,
        fixed: fixed(config),
    };
    let router = Router::new()
        .route("/config", get(show).patch(change))
        .route("/config/reset", post(reset))
        .route("/streams", get(streams))
        .route("/streams/cut", post(cut_all))
        .route("/streams/{id}/cut", post(cut_one))
        .route("/events", get(events))
        .with_state(api);
    match config.admin_token.clone() {
        Some(token) => router.layer(middleware::from_fn(move |request: Request, next: Next| {
            let admitted = token.admits(request.headers().get(header::AUTHORIZATION));
            async move {
                if admitted {
                    next.run(request).await
                } else {
                    unauthorized()
                }
            }
        })),
        None => router,
    }
}

fn unauthorized() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": "this route needs the admin token: Authorization: Bearer TOKEN (PROXY_ADMIN_TOKEN)",
        })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A refusal, as JSON.
fn refused(status: StatusCode, field: &str, error: String, accepts: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "field": field, "accepts": accepts})),
    )
        .into_response()
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        refused(
            StatusCode::BAD_REQUEST,
            &self.field,
            format!("{}: {}", self.field, self.reason),
            &self.accepts,
        )
    }
}

fn fixed(config: &ProxyConfig) -> Value {
    let tls = if config.tls_cert.is_some() || config.tls_self_signed.is_some() {
        "on"
    } else {
        "off"
    };
    json!({
        "addr": config.addr.to_string(),
        "upstream": config.upstream.to_string(),
        "balance": config.balance.as_str(),
        "health_interval": config.health_interval.map_or_else(|| "off".to_owned(), keepalive_common::duration::display),
        "tls": tls,
        "fault_headers": config.fault_headers.as_str(),
        "compression_ignore_no_transform": config.compression_ignore_no_transform,
        "drain_timeout": keepalive_common::duration::display(config.drain_timeout),
    })
}

fn config_json(api: &Api) -> Value {
    let store = api.control.settings();
    let now = store.now();
    let mut body = now.to_json();
    body.insert(
        "changed".to_owned(),
        Value::from(now.differences(&store.start())),
    );
    let applies: Map<String, Value> = KEYS
        .iter()
        .map(|key| (key.name.to_owned(), Value::from(key.scope.as_str())))
        .collect();
    body.insert("applies_to".to_owned(), Value::Object(applies));
    body.insert("fixed".to_owned(), api.fixed.clone());
    Value::Object(body)
}

async fn show(State(api): State<Api>) -> Json<Value> {
    Json(config_json(&api))
}

/// A request body as a JSON object; `{}` for none.
fn object(body: &Bytes) -> Result<Map<String, Value>, Rejected> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Rejected {
            field: "body".to_owned(),
            reason: format!("{other} is not a JSON object"),
            accepts: "a JSON object like {\"idle\": \"1s\"}".to_owned(),
        }),
        Err(err) => Err(Rejected {
            field: "body".to_owned(),
            reason: format!("not JSON: {err}"),
            accepts: "a JSON object like {\"idle\": \"1s\"}".to_owned(),
        }),
    }
}

async fn change(State(api): State<Api>, body: Bytes) -> Result<Json<Value>, Rejected> {
    let changes = object(&body)?;
    let (before, after) = api.control.settings().change(&changes)?;
    let changed = after.differences(&before);
    tracing::info!(changed = ?changed, "settings changed by the control API: new requests and connections get them");
    Ok(Json(config_json(&api)))
}

async fn reset(State(api): State<Api>) -> Json<Value> {
    let store = api.control.settings();
    let before = store.reset();
    let changed = store.start().differences(&before);
    tracing::info!(changed = ?changed, "settings reset by the control API to those at start");
    Json(config_json(&api))
}

async fn streams(State(api): State<Api>) -> Json<Value> {
    let now = Instant::now();
    let streams: Vec<Value> = api
        .control
        .streams
        .list()
        .iter()
        .map(|tracked| tracked.to_json(now))
        .collect();
    Json(json!({"count": streams.len(), "streams": streams}))
}

/// The style a cut request asks for: `style` in its body, or the cut style in force.
fn style(api: &Api, body: &Bytes) -> Result<CutStyle, Rejected> {
    let fields = object(body)?;
    let rejected = |reason: String| Rejected {
        field: "style".to_owned(),
        reason,
        accepts: "truncate, clean or reset".to_owned(),
    };
    if let Some((name, _)) = fields.iter().find(|(name, _)| name.as_str() != "style") {
        return Err(Rejected {
            field: name.clone(),
            reason: format!("{name:?} is not part of a cut"),
            accepts: "{\"style\": \"truncate\" | \"clean\" | \"reset\"}".to_owned(),
        });
    }
    match fields.get("style") {
        None | Some(Value::Null) => Ok(api.control.settings().now().cut_style),
        Some(Value::String(text)) => <CutStyle as clap::ValueEnum>::from_str(text.trim(), true)
            .map_err(|_| rejected(format!("{text:?} is not a cut style"))),
        Some(other) => Err(rejected(format!("{other} is not a cut style"))),
    }
}

async fn cut_one(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let style = match style(&api, &body) {
        Ok(style) => style,
        Err(rejected) => return rejected.into_response(),
    };
    let Ok(id) = id.parse::<u64>() else {
        return refused(
            StatusCode::BAD_REQUEST,
            "id",
            format!("{id:?} is not a stream id"),
            "the id of an open stream, as GET /streams lists them",
        );
    };
    match api.control.streams.cut(id, style) {
        Cut::Asked => Json(json!({"cut": [id], "style": style.as_str()})).into_response(),
        Cut::Ending => refused(
            StatusCode::CONFLICT,
            "id",
            format!("stream {id} is already ending (cut, timed out or done)"),
            "the id of an open stream, as GET /streams lists them",
        ),
        Cut::NotOpen => refused(
            StatusCode::NOT_FOUND,
            "id",
            format!("no open stream {id}"),
            "the id of an open stream, as GET /streams lists them",
        ),
    }
}

async fn cut_all(State(api): State<Api>, body: Bytes) -> Response {
    match style(&api, &body) {
        Ok(style) => {
            let ids = api.control.streams.cut_all(style);
            Json(json!({"cut": ids, "style": style.as_str()})).into_response()
        }
        Err(rejected) => rejected.into_response(),
    }
}

/// How often the event feed says something when nothing happens, so that no idle timer between a
/// follower and the proxy (this proxy's own, say) closes it.
const FEED_HEARTBEAT: Duration = Duration::from_secs(10);

async fn events(State(api): State<Api>) -> impl IntoResponse {
    let follower = api.control.events.follow();
    let feed = futures_util::stream::unfold(follower, |mut follower| async move {
        let event = match follower.receiver.recv().await {
            Ok(event) => Sse::default()
                .id(event.seq.to_string())
                .event(event.kind)
                .data(event.data.as_str()),
            Err(RecvError::Lagged(missed)) => Sse::default()
                .event("lagged")
                .data(json!({"missed": missed}).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), follower))
    });
    axum::response::sse::Sse::new(feed).keep_alive(KeepAlive::new().interval(FEED_HEARTBEAT))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::control::settings::Settings;

    fn app(token: Option<&str>) -> (Router, Control) {
        let config = ProxyConfig {
            admin_token: token.map(|token| Token(token.to_owned())),
            ..ProxyConfig::default()
        };
        let control = Control::new(Settings::of(&config), crate::metrics::Metrics::new());
        (routes(control.clone(), &config), control)
    }

    async fn send(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn a_change_is_shown_and_reset_restores_the_start() {
        let (app, control) = app(None);
        let (status, shown) = send(&app, "PATCH", "/config", r#"{"idle": "1s"}"#).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["idle"], "1s");
        assert_eq!(shown["changed"], json!(["idle"]));
        assert_eq!(shown["applies_to"]["idle"], "new requests");
        assert_eq!(shown["applies_to"]["send"], "new client connections");
        assert_eq!(
            control.live().now().timers.idle,
            Some(Duration::from_secs(1))
        );
        let (_, shown) = send(&app, "POST", "/config/reset", "").await;
        let start = Settings::of(&ProxyConfig::default()).to_json();
        assert_eq!(shown["idle"], start["idle"]);
        assert_eq!(shown["changed"], json!([]));
    }

    #[tokio::test]
    async fn bad_input_is_a_400_naming_the_field_and_changes_nothing() {
        let (app, control) = app(None);
        let start = control.live().now();
        for (body, field) in [
            (r#"{"idle": "1s", "cut_style": "polite"}"#, "cut_style"),
            (r#"{"idle": [1]}"#, "idle"),
            (r#"["idle"]"#, "body"),
            ("idle=1s", "body"),
        ] {
            let (status, error) = send(&app, "PATCH", "/config", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error["field"], field, "{body}: {error}");
            assert!(error["accepts"].is_string(), "{error}");
        }
        assert_eq!(control.live().now(), start);
        let (status, error) = send(&app, "POST", "/streams/cut", r#"{"style": "gently"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error["accepts"], "truncate, clean or reset");
        let (status, error) = send(&app, "POST", "/streams/7/cut", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
        assert_eq!(error["field"], "id");
    }

    #[tokio::test]
    async fn with_a_token_every_control_route_needs_it() {
        let (app, _) = app(Some("s3cret"));
        for (method, uri) in [
            ("GET", "/config"),
            ("PATCH", "/config"),
            ("POST", "/config/reset"),
            ("GET", "/streams"),
            ("POST", "/streams/cut"),
            ("GET", "/events"),
        ] {
            let (status, _) = send(&app, method, uri, "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        }
        let request = http::Request::builder()
            .uri("/config")
            .header("authorization", "Bearer s3cret")
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let lower = http::Request::builder()
            .uri("/config")
            .header("authorization", "bearer s3cret")
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(lower).await.expect("infallible");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the scheme is case-insensitive"
        );
        let wrong = http::Request::builder()
            .uri("/config")
            .header("authorization", "Bearer s3cre")
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(wrong).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn an_open_stream_is_listed_and_cut_in_the_style_asked() {
        let (app, control) = app(None);
        let mut entry = control.streams.open(
            None,
            http::Method::GET,
            "/polls/streamed?sleep=3".to_owned(),
            None,
        );
        let (_, listed) = send(&app, "GET", "/streams", "").await;
        assert_eq!(listed["count"], 1);
        assert_eq!(listed["streams"][0]["path"], "/polls/streamed?sleep=3");
        let id = entry.tracked.id;
        let (status, cut) = send(
            &app,
            "POST",
            &format!("/streams/{id}/cut"),
            r#"{"style":"clean"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{cut}");
        assert_eq!(cut, json!({"cut": [id], "style": "clean"}));
        let style = std::future::poll_fn(|cx| entry.poll_cut(cx)).await;
        assert_eq!(style, CutStyle::Clean);
        let (status, again) = send(&app, "POST", &format!("/streams/{id}/cut"), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{again}");
    }
}
