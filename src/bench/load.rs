//! The four measurements: small-response throughput (wrk), many long heartbeated streams held open,
//! idle-cut precision, and how fast a client's departure reaches the origin.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use keepalive_kit::program;
use keepalive_kit::servers::FIRST_LINE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::BenchError;

/// Requests served, requests a second and latency percentiles from one wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throughput {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `wrk --latency` against `url`: the same threads, connections and duration for every target.
pub fn wrk(url: &str, duration: Duration, connections: usize) -> Result<Throughput, BenchError> {
    let path = program::installed("wrk")?;
    let output = Command::new(&path)
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
            url,
        ])
        .output()
        .map_err(|source| BenchError::WrkStart { path, source })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(BenchError::WrkFailed {
            url: url.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    parse_wrk(&text).ok_or_else(|| BenchError::WrkOutput(text.into_owned()))
}

fn parse_wrk(text: &str) -> Option<Throughput> {
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))?
        .0
        .parse()
        .ok()?;
    let rps = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let percentile = |label: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|value| wrk_duration_ms(value.trim()))
    };
    Some(Throughput {
        requests,
        rps,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// wrk's `812.00us`, `1.23ms`, `2.01s`, in milliseconds.
fn wrk_duration_ms(value: &str) -> Option<f64> {
    let (number, factor) = if let Some(us) = value.strip_suffix("us") {
        (us, 0.001)
    } else if let Some(ms) = value.strip_suffix("ms") {
        (ms, 1.0)
    } else if let Some(s) = value.strip_suffix('s') {
        (s, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// The value at `p` (0..=1) of `values`, which it sorts.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index]
}

async fn open_stream(addr: SocketAddr, query: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!("GET /polls/streamed?{query} HTTP/1.1\r\nHost: bench\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// Reads until `needle` arrived; false if the connection ended first.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> bool {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(needle.len()).any(|w| w == needle) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// What holding many heartbeated streams open showed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    pub cut: usize,
    pub lag_p99_ms: f64,
    pub rss_per_stream_kib: f64,
    pub rss_kib: u64,
}

/// Opens `count` streams with a heartbeat every second through `addr`, holds them for `hold`, and
/// reads `rss` (the proxy's resident memory) before and with them open.
pub async fn hold_streams(
    addr: SocketAddr,
    count: usize,
    hold: Duration,
    rss: impl Fn() -> u64,
) -> Result<Held, BenchError> {
    let before = rss();
    let streams = Heartbeated::open(addr, count).await?;
    tokio::time::sleep(hold).await;
    let during = rss();
    let closed = streams.close().await?;
    Ok(Held {
        cut: closed.cut,
        lag_p99_ms: closed.lag_p99_ms,
        rss_per_stream_kib: during.saturating_sub(before) as f64 / count as f64,
        rss_kib: during,
    })
}

/// Streams with a heartbeat every second, each read by a task of its own until [`Heartbeated::close`].
pub struct Heartbeated {
    done: tokio::sync::watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<Heard>>,
    /// When the last one was open: heartbeat lag counts from here.
    all_open: Instant,
}

/// What one stream's reader heard: each chunk's arrival and lag (ms) behind the 1 s heartbeat, and
/// whether the stream ended by itself (cut) before it was closed.
struct Heard {
    lags: Vec<(Instant, f64)>,
    cut: bool,
}

/// How the streams went, once closed.
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    /// Streams that ended before they were closed: something on the way cut them.
    pub cut: usize,
    pub lag_p99_ms: f64,
}

impl Heartbeated {
    /// Opens `count` streams through `addr`.
    pub async fn open(addr: SocketAddr, count: usize) -> Result<Self, BenchError> {
        let (done, done_rx) = tokio::sync::watch::channel(false);
        let mut readers = Vec::with_capacity(count);
        // In batches, so that the listeners' accept queues are never the bottleneck being measured.
        for batch in 0..count.div_ceil(500) {
            let mut opening = Vec::new();
            for _ in (batch * 500)..count.min((batch + 1) * 500) {
                opening.push(tokio::spawn(open_stream(addr, "sleep=1h&heartbeat=1s")));
            }
            for opened in opening {
                let stream = opened
                    .await?
                    .map_err(|source| BenchError::Open { addr, source })?;
                readers.push(tokio::spawn(read_heartbeats(stream, done_rx.clone())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            done,
            readers,
            // Lag is measured once every stream is open: while thousands of connections are still
            // being made, heartbeats wait behind the handshakes, which says more about the ramp
            // than the proxy.
            all_open: Instant::now(),
        })
    }

    /// Closes every stream (the client side goes away) and says how they went.
    pub async fn close(self) -> Result<Closed, BenchError> {
        let _ = self.done.send(true);
        let mut lags = Vec::new();
        let mut cut = 0;
        for reader in self.readers {
            let heard = reader.await?;
            // The first gap is from the first line to the first heartbeat: not a heartbeat's lag.
            lags.extend(
                heard
                    .lags
                    .into_iter()
                    .skip(1)
                    .filter(|(arrived, _)| *arrived > self.all_open)
                    .map(|(_, lag)| lag),
            );
            cut += usize::from(heard.cut);
        }
        Ok(Closed {
            cut,
            lag_p99_ms: percentile(&mut lags, 0.99),
        })
    }
}

/// Reads one stream until `done`; the stream is dropped (closed) on return.
async fn read_heartbeats(
    mut stream: TcpStream,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Heard {
    let mut lags = Vec::new();
    let mut last: Option<Instant> = None;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Heard { lags, cut: true },
                Ok(_) => {
                    let now = Instant::now();
                    if let Some(last) = last {
                        let gap = now.duration_since(last).as_secs_f64() * 1000.0;
                        lags.push((now, (gap - 1000.0).max(0.0)));
                    }
                    last = Some(now);
                }
            },
            _ = done.changed() => return Heard { lags, cut: false },
        }
    }
}

/// Error of the idle cut, in ms, over `count` silent streams cut at `limit` through `addr`.
pub async fn idle_cut_errors(
    addr: SocketAddr,
    count: usize,
    limit: Duration,
) -> Result<Vec<f64>, BenchError> {
    let mut tasks = Vec::new();
    for _ in 0..count {
        tasks.push(tokio::spawn(async move {
            let mut stream = open_stream(addr, "sleep=1h")
                .await
                .map_err(|source| BenchError::Open { addr, source })?;
            if !read_until(&mut stream, FIRST_LINE.as_bytes()).await {
                return Err(BenchError::NoFirstLine { addr });
            }
            let first = Instant::now();
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            Ok((first.elapsed().as_secs_f64() - limit.as_secs_f64()) * 1000.0)
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.push(task.await??);
    }
    Ok(errors)
}

/// Milliseconds from a client's close to the origin logging its stream's end, by the origin's
/// clock (its JSON log), over `samples` streams through `addr`.
pub async fn disconnect_propagation(
    addr: SocketAddr,
    origin_log: &Path,
    samples: usize,
) -> Result<Vec<f64>, BenchError> {
    let mut delays = Vec::new();
    let mut log = LogTail::new(origin_log);
    for _ in 0..samples {
        // What an earlier measurement left in the log is not this stream's end.
        log.client_gone();
        let mut stream = open_stream(addr, "sleep=1h")
            .await
            .map_err(|source| BenchError::Open { addr, source })?;
        if !read_until(&mut stream, FIRST_LINE.as_bytes()).await {
            return Err(BenchError::NoFirstLine { addr });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let closed = SystemTime::now();
        drop(stream);
        let within = Duration::from_secs(5);
        let deadline = Instant::now() + within;
        let ended = loop {
            if let Some(ended) = log.client_gone().pop() {
                break ended;
            }
            if Instant::now() > deadline {
                return Err(BenchError::NeverGone { addr, within });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let delay = ended
            .duration_since(closed)
            .map_or(0.0, |delay| delay.as_secs_f64() * 1000.0);
        delays.push(delay);
    }
    Ok(delays)
}

/// The origin's JSON log, read from where the last read stopped. Reading it whole every few
/// milliseconds, once the streams measured before have filled it with thousands of lines, took
/// enough of the CPUs being measured to delay the very departures it timed.
struct LogTail {
    file: Option<std::fs::File>,
    /// A line whose end has not been written yet (perhaps ending inside a character).
    partial: Vec<u8>,
}

impl LogTail {
    /// Reads from the log's end as it is now.
    fn new(path: &Path) -> Self {
        use std::io::{Seek, SeekFrom};
        let file = std::fs::File::open(path)
            .and_then(|mut file| file.seek(SeekFrom::End(0)).map(|_| file))
            .ok();
        Self {
            file,
            partial: Vec::new(),
        }
    }

    /// When the origin logged each "client gone" since the last call, by its log's timestamps.
    fn client_gone(&mut self) -> Vec<SystemTime> {
        use std::io::Read;
        if let Some(file) = &mut self.file {
            let _ = file.read_to_end(&mut self.partial);
        }
        let complete = self
            .partial
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |end| end + 1);
        let lines: Vec<u8> = self.partial.drain(..complete).collect();
        String::from_utf8_lossy(&lines)
            .lines()
            .filter(|line| line.contains("client gone"))
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|entry| humantime::parse_rfc3339(entry.get("timestamp")?.as_str()?).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 3s test @ http://127.0.0.1:8080/polls/\n  2 threads and 64 connections\n\
            \x20 Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    1.50ms\n     99%    3.20ms\n\
            \x20 100000 requests in 3.00s, 15.00MB read\nRequests/sec:  33333.33\nTransfer/sec:      5.00MB\n";
        let throughput = parse_wrk(text).expect("parsed");
        assert_eq!(throughput.requests, 100_000);
        assert!((throughput.rps - 33333.33).abs() < 0.01);
        assert!((throughput.p50_ms - 0.812).abs() < 1e-9);
        assert!((throughput.p99_ms - 3.2).abs() < 1e-9);
        let two_seconds = wrk_duration_ms("2.01s").expect("seconds");
        assert!((two_seconds - 2010.0).abs() < 1e-6, "{two_seconds}");
        assert_eq!(wrk_duration_ms("12"), None);
    }

    #[test]
    fn percentiles_of_a_sample() {
        let mut values = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut values, 0.5), 3.0);
        assert_eq!(percentile(&mut values, 1.0), 5.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
