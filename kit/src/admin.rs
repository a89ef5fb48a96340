//! The proxy's control API from a test's side: one request and its JSON answer ([`call`]), and the
//! event feed read event by event ([`Feed`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

async fn send(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> http::Response<Incoming> {
    let tcp = TcpStream::connect(admin)
        .await
        .unwrap_or_else(|err| panic!("connect to the admin listener {admin}: {err}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake with the admin listener");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
    sender
        .send_request(request.body(Full::new(body)).expect("a valid request"))
        .await
        .unwrap_or_else(|err| panic!("{path} on the admin listener: {err}"))
}

/// `method path` with `body` (JSON) on the admin listener: the status and the JSON answer (`Null`
/// when the answer is not JSON).
pub async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let response = send(admin, method, path, body, token).await;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the admin listener's whole answer")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The open streams the proxy lists.
pub async fn streams(admin: SocketAddr) -> Vec<Value> {
    let (status, listing) = call(admin, Method::GET, "/streams", None, None).await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    listing["streams"].as_array().cloned().unwrap_or_default()
}

/// `GET /events`, read one event at a time.
pub struct Feed {
    body: Incoming,
    pending: String,
}

impl Feed {
    pub async fn follow(admin: SocketAddr) -> Self {
        let response = send(admin, Method::GET, "/events", None, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        Self {
            body: response.into_body(),
            pending: String::new(),
        }
    }

    /// The next event (its name and data) within `within`; `None` when none came.
    pub async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                let kind = event
                    .lines()
                    .find_map(|line| line.strip_prefix("event:"))
                    .map(str::trim);
                let data = event
                    .lines()
                    .find_map(|line| line.strip_prefix("data:"))
                    .map(str::trim);
                if let (Some(kind), Some(data)) = (kind, data) {
                    let data = serde_json::from_str(data).expect("event data is JSON");
                    return Some((kind.to_owned(), data));
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Some(data) = frame.data_ref() {
                self.pending.push_str(&String::from_utf8_lossy(data));
            }
        }
    }

    /// The events of stream `id` up to and including its `ended`, in order, within `within`.
    pub async fn lifecycle(&mut self, id: u64, within: Duration) -> Vec<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(event) = self
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if event.1["stream"] != id {
                continue;
            }
            let ended = event.0 == "ended";
            seen.push(event);
            if ended {
                break;
            }
        }
        seen
    }
}
