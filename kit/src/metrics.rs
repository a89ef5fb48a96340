//! Reading the Prometheus text both servers expose (the origin's `/metrics`, the proxy's admin
//! `/metrics`). One reader for everyone: [`sample`] never panics, whatever the text, because the
//! lab's experiments read the origin with it; the rest fetch over the raw client and are for tests.

use std::net::SocketAddr;
use std::time::Duration;

use crate::client::{get, raw_request};
use crate::timing::wait_until;

/// The value of `query` in `exposition`: the sum of every sample of the metric named by `query`
/// whose labels include all the labels `query` gives (`name` or `name{label="value",...}`); `None`
/// when no sample matches. Lines that are not samples are skipped.
pub fn sample(exposition: &str, query: &str) -> Option<f64> {
    let (name, wanted) = series(query)?;
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (key, rest) = match line.find('{') {
                Some(_) => line.split_at(line.rfind('}')? + 1),
                None => line.split_at(line.find(' ')?),
            };
            let (line_name, labels) = series(key)?;
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            (line_name == name && wanted.iter().all(|label| labels.contains(label)))
                .then_some(value)
        })
        .fold(None, |sum, value| Some(sum.unwrap_or(0.0) + value))
}

/// A series' name and labels, from `name` or `name{label="value",...}`; `None` when malformed.
fn series(text: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let Some((name, labels)) = text.split_once('{') else {
        return Some((text.trim(), Vec::new()));
    };
    let labels = labels
        .strip_suffix('}')?
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.trim(), value.trim().trim_matches('"')))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((name.trim(), labels))
}

/// GET /metrics from `addr` (the origin, or the proxy's admin listener) as text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let transcript = raw_request(
        addr,
        &get("/metrics", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "GET /metrics: {}", transcript.text());
    response.text()
}

/// [`sample`] of `query` at `addr` now; 0 when not exposed (a counter no one has counted yet).
pub async fn metric(addr: SocketAddr, query: &str) -> f64 {
    sample(&metrics_text(addr).await, query).unwrap_or(0.0)
}

/// Waits until `query` at `addr` equals `expected`; panics with the last value otherwise.
pub async fn wait_for_metric(addr: SocketAddr, query: &str, expected: f64, within: Duration) {
    if wait_until(within, || async { metric(addr, query).await == expected })
        .await
        .is_none()
    {
        let last = metric(addr, query).await;
        panic!("{query} at {addr} is {last}, not {expected}, after {within:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::sample;

    const TEXT: &str = "# HELP origin_streams_active Streams now.\n\
        # TYPE origin_streams_active gauge\n\
        origin_streams_active 2\n\
        origin_streams_ended_total{reason=\"client_gone\"} 3\n\
        origin_streams_ended_total{reason=\"completed\"} 4\n\
        proxy_requests_total{status=\"200\",method=\"GET\"} 5\n\
        # EOF\n";

    #[test]
    fn a_series_is_read_by_name_and_by_labels() {
        assert_eq!(sample(TEXT, "origin_streams_active"), Some(2.0));
        assert_eq!(
            sample(TEXT, "origin_streams_ended_total{reason=\"client_gone\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(TEXT, "proxy_requests_total{status=\"200\"}"),
            Some(5.0)
        );
    }

    #[test]
    fn samples_of_one_name_add_up_and_a_missing_one_is_none() {
        assert_eq!(sample(TEXT, "origin_streams_ended_total"), Some(7.0));
        assert_eq!(sample(TEXT, "origin_streams_started_total"), None);
        assert_eq!(
            sample(TEXT, "origin_streams_ended_total{reason=\"x\"}"),
            None
        );
    }

    #[test]
    fn malformed_lines_are_skipped_never_a_panic() {
        let text =
            "broken{reason 1\nnovalue\norigin_streams_active{a=\"b\"} x\norigin_streams_active 1\n";
        assert_eq!(sample(text, "origin_streams_active"), Some(1.0));
        assert_eq!(sample(text, "broken{"), None);
    }
}
