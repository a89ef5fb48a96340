//! How a job's lines look on the wire. A line is stored once, as the poem's `[elapsed s] line`;
//! the banner before each verse after the first is derived from the line's number, so the text
//! rendering (whose byte offsets `Range` addresses) and the SSE rendering always agree.

use bytes::Bytes;

use crate::stream::{BANNER, POEM};

use super::Line;

/// The poem line a job writes as its `number`th (from 1), labelled with seconds since the job began.
pub fn line_text(number: u64, elapsed_secs: u64) -> String {
    let line = POEM[((number - 1) % POEM.len() as u64) as usize];
    format!("[{elapsed_secs:>10} s] {line}")
}

/// A verse starts again at lines 4, 7, 10…: the banner goes right before them, as in the stream.
fn banner_before(number: u64) -> bool {
    number > 1 && (number - 1).is_multiple_of(POEM.len() as u64)
}

/// Bytes line `number` takes in the text rendering: its banner, its text, and their newlines.
pub fn text_len(number: u64, text: &str) -> u64 {
    let banner = if banner_before(number) {
        BANNER.len() + 1
    } else {
        0
    };
    (banner + text.len() + 1) as u64
}

/// The line as text: exactly the bytes `/polls/streamed` would have sent for it.
pub fn text(line: &Line) -> String {
    let mut out = String::with_capacity(text_len(line.number, &line.text) as usize);
    if banner_before(line.number) {
        out.push_str(BANNER);
        out.push('\n');
    }
    out.push_str(&line.text);
    out.push('\n');
    out
}

/// The line as an SSE event whose id is its number, so that `Last-Event-ID` names the last line a
/// client has. The banner is a first `data:` line of the same event, not an event of its own: an
/// event without id, cut off before the next line, would be shown again after the resume.
pub fn sse(line: &Line) -> String {
    let banner = if banner_before(line.number) {
        format!("data: {BANNER}\n")
    } else {
        String::new()
    };
    format!("id: {}\n{banner}data: {}\n\n", line.number, line.text)
}

/// First thing on every SSE response: how long EventSource should wait before reconnecting.
pub fn sse_retry(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// The last event of a job's SSE stream: the job is over and every line was sent; a client that
/// did not see it and lost the connection reconnects and gets `204`.
pub fn sse_end(state: &str, lines: u64) -> Bytes {
    Bytes::from(format!(
        "event: end\ndata: {{\"state\":\"{state}\",\"lines\":{lines}}}\n\n"
    ))
}

pub const SSE_HEARTBEAT: &[u8] = b":\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn line(number: u64) -> Line {
        Line {
            number,
            end_offset: 0,
            text: line_text(number, 7),
        }
    }

    #[test]
    fn text_is_the_streams_bytes_with_banners_before_each_new_verse() {
        let rendered: String = (1..=5).map(|number| text(&line(number))).collect();
        assert_eq!(
            rendered,
            "[         7 s] Little brown lady\n\
             [         7 s] Jumped into the blue water\n\
             [         7 s] And smiled\n\
             =========== Here we go again ===========\n\
             [         7 s] Little brown lady\n\
             [         7 s] Jumped into the blue water\n"
        );
        for number in 1..=7 {
            let line = line(number);
            assert_eq!(text_len(number, &line.text), text(&line).len() as u64);
        }
    }

    #[test]
    fn sse_carries_the_banner_inside_the_next_lines_event() {
        assert_eq!(
            sse(&line(4)),
            "id: 4\ndata: =========== Here we go again ===========\n\
             data: [         7 s] Little brown lady\n\n"
        );
        assert_eq!(sse(&line(3)), "id: 3\ndata: [         7 s] And smiled\n\n");
    }
}
