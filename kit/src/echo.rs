//! An upstream that answers every request with what it received, so that a test can see exactly what
//! the proxy forwarded: which headers it stripped, added or kept, and the body.

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::servers::Running;

/// The echo upstream on a fresh loopback port. Its body is the request line, each header as
/// `name: value` on its own line, an empty line, and the request body. Its response carries
/// hop-by-hop fields of its own (`Connection: X-Upstream-Hop`, `X-Upstream-Hop`, `Keep-Alive`),
/// which must not reach the client, and `X-Upstream: echo`, which must.
pub async fn echo() -> io::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                () = stopped.cancelled() => return Ok(()),
                accepted = listener.accept() => accepted?,
            };
            tokio::spawn(async move {
                // A client that goes away mid-request is not the echo's concern.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(answer))
                    .await;
            });
        }
    });
    Ok(Running::spawned(addr, stop, task))
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let mut text = format!("{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        text += &format!("{name}: {}\n", value.to_str().unwrap_or("<binary>"));
    }
    let body = body
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    text += &format!("\n{}", String::from_utf8_lossy(&body));
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("X-Upstream-Hop"));
    headers.insert("x-upstream-hop", HeaderValue::from_static("secret"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=9"));
    headers.insert("x-upstream", HeaderValue::from_static("echo"));
    Ok(response)
}

/// [`echo`], for a test.
pub async fn start_echo() -> Running {
    echo()
        .await
        .unwrap_or_else(|err| panic!("start the echo upstream on 127.0.0.1:0: {err}"))
}

/// The headers the echo upstream reports, lower-cased names, in order.
pub fn echoed_headers(body: &str) -> Vec<(String, String)> {
    body.lines()
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("an echoed header line {line:?}"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// Every value of header `name` among `headers`.
pub fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}
