//! A compressing hop (`PROXY_COMPRESSION=gzip`), like a CDN's or a web framework's gzip that does
//! not flush: deflate emits output only when a block fills or the body ends, so small chunks
//! (heartbeats above all) stay inside the encoder while an idle timer behind the hop counts silence.
//! `Cache-Control: no-transform`, which the upstream sends on streams, tells a hop to leave the body
//! alone (RFC 9111 5.2.2.6); `PROXY_COMPRESSION_IGNORE_NO_TRANSFORM=1` makes a hop that does not listen.
//!
//! tower-http's `CompressionLayer` is not this hop: its encoder flushes whenever the body waits,
//! which is right for a server and exactly the behaviour this fault must not have.

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, VARY,
};
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

/// Whether the proxy is a compressing hop, and whether it honours `no-transform`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompressionHop {
    pub enabled: bool,
    pub ignore_no_transform: bool,
}

impl CompressionHop {
    /// Whether this response gets compressed, for a client that `accepts_gzip` (see [`accepts_gzip`]).
    pub fn applies(self, accepts_gzip: bool, response_headers: &HeaderMap) -> bool {
        self.enabled
            && accepts_gzip
            && !response_headers.contains_key(CONTENT_ENCODING)
            && (self.ignore_no_transform || !says_no_transform(response_headers))
    }
}

/// Marks `response` as gzip-encoded and compresses its body.
pub fn compress<B>(response: Response<B>) -> Response<GzipBody<B>> {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(VARY, HeaderValue::from_static("accept-encoding"));
    Response::from_parts(
        parts,
        GzipBody {
            inner: body,
            encoder: Some(GzEncoder::new(Vec::new(), flate2::Compression::default())),
        },
    )
}

/// A body as it is, for the responses the hop leaves alone.
pub fn identity<B>(response: Response<B>) -> Response<GzipBody<B>> {
    response.map(|inner| GzipBody {
        inner,
        encoder: None,
    })
}

/// Whether a request's `Accept-Encoding` takes gzip.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|param| param.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn says_no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-transform"))
}

pin_project! {
    /// The body through a gzip encoder that never flushes early; `encoder` is `None` when the hop
    /// leaves the body alone, and after the gzip trailer went out.
    pub struct GzipBody<B> {
        #[pin]
        inner: B,
        encoder: Option<GzEncoder<Vec<u8>>>,
    }
}

impl<B> Body for GzipBody<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(encoder) = this.encoder.as_mut() else {
            return this.inner.poll_frame(cx);
        };
        loop {
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    encoder.write_all(&data)?;
                    let output = std::mem::take(encoder.get_mut());
                    if !output.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(output)))));
                    }
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => {
                    let Some(encoder) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    let rest = encoder.finish()?;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.encoder {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::io::Read as _;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn no_transform_is_honoured_unless_told_otherwise() {
        let request = headers(&[("accept-encoding", "gzip, br")]);
        let stream = headers(&[("cache-control", "no-cache, no-transform")]);
        let honouring = CompressionHop {
            enabled: true,
            ignore_no_transform: false,
        };
        let ignoring = CompressionHop {
            enabled: true,
            ignore_no_transform: true,
        };
        let accepts = accepts_gzip(&request);
        assert!(accepts);
        assert!(!honouring.applies(accepts, &stream));
        assert!(ignoring.applies(accepts, &stream));
        assert!(honouring.applies(accepts, &HeaderMap::new()));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(!honouring.applies(false, &HeaderMap::new()));
        assert!(!CompressionHop::default().applies(accepts, &HeaderMap::new()));
    }

    #[tokio::test]
    async fn small_chunks_wait_in_the_encoder_and_the_whole_body_decodes() {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = ["line one\n", " ", " ", "line two\n"]
            .into_iter()
            .map(|text| Ok(Frame::data(Bytes::from_static(text.as_bytes()))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let response = compress(Response::new(body));
        assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
        let mut frames = Vec::new();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frames.push(frame.expect("a frame").into_data().expect("data"));
        }
        // The gzip header may go out with the first write; the four chunks themselves only at the end.
        assert!(frames.len() <= 2, "{} frames: {frames:?}", frames.len());
        let wire: Vec<u8> = frames.concat();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_string(&mut text)
            .expect("valid gzip");
        assert_eq!(text, "line one\n  line two\n");
    }
}
