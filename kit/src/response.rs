//! Reading HTTP/1.1 responses from the raw bytes a client received: the head, and the body as far as
//! it came, de-chunked, with whether its end (the last chunk, or the whole Content-Length) arrived.
//! That flag is the difference between a complete stream and a cut one. For tests: bytes that are not
//! HTTP/1.1 fail the test where they are found.

/// A response head and whatever followed it on the wire (still chunk-encoded if chunked).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Length of the head, its final CRLF CRLF included.
    pub head_len: usize,
}

impl RawResponse {
    /// Parses the head at the start of `bytes`; `None` while it is incomplete.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let end = find(bytes, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).expect("a response head in UTF-8");
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next()?;
        assert!(
            version.starts_with("HTTP/1."),
            "status line {status_line:?}"
        );
        let status = parts.next()?.parse().expect("a numeric status");
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("header line {line:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Some(Self {
            status,
            headers,
            body: bytes[end + 4..].to_vec(),
            head_len: end + 4,
        })
    }

    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    }

    /// The body's data: de-chunked when chunked, cut to Content-Length otherwise.
    pub fn data(&self) -> Chunked {
        if self.is_chunked() {
            return dechunk(&self.body);
        }
        match self.header("content-length") {
            Some(length) => {
                let length: usize = length.parse().expect("a numeric Content-Length");
                Chunked {
                    data: self.body[..length.min(self.body.len())].to_vec(),
                    complete: self.body.len() >= length,
                    chunks: 1,
                }
            }
            None => Chunked {
                data: self.body.clone(),
                complete: false,
                chunks: 1,
            },
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.data().data).expect("a UTF-8 body")
    }
}

/// A de-chunked body: the data received, and whether the terminating `0\r\n\r\n` arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    pub data: Vec<u8>,
    pub complete: bool,
    pub chunks: usize,
}

/// Decodes a chunked body as far as it goes; a chunk cut short contributes what arrived of it.
pub fn dechunk(mut wire: &[u8]) -> Chunked {
    let mut data = Vec::new();
    let mut chunks = 0;
    loop {
        let Some(line_end) = find(wire, b"\r\n") else {
            return Chunked {
                data,
                complete: false,
                chunks,
            };
        };
        let size_text = std::str::from_utf8(&wire[..line_end]).expect("a chunk-size line");
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
        wire = &wire[line_end + 2..];
        if size == 0 {
            // No trailers from these servers: the last chunk is followed by the final CRLF.
            return Chunked {
                data,
                complete: wire.starts_with(b"\r\n"),
                chunks,
            };
        }
        chunks += 1;
        if wire.len() < size + 2 {
            data.extend_from_slice(&wire[..size.min(wire.len())]);
            return Chunked {
                data,
                complete: false,
                chunks,
            };
        }
        data.extend_from_slice(&wire[..size]);
        assert_eq!(&wire[size..size + 2], b"\r\n", "chunk data ends with CRLF");
        wire = &wire[size + 2..];
    }
}

/// Whether `bytes` hold one whole response (head and Content-Length or chunked body).
pub fn is_complete_response(bytes: &[u8]) -> bool {
    RawResponse::parse(bytes).is_some_and(|response| response.data().complete)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
