//! `/metrics` in the format the scraper asks for. prometheus-client writes only OpenMetrics text;
//! tools that speak the classic Prometheus text format (`promtool check metrics`, older agents,
//! `curl -H 'Accept: text/plain'`) read it back with errors, because the two name counters
//! differently. No crate converts one to the other, and the difference is small, so it is done here:
//! a counter family is named with its `_total` in `HELP` and `TYPE`, `UNIT` lines and `# EOF` go,
//! and `_created` samples (which classic text does not know) are dropped.

use std::collections::HashSet;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for the classic text format: it names `text/plain` and not
/// OpenMetrics. Prometheus itself lists both and gets OpenMetrics; no header, or `*/*`, too.
pub fn wants_classic(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        let accept = accept.to_ascii_lowercase();
        accept.contains("text/plain") && !accept.contains("application/openmetrics-text")
    })
}

/// The body and its content type for a scraper that sent `accept`.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (&'static str, String) {
    if wants_classic(accept) {
        (CLASSIC, classic(&openmetrics))
    } else {
        (OPENMETRICS, openmetrics)
    }
}

/// OpenMetrics text as classic Prometheus text.
pub fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                let kind = &line[..7];
                text.push_str(&format!("{kind}{name}_total {tail}\n"));
                continue;
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or(line);
            if name
                .strip_suffix("_created")
                .is_some_and(|family| counters.contains(family))
            {
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = "# HELP proxy_requests Responses sent.\n# TYPE proxy_requests counter\n\
        proxy_requests_total{status=\"200\"} 3\nproxy_requests_created{status=\"200\"} 1.7e9\n\
        # HELP proxy_streams_active Open.\n# TYPE proxy_streams_active gauge\nproxy_streams_active 1\n\
        # HELP proxy_first_byte_seconds Wait.\n# TYPE proxy_first_byte_seconds histogram\n# UNIT proxy_first_byte_seconds seconds\n\
        proxy_first_byte_seconds_sum 0.5\nproxy_first_byte_seconds_count 1\n\
        proxy_first_byte_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";

    #[test]
    fn counters_are_named_with_their_total_and_openmetrics_only_lines_go() {
        let text = classic(OPEN);
        assert!(
            text.contains("# HELP proxy_requests_total Responses sent.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE proxy_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("proxy_requests_total{status=\"200\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE proxy_streams_active gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("proxy_first_byte_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        for gone in ["# EOF", "# UNIT", "_created"] {
            assert!(!text.contains(gone), "{gone} left in:\n{text}");
        }
    }

    #[test]
    fn only_a_scraper_that_asks_for_text_and_not_openmetrics_gets_it() {
        assert!(wants_classic(Some("text/plain")));
        assert!(wants_classic(Some(
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_classic(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_classic(Some("*/*")));
        assert!(!wants_classic(None));
    }
}
