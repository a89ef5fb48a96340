//! The proxy's settings: every one a flag and an env var (`--help` lists both). Timers start from
//! `PROXY_PRESET` (nginx's defaults unless told otherwise); an explicitly set timer wins over the
//! preset, so `PROXY_PRESET=heroku PROXY_IDLE_TIMEOUT=5s` is Heroku with a shorter idle window.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};
use keepalive_common::duration::{parse_duration, parse_timer, DurationError};
use keepalive_common::logging::LogFormat;
use keepalive_common::tls::{CertFile, KeyFile};

use crate::control::api::Token;
use crate::cut_style::CutStyle;
use crate::deny::DenyPaths;
use crate::faults::compression::CompressionHop;
use crate::faults::policy::FaultHeaders;
use crate::faults::value::{parse_buffering, parse_probability, parse_size};
use crate::faults::FaultSettings;
use crate::forward::Upstream;
use crate::preset::{Preset, TimerSet};
use crate::replicas::Balance;

const DEFAULT_ADDR: &str = "0.0.0.0:8080";
const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_DENY_PATHS: &str = "/metrics";

/// `PROXY_MAX_CONNECTIONS`: how many client connections are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxConnections {
    /// As many as the descriptor limit leaves room for (`descriptors.rs`).
    #[default]
    Auto,
    At(NonZeroUsize),
}

/// Why a `PROXY_MAX_CONNECTIONS` value was refused; its `Display` names the value and the form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a number of connections like 10000 (at least 1), or auto to fit the descriptor limit")]
pub struct MaxConnectionsError(String);

impl MaxConnections {
    pub fn parse(value: &str) -> Result<Self, MaxConnectionsError> {
        let trimmed = value.trim();
        if trimmed.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        trimmed
            .parse()
            .map(Self::At)
            .map_err(|_| MaxConnectionsError(value.to_owned()))
    }
}

/// Whether the proxy is also a compressing hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    #[default]
    Off,
    Gzip,
}

/// A timer as configured: `preset` (the default) leaves it to `PROXY_PRESET`; anything else is a
/// duration, or `0`/`off`. Spelling the default out lets a compose file pass every timer through
/// from the host (`${PROXY_IDLE_TIMEOUT:-preset}`) without overriding the preset it also passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimerSetting {
    #[default]
    Preset,
    Set(Option<Duration>),
}

impl TimerSetting {
    pub fn parse(value: &str) -> Result<Self, DurationError> {
        if value.trim().eq_ignore_ascii_case("preset") {
            return Ok(Self::Preset);
        }
        parse_timer(value).map(Self::Set)
    }

    /// The timer in force: this setting, or the preset's value.
    pub fn or(self, preset: Option<Duration>) -> Option<Duration> {
        match self {
            Self::Preset => preset,
            Self::Set(setting) => setting,
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "keepalive-proxy",
    version,
    about = "A reverse proxy that enforces load-balancer timers on streaming HTTP responses",
    after_help = "Logging: RUST_LOG filters (e.g. RUST_LOG=debug or RUST_LOG=keepalive_proxy=debug); LOG_FORMAT=json gives one JSON object a line.",
    long_about = "A reverse proxy that enforces load-balancer timers on streaming HTTP responses.\n\n\
        Timers take a duration (250ms, 5s, 1m, or bare seconds like 1.5); 0 or off disables one; \
        preset (the default) takes PROXY_PRESET's value. Any timer set explicitly wins over the preset. A timer that \
        fires before the response headers answers 504; after them it cuts the stream the way nginx \
        does: a chunked body without its last chunk (curl exits 18), an HTTP/2 stream reset."
)]
pub struct ProxyConfig {
    /// Address to accept clients on: HTTP/1.1 and h2c, or HTTPS (HTTP/1.1 and HTTP/2) with the TLS
    /// settings below
    #[arg(long, env = "PROXY_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// The origin replicas requests go to: http://HOST:PORT, or https://HOST:PORT to speak TLS to
    /// them (see PROXY_UPSTREAM_CA); several separated by commas. An http:// name stands for every
    /// address it resolves to, looked up again at each health check (one that never resolved stands
    /// for none until it does). The proxy forwards nowhere else
    #[arg(long, env = "PROXY_UPSTREAM", default_value = DEFAULT_UPSTREAM)]
    pub upstream: Upstream,

    /// What the proxy speaks to the upstream: http1 (HTTP/1.1, one pooled connection per request in
    /// flight, as nginx does) or h2 (HTTP/2, all streams to a replica on one connection per worker,
    /// as Envoy and cloud balancers can: one descriptor per client stream instead of two; h2c for
    /// http://, ALPN h2 for https://). A client that leaves is told to the upstream by RST_STREAM.
    /// With h2, streams beyond the upstream's concurrent-stream limit wait for a place, and the
    /// upstream gets the replica's address as :authority and the client's Host as X-Forwarded-Host
    #[arg(
        long,
        env = "PROXY_UPSTREAM_PROTOCOL",
        value_enum,
        default_value = "http1"
    )]
    pub upstream_protocol: UpstreamProtocol,

    /// Threads serving clients, each its own event loop with its own upstream connections (as
    /// nginx's worker_processes); connections are spread over them as they are accepted, each to
    /// the thread holding fewest. auto: one per CPU core
    #[arg(long, env = "PROXY_WORKERS", default_value = "auto", value_parser = Workers::parse)]
    pub workers: Workers,

    /// Address of the admin listener: /metrics and /healthz, and the control API (/config,
    /// /streams, /events). Beyond loopback it needs PROXY_ADMIN_TOKEN, or the proxy refuses to start
    #[arg(long, env = "PROXY_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Bearer token the control API requires (Authorization: Bearer TOKEN; keepalive-lab ctl
    /// --token): with it, anyone who reaches the admin listener can change the timers and cut
    /// streams. /metrics and /healthz never need it. Empty: no token, and the admin listener must
    /// stay on loopback
    #[arg(long, env = "PROXY_ADMIN_TOKEN", default_value = "", hide_default_value = true, hide_env_values = true, value_parser = Token::parse)]
    pub admin_token: std::option::Option<Token>,

    /// Paths answered 404 by the proxy, never forwarded: the upstream's operator routes, which its
    /// operator reads on the upstream's own address. Comma-separated; each denies everything under it;
    /// off forwards every path
    #[arg(long, env = "PROXY_DENY_PATHS", default_value = DEFAULT_DENY_PATHS)]
    pub deny_paths: DenyPaths,

    /// Real load balancer whose timers to start from
    #[arg(long, env = "PROXY_PRESET", value_enum, default_value = "nginx")]
    pub preset: Preset,

    /// TCP connect to the upstream, and its TLS handshake for an https:// upstream; expiry answers
    /// 504 (a refused connect answers 502)
    #[arg(long, env = "PROXY_CONNECT_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    pub connect_timeout: TimerSetting,

    /// Request forwarded -> response headers received; expiry answers 504
    #[arg(long, env = "PROXY_FIRST_BYTE_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    pub first_byte_timeout: TimerSetting,

    /// Longest silence from the upstream, before headers (504) and between body chunks (cut)
    #[arg(long, env = "PROXY_IDLE_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    pub idle_timeout: TimerSetting,

    /// Total lifetime of one exchange, heartbeats or not: 504 before headers, cut after
    #[arg(long, env = "PROXY_MAX_DURATION", default_value = "preset", value_parser = TimerSetting::parse)]
    pub max_duration: TimerSetting,

    /// Time a client has to send its request head, from accept or its first byte (slowloris). With
    /// the keep-alive timer off, also the longest idle wait between requests
    #[arg(long, env = "PROXY_HEADER_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    pub header_timeout: TimerSetting,

    /// Idle client connection between requests; expiry closes it. With the header timer off, also
    /// the longest wait for a request head, from accept or the end of the previous request
    #[arg(long, env = "PROXY_KEEPALIVE_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    pub keepalive_timeout: TimerSetting,

    /// Longest a write to the client may stall (a client that stopped reading); expiry closes the
    /// client's connection and the upstream's stream with it (nginx's send_timeout)
    #[arg(long, env = "PROXY_SEND_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    pub send_timeout: TimerSetting,

    /// Most client connections served at once; beyond it a new connection is answered 503 and
    /// closed. auto: what the descriptor limit (RLIMIT_NOFILE, raised to its hard limit at start)
    /// leaves after 64 in reserve, two for each connection (its own and its upstream's; one with PROXY_UPSTREAM_PROTOCOL=h2)
    #[arg(long, env = "PROXY_MAX_CONNECTIONS", default_value = "auto", value_parser = MaxConnections::parse)]
    pub max_connections: MaxConnections,

    /// How a cut the proxy makes mid-stream (timers, faults) ends for the client: truncate (close
    /// without the last chunk, like nginx; curl exits 18), clean (send the last chunk: the cut looks
    /// like a normal end, curl exits 0) or reset (TCP RST; curl exits 56). HTTP/2: RST_STREAM, or
    /// END_STREAM for clean
    #[arg(long, env = "PROXY_CUT_STYLE", value_enum, default_value = "truncate")]
    pub cut_style: CutStyle,

    /// How the next request's replica is chosen when PROXY_UPSTREAM names several: least-streams
    /// (of two ready replicas picked at random, the one with fewer open response bodies: a replica
    /// holding many streams gets fewer new ones) or round-robin (each in turn, nginx's and HAProxy's
    /// default)
    #[arg(
        long,
        env = "PROXY_BALANCE",
        value_enum,
        default_value = "least-streams",
        help_heading = "Replicas"
    )]
    pub balance: Balance,

    /// Ask each replica GET /healthz this often; one that does not answer 200 (a draining origin's
    /// 503) gets no new requests until it does, its open streams left alone. Names in PROXY_UPSTREAM
    /// are resolved again as often (every 5s when off). 0 or off: no active checks
    #[arg(long, env = "PROXY_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_timer, help_heading = "Replicas")]
    pub health_interval: std::option::Option<Duration>,

    /// Serve clients over TLS (HTTPS; HTTP/2 or HTTP/1.1 as the client offers by ALPN) with the
    /// certificate chain in this PEM file, the server's certificate first. Needs PROXY_TLS_KEY.
    /// Unset: plain HTTP and h2c
    #[arg(long, env = "PROXY_TLS_CERT", value_parser = CertFile::parse, help_heading = "TLS")]
    pub tls_cert: Option<CertFile>,

    /// The private key of PROXY_TLS_CERT's certificate, a PEM file (PKCS#8, PKCS#1 or SEC1). A key
    /// that is not the certificate's stops the proxy at start
    #[arg(long, env = "PROXY_TLS_KEY", value_parser = KeyFile::parse, help_heading = "TLS")]
    pub tls_key: Option<KeyFile>,

    /// Serve TLS with a self-signed certificate made at each start for localhost, 127.0.0.1 and ::1,
    /// and write that certificate (never its key) to this file, its directory created, for clients
    /// to trust: curl --cacert FILE. Instead of PROXY_TLS_CERT; empty or off: no
    #[arg(long, env = "PROXY_TLS_SELF_SIGNED", value_name = "FILE", default_value = "off", value_parser = parse_self_signed, help_heading = "TLS")]
    pub tls_self_signed: std::option::Option<PathBuf>,

    /// For an https:// PROXY_UPSTREAM: trust exactly the CAs in this PEM file for the upstream's
    /// certificate, instead of the public roots built in. The certificate must be valid for the
    /// upstream's host name, which is also sent as SNI
    #[arg(long, env = "PROXY_UPSTREAM_CA", value_name = "FILE", value_parser = CertFile::parse, help_heading = "TLS")]
    pub upstream_ca: Option<CertFile>,

    /// Fault: hold every body chunk this long before forwarding it (holding at most 1MiB: beyond,
    /// the upstream waits, as behind a slow link)
    #[arg(long, env = "PROXY_FAULT_LATENCY", default_value = "off", value_parser = parse_timer, help_heading = "Faults")]
    pub fault_latency: std::option::Option<Duration>,

    /// Fault: forward at most this many body bytes a second (70, 1KiB, 1MB)
    #[arg(long, env = "PROXY_FAULT_BANDWIDTH", default_value = "off", value_parser = parse_size, help_heading = "Faults")]
    pub fault_bandwidth: std::option::Option<u64>,

    /// Fault: forward this many body bytes, then cut the stream
    #[arg(long, env = "PROXY_FAULT_LIMIT_BYTES", default_value = "off", value_parser = parse_size, help_heading = "Faults")]
    pub fault_limit_bytes: std::option::Option<u64>,

    /// Fault: this long after the response began, reset the client connection (TCP RST)
    #[arg(long, env = "PROXY_FAULT_RESET_AFTER", default_value = "off", value_parser = parse_timer, help_heading = "Faults")]
    pub fault_reset_after: std::option::Option<Duration>,

    /// Fault: this long after the response began, forward nothing more and keep both connections
    /// open, until the idle or total timer ends the stream (for good with neither)
    #[arg(long, env = "PROXY_FAULT_BLACKHOLE_AFTER", default_value = "off", value_parser = parse_timer, help_heading = "Faults")]
    pub fault_blackhole_after: std::option::Option<Duration>,

    /// Fault: share of requests (0 to 1) the faults above apply to
    #[arg(long, env = "PROXY_FAULT_PROBABILITY", default_value = "1", value_parser = parse_probability, help_heading = "Faults")]
    pub fault_probability: f64,

    /// Buffering hop: hold body bytes until this many are buffered (at most 1MiB), like nginx's
    /// proxy_buffering; responses saying X-Accel-Buffering: no pass unbuffered
    #[arg(long, env = "PROXY_BUFFERING", default_value = "off", value_parser = parse_buffering, help_heading = "Faults")]
    pub buffering: std::option::Option<u64>,

    /// Buffer even responses that say X-Accel-Buffering: no
    #[arg(long, env = "PROXY_BUFFERING_IGNORE_HEADER", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set, help_heading = "Faults")]
    pub buffering_ignore_header: bool,

    /// Compressing hop: gzip responses for clients that accept it (off or gzip); bodies marked
    /// Cache-Control: no-transform pass as they are
    #[arg(
        long,
        env = "PROXY_COMPRESSION",
        value_enum,
        default_value = "off",
        help_heading = "Faults"
    )]
    pub compression: Compression,

    /// Compress even bodies marked Cache-Control: no-transform
    #[arg(long, env = "PROXY_COMPRESSION_IGNORE_NO_TRANSFORM", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set, help_heading = "Faults")]
    pub compression_ignore_no_transform: bool,

    /// Which x-keepalive-* request headers (fault-*, buffering*, cut-style) may set a request's
    /// own faults; any client can send them. off: none; demo: all but the blackhole, which holds
    /// both connections until a timer ends it; all (or 1): the blackhole too. Under every policy a
    /// request may ask at most 1m of latency, 1h before a reset or blackhole, 1MiB of buffering, and
    /// at least 100 bytes a second of bandwidth (beyond: a 400 naming the limit); the PROXY_FAULT_*
    /// settings above take any value, for every request
    #[arg(long, env = "PROXY_FAULT_HEADERS", default_value = "demo", value_parser = FaultHeaders::parse, help_heading = "Faults")]
    pub fault_headers: FaultHeaders,

    /// On SIGTERM/Ctrl-C, how long open streams may go on before they are cut
    #[arg(long, env = "PROXY_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Log format
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Instead of serving, ask the admin listener at PROXY_ADMIN_ADDR for /healthz: exit 0 when it
    /// answers 200, 1 otherwise (a container HEALTHCHECK that needs no curl)
    #[arg(long)]
    pub healthcheck: bool,
}

/// `PROXY_TLS_SELF_SIGNED`: a file, or off. Empty is off too, so that a compose file can pass the
/// variable through unset (`${PROXY_TLS_SELF_SIGNED:-}`).
fn parse_self_signed(value: &str) -> Result<Option<PathBuf>, Infallible> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(trimmed)))
}

/// `PROXY_UPSTREAM_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
        }
    }
}

/// `PROXY_WORKERS`: a number of threads, or one per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    #[default]
    Auto,
    Threads(NonZeroUsize),
}

/// The most worker threads: beyond, threads only take turns on the same cores.
const MAX_WORKERS: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a number of worker threads: expected auto or a whole number from 1 to 1024")]
pub struct WorkersError(String);

impl Workers {
    pub fn parse(value: &str) -> Result<Self, WorkersError> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        match value.parse::<NonZeroUsize>() {
            Ok(threads) if threads.get() <= MAX_WORKERS => Ok(Self::Threads(threads)),
            _ => Err(WorkersError(value.to_owned())),
        }
    }

    /// How many threads: `auto` is the cores this process may use.
    pub fn threads(self) -> usize {
        match self {
            Self::Auto => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            Self::Threads(threads) => threads.get(),
        }
    }
}

impl ProxyConfig {
    /// The timers in force: each explicit setting, else the preset's value.
    pub fn timers(&self) -> TimerSet {
        let preset = self.preset.timers();
        TimerSet {
            connect: self.connect_timeout.or(preset.connect),
            first_byte: self.first_byte_timeout.or(preset.first_byte),
            idle: self.idle_timeout.or(preset.idle),
            max_duration: self.max_duration.or(preset.max_duration),
            header: self.header_timeout.or(preset.header),
            keepalive: self.keepalive_timeout.or(preset.keepalive),
            send: self.send_timeout.or(preset.send),
        }
    }

    /// The faults every response gets (requests may change theirs by header).
    pub fn faults(&self) -> FaultSettings {
        FaultSettings {
            latency: self.fault_latency,
            bandwidth: self.fault_bandwidth,
            limit_bytes: self.fault_limit_bytes,
            reset_after: self.fault_reset_after,
            blackhole_after: self.fault_blackhole_after,
            probability: self.fault_probability,
            buffering: self.buffering,
            buffering_ignore_header: self.buffering_ignore_header,
            compression: CompressionHop {
                enabled: self.compression == Compression::Gzip,
                ignore_no_transform: self.compression_ignore_no_transform,
            },
        }
    }

    /// Sets every fault, as the tests do; [`ProxyConfig::faults`] reads them back.
    pub fn with_faults(mut self, faults: FaultSettings) -> Self {
        self.fault_latency = faults.latency;
        self.fault_bandwidth = faults.bandwidth;
        self.fault_limit_bytes = faults.limit_bytes;
        self.fault_reset_after = faults.reset_after;
        self.fault_blackhole_after = faults.blackhole_after;
        self.fault_probability = faults.probability;
        self.buffering = faults.buffering;
        self.buffering_ignore_header = faults.buffering_ignore_header;
        self.compression = if faults.compression.enabled {
            Compression::Gzip
        } else {
            Compression::Off
        };
        self.compression_ignore_no_transform = faults.compression.ignore_no_transform;
        self
    }

    /// Sets every timer explicitly, as the lab CLI and the tests do.
    pub fn with_timers(mut self, timers: TimerSet) -> Self {
        self.connect_timeout = TimerSetting::Set(timers.connect);
        self.first_byte_timeout = TimerSetting::Set(timers.first_byte);
        self.idle_timeout = TimerSetting::Set(timers.idle);
        self.max_duration = TimerSetting::Set(timers.max_duration);
        self.header_timeout = TimerSetting::Set(timers.header);
        self.keepalive_timeout = TimerSetting::Set(timers.keepalive);
        self.send_timeout = TimerSetting::Set(timers.send);
        self
    }
}

impl Default for ProxyConfig {
    /// The documented defaults, without reading the environment.
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR.parse().expect("default address is valid"),
            upstream: DEFAULT_UPSTREAM.parse().expect("default upstream is valid"),
            upstream_protocol: UpstreamProtocol::Http1,
            workers: Workers::Auto,
            admin_addr: DEFAULT_ADMIN_ADDR
                .parse()
                .expect("default admin address is valid"),
            admin_token: None,
            deny_paths: DEFAULT_DENY_PATHS
                .parse()
                .expect("default deny paths are valid"),
            preset: Preset::Nginx,
            connect_timeout: TimerSetting::Preset,
            first_byte_timeout: TimerSetting::Preset,
            idle_timeout: TimerSetting::Preset,
            max_duration: TimerSetting::Preset,
            header_timeout: TimerSetting::Preset,
            keepalive_timeout: TimerSetting::Preset,
            send_timeout: TimerSetting::Preset,
            max_connections: MaxConnections::Auto,
            cut_style: CutStyle::Truncate,
            balance: Balance::LeastStreams,
            health_interval: Some(Duration::from_secs(2)),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: None,
            upstream_ca: None,
            fault_latency: None,
            fault_bandwidth: None,
            fault_limit_bytes: None,
            fault_reset_after: None,
            fault_blackhole_after: None,
            fault_probability: 1.0,
            buffering: None,
            buffering_ignore_header: false,
            compression: Compression::Off,
            compression_ignore_no_transform: false,
            fault_headers: FaultHeaders::Demo,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            log_format: LogFormat::Pretty,
            healthcheck: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepalive_common::config::{try_parse_from, ConfigError};

    fn parse(args: &[&str]) -> Result<ProxyConfig, ConfigError> {
        try_parse_from(std::iter::once("keepalive-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn explicit_timers_override_the_preset() {
        let config = parse(&[
            "--preset",
            "heroku",
            "--idle-timeout",
            "5s",
            "--max-duration",
            "off",
        ])
        .expect("valid");
        let timers = config.timers();
        assert_eq!(timers.idle, Some(Duration::from_secs(5)));
        assert_eq!(timers.first_byte, Some(Duration::from_secs(30)));
        assert_eq!(timers.max_duration, None);
        assert_eq!(timers.connect, Some(Duration::from_secs(5)));
    }

    #[test]
    fn preset_keyword_leaves_a_timer_to_the_preset() {
        let config = parse(&[
            "--preset",
            "heroku",
            "--idle-timeout",
            "preset",
            "--first-byte-timeout",
            "2s",
        ])
        .expect("valid");
        let timers = config.timers();
        assert_eq!(timers.idle, Preset::Heroku.timers().idle);
        assert_eq!(timers.first_byte, Some(Duration::from_secs(2)));
    }

    #[test]
    fn faults_set_are_the_faults_read() {
        let faults = FaultSettings {
            latency: Some(Duration::from_millis(5)),
            bandwidth: Some(1024),
            limit_bytes: Some(70),
            reset_after: Some(Duration::from_secs(1)),
            blackhole_after: Some(Duration::from_secs(2)),
            probability: 0.5,
            buffering: Some(65536),
            buffering_ignore_header: true,
            compression: CompressionHop {
                enabled: true,
                ignore_no_transform: true,
            },
        };
        assert_eq!(ProxyConfig::default().with_faults(faults).faults(), faults);
    }

    #[test]
    fn default_preset_is_nginx() {
        let config = parse(&[]).expect("valid");
        assert_eq!(config.timers(), Preset::Nginx.timers());
        assert_eq!(ProxyConfig::default().timers(), Preset::Nginx.timers());
    }

    #[test]
    fn bad_timer_names_the_variable_value_and_form() {
        let Err(ConfigError::Invalid(line)) = parse(&["--idle-timeout", "soon"]) else {
            panic!("accepted a bad timer");
        };
        assert!(line.contains("PROXY_IDLE_TIMEOUT"), "{line}");
        assert!(line.contains("soon"), "{line}");
        assert!(line.contains("250ms"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn deny_paths_default_to_metrics_and_can_be_turned_off() {
        assert!(parse(&[]).expect("valid").deny_paths.denies("/metrics"));
        assert!(ProxyConfig::default().deny_paths.denies("/metrics"));
        let off = parse(&["--deny-paths", "off"]).expect("valid");
        assert!(!off.deny_paths.denies("/metrics"));
    }

    #[test]
    fn bad_deny_path_names_the_variable_value_and_form() {
        let Err(ConfigError::Invalid(line)) = parse(&["--deny-paths", "metrics"]) else {
            panic!("accepted a path without /");
        };
        assert!(line.contains("PROXY_DENY_PATHS"), "{line}");
        assert!(line.contains("metrics"), "{line}");
        assert!(line.contains("/metrics,/admin"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn fault_headers_are_off_demo_or_all_and_the_old_switch_still_works() {
        assert_eq!(parse(&[]).expect("valid").fault_headers, FaultHeaders::Demo);
        for (value, policy) in [
            ("off", FaultHeaders::Off),
            ("0", FaultHeaders::Off),
            ("false", FaultHeaders::Off),
            ("demo", FaultHeaders::Demo),
            ("all", FaultHeaders::All),
            ("1", FaultHeaders::All),
            ("on", FaultHeaders::All),
            ("TRUE", FaultHeaders::All),
        ] {
            let config = parse(&["--fault-headers", value]).expect(value);
            assert_eq!(config.fault_headers, policy, "{value}");
        }
        let Err(ConfigError::Invalid(line)) = parse(&["--fault-headers", "some"]) else {
            panic!("accepted a policy that is none");
        };
        assert!(
            line.contains("PROXY_FAULT_HEADERS")
                && line.contains("\"some\"")
                && line.contains("off, demo or all"),
            "{line}"
        );
    }

    #[test]
    fn a_buffering_hop_beyond_its_limit_is_refused_at_start() {
        let config = parse(&["--buffering", "1MiB"]).expect("the limit itself");
        assert_eq!(config.buffering, Some(1024 * 1024));
        let Err(ConfigError::Invalid(line)) = parse(&["--buffering", "100GB"]) else {
            panic!("accepted a 100 GB buffer");
        };
        assert!(
            line.contains("PROXY_BUFFERING") && line.contains("100GB") && line.contains("1.0 MiB"),
            "{line}"
        );
    }

    #[test]
    fn help_says_how_to_widen_the_fault_headers_and_their_limits() {
        let help = <ProxyConfig as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for says in [
            "PROXY_FAULT_HEADERS",
            "off: none; demo",
            "all (or 1)",
            "at most 1m of latency",
            "at least 100 bytes a second",
        ] {
            assert!(help.contains(says), "--help lacks {says:?}:\n{help}");
        }
    }

    #[test]
    fn send_timeout_comes_from_the_preset_unless_set() {
        let nginx = parse(&[]).expect("valid");
        assert_eq!(nginx.timers().send, Some(Duration::from_secs(60)));
        let set = parse(&["--preset", "gcp", "--send-timeout", "2s"]).expect("valid");
        assert_eq!(set.timers().send, Some(Duration::from_secs(2)));
    }

    #[test]
    fn max_connections_is_auto_or_a_positive_number() {
        assert_eq!(
            parse(&[]).expect("valid").max_connections,
            MaxConnections::Auto
        );
        let at = parse(&["--max-connections", "100"]).expect("valid");
        assert_eq!(
            at.max_connections,
            MaxConnections::At(NonZeroUsize::new(100).expect("non-zero"))
        );
        for bad in ["0", "1.5", "many"] {
            let Err(ConfigError::Invalid(line)) = parse(&["--max-connections", bad]) else {
                panic!("accepted PROXY_MAX_CONNECTIONS={bad}");
            };
            assert!(line.contains("PROXY_MAX_CONNECTIONS"), "{line}");
            assert!(line.contains(bad), "{line}");
            assert!(line.contains("auto"), "{line}");
        }
    }

    #[test]
    fn workers_are_auto_or_a_count_within_bounds() {
        assert_eq!(Workers::parse("auto").expect("auto"), Workers::Auto);
        assert!(Workers::Auto.threads() >= 1);
        assert_eq!(Workers::parse(" 3 ").expect("three").threads(), 3);
        for bad in ["0", "1025", "1.5", "many"] {
            let Err(ConfigError::Invalid(line)) = parse(&["--workers", bad]) else {
                panic!("accepted {bad} workers");
            };
            assert!(line.contains("PROXY_WORKERS"), "{line}");
            assert!(line.contains("1 to 1024"), "{line}");
        }
        let config = parse(&["--upstream-protocol", "h2"]).expect("h2 is a protocol");
        assert_eq!(config.upstream_protocol, UpstreamProtocol::H2);
    }

    #[test]
    fn bad_upstream_is_refused() {
        let Err(ConfigError::Invalid(line)) = parse(&["--upstream", "ftp://example.test"]) else {
            panic!("accepted an ftp upstream");
        };
        assert!(line.contains("PROXY_UPSTREAM"), "{line}");
        assert!(line.contains("https://"), "{line}");
    }

    #[test]
    fn self_signed_tls_is_a_file_or_off_and_empty_is_off() {
        assert_eq!(parse(&[]).expect("valid").tls_self_signed, None);
        for off in ["", "off", "OFF", " "] {
            let config = parse(&[&format!("--tls-self-signed={off}")]).expect(off);
            assert_eq!(config.tls_self_signed, None, "{off:?}");
        }
        let on = parse(&["--tls-self-signed", "certs/proxy-cert.pem"]).expect("valid");
        assert_eq!(
            on.tls_self_signed,
            Some(PathBuf::from("certs/proxy-cert.pem"))
        );
    }

    #[test]
    fn a_missing_certificate_file_is_refused_naming_the_variable_and_the_file() {
        let Err(ConfigError::Invalid(line)) = parse(&["--tls-cert", "/nonexistent/proxy-cert.pem"])
        else {
            panic!("accepted a certificate that is not there");
        };
        assert!(line.contains("PROXY_TLS_CERT"), "{line}");
        assert!(line.contains("/nonexistent/proxy-cert.pem"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn help_puts_the_tls_settings_under_their_heading_and_says_how_to_trust_the_certificate() {
        let help = <ProxyConfig as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        let tls = &help[help.find("TLS:").expect("a TLS heading")..];
        for env in [
            "PROXY_TLS_CERT",
            "PROXY_TLS_KEY",
            "PROXY_TLS_SELF_SIGNED",
            "PROXY_UPSTREAM_CA",
        ] {
            assert!(
                tls.contains(&format!("[env: {env}")),
                "{env} is not under the TLS heading:\n{help}"
            );
        }
        assert!(tls.contains("curl --cacert FILE"), "{help}");
    }
}
