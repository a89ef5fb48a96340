//! The origin's settings: every one a flag and an env var, because operators set it up through compose
//! files and systemd units while the tests and the lab CLI build it in-process.
//!
//! The defaults live once, as the strings a user would type, so that `--help`, clap and [`Default`]
//! cannot disagree; [`Default`] never reads the environment, so in-process servers are reproducible.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use keepalive_common::duration::{display, parse_duration};
use keepalive_common::logging::LogFormat;

use crate::bounds::{
    duration_at_least, timer_at_least, SettingError, SHORTEST_ENDLESS_SLEEP,
    SHORTEST_HEADER_TIMEOUT, SHORTEST_HEARTBEAT, SHORTEST_JOB_LEASE, SHORTEST_TCP_USER_TIMEOUT,
};
use crate::jobs::{Backend, DatabaseUrl, Storage};

/// Loopback: an origin is meant to sit behind a balancer, and one started by hand on a laptop must
/// not be reachable from the network; the images set `0.0.0.0:8000` themselves.
const DEFAULT_ADDR: &str = "127.0.0.1:8000";
/// The Django tutorial's `int(request.GET.get('sleep', 10))`.
const DEFAULT_SLEEP: &str = "10s";
const DEFAULT_HEARTBEAT: &str = "off";
const DEFAULT_MAX_SLEEP: &str = "1h";
const DEFAULT_DRAIN_TIMEOUT: &str = "5s";
const DEFAULT_LOG_FORMAT: &str = "pretty";
const DEFAULT_DATA_DIR: &str = "keepalive-data";
const DEFAULT_JOB_RETENTION: &str = "24h";
/// Long enough that a busy database does not lose a healthy runner its job, short enough that a
/// job whose replica died goes on within seconds.
const DEFAULT_JOB_LEASE: &str = "5s";
const DEFAULT_JOB_MAX: &str = "1000";
/// A hundredth of `SERVER_JOB_MAX`: one client cannot fill the store, and a page that resumes a few
/// jobs is never refused.
const DEFAULT_JOBS_PER_CLIENT: &str = "10";
/// Like the proxy's default header timer (nginx's `client_header_timeout`).
const DEFAULT_HEADER_TIMEOUT: &str = "60s";

/// How the origin listens and what `/polls/streamed` does when the query does not say.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "keepalive-server",
    version,
    about = "The streaming origin: the Django tutorial's /polls/streamed, with heartbeats and metrics",
    after_help = "Logging: RUST_LOG filters (e.g. RUST_LOG=debug or RUST_LOG=keepalive_server=debug); LOG_FORMAT=json gives one JSON object a line.",
    long_about = "The streaming origin: the Django tutorial's /polls/streamed, with heartbeats and \
                  metrics.\n\nDurations are written 250ms, 5s, 1m, or as bare seconds (5, 0.25). \
                  Every flag can also be set through the env var shown with it; a flag wins over \
                  its env var."
)]
pub struct ServerConfig {
    /// Address to listen on (HTTP/1.1 and h2c). Loopback by default, so that an origin started by
    /// hand is not open to the network; 0.0.0.0:8000 for a balancer on another host (the images
    /// set it).
    #[arg(long, env = "SERVER_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// Pause between two poem lines when the request has no `sleep` parameter; at least 10ms (a
    /// faster stream is sent at full speed, so a request must give `lines` to ask for one).
    #[arg(long, env = "SERVER_SLEEP", default_value = DEFAULT_SLEEP, value_parser = sleep_setting)]
    pub sleep: Duration,

    /// While waiting for the next line, send a heartbeat this often when the request has no
    /// `heartbeat` parameter: a space in text, an SSE comment in sse. 0 or off disables; when on,
    /// at least 10ms, as for the query parameter (shorter only floods the client with spaces).
    // Spelled out so that clap takes the parser's `Option` as the value instead of making the flag optional.
    #[arg(long, env = "SERVER_HEARTBEAT", default_value = DEFAULT_HEARTBEAT, value_parser = heartbeat_setting)]
    pub heartbeat: std::option::Option<Duration>,

    /// Largest `sleep`, `delay` and `heartbeat` a request may ask for; larger values get a 400.
    /// At least 10ms, the shortest `sleep` of an endless stream.
    #[arg(long, env = "SERVER_MAX_SLEEP", default_value = DEFAULT_MAX_SLEEP, value_parser = sleep_setting)]
    pub max_sleep: Duration,

    /// TCP_USER_TIMEOUT on client connections: how long sent data may stay unacknowledged before
    /// the connection is dropped. When the network silently loses a client (no FIN, no RST), a
    /// stream learns of it only through this, on its next write (a heartbeat); 0 or off leaves the
    /// kernel's default (about 15 minutes of retransmissions); when on, at least 1s (below the
    /// retransmission timeout one lost segment would drop a healthy client). Linux only.
    #[arg(long, env = "SERVER_TCP_USER_TIMEOUT", default_value = "off", value_parser = tcp_user_timeout_setting)]
    pub tcp_user_timeout: std::option::Option<Duration>,

    /// How long a client may take to send a request head: from accept for the first request, and
    /// on a kept-alive HTTP/1.1 connection from the end of the previous response (so idle
    /// keep-alive connections are closed after this long too). Slowloris protection, like nginx's
    /// client_header_timeout; 0 or off disables; when on, at least 100ms.
    #[arg(long, env = "SERVER_HEADER_TIMEOUT", default_value = DEFAULT_HEADER_TIMEOUT, value_parser = header_timeout_setting)]
    pub header_timeout: std::option::Option<Duration>,

    /// On shutdown, how long to let open responses finish before closing them; infinite streams
    /// never finish by themselves.
    #[arg(long, env = "SERVER_DRAIN_TIMEOUT", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Where jobs (POST /jobs) are kept, in an SQLite database (jobs.sqlite3) made on first use;
    /// :memory: keeps them in memory only, lost when the origin stops. One origin per directory
    /// (it is locked); unused when SERVER_DATABASE_URL is set.
    #[arg(long, env = "SERVER_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: Storage,

    /// Keep jobs in PostgreSQL instead (postgres://user:password@host:port/dbname), shared by
    /// every origin on it: any of them serves any job, and a job whose origin died is taken over by
    /// another. The schema is made at start. Empty: SQLite under SERVER_DATA_DIR. No TLS to the
    /// database (sslmode=disable).
    // Spelled out so that an empty value (compose's `${SERVER_DATABASE_URL:-}`) reads as unset.
    #[arg(long, env = "SERVER_DATABASE_URL", default_value = "", hide_default_value = true, value_parser = database_url_setting)]
    pub database_url: std::option::Option<DatabaseUrl>,

    /// How long an origin owns a running job unless it renews (it does, a few times a lease, while
    /// it runs the job): after a crash, another origin takes the job over this long after the last
    /// renewal. A graceful stop hands jobs back at once. At least 1s.
    #[arg(long, env = "SERVER_JOB_LEASE", default_value = DEFAULT_JOB_LEASE, value_parser = lease_setting)]
    pub job_lease: Duration,

    /// How long a finished job (and its log) is kept.
    #[arg(long, env = "SERVER_JOB_RETENTION", default_value = DEFAULT_JOB_RETENTION, value_parser = parse_duration)]
    pub job_retention: Duration,

    /// Most jobs kept at once: beyond it the oldest finished ones are deleted, and new jobs are
    /// refused (503) while this many are running.
    #[arg(long, env = "SERVER_JOB_MAX", default_value = DEFAULT_JOB_MAX, value_parser = clap::value_parser!(u64).range(1..))]
    pub job_max: u64,

    /// Most jobs one client may have running at once; beyond it POST /jobs gets 429. A client is
    /// the connection's peer address (an IPv6 client its /64): behind a proxy every client is the
    /// proxy, so raise this there. X-Forwarded-For is never trusted, as any client can send one.
    #[arg(long, env = "SERVER_JOBS_PER_CLIENT", default_value = DEFAULT_JOBS_PER_CLIENT, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs_per_client: u64,

    /// Shape of the log lines on stderr: pretty for a terminal, json for a log pipeline.
    #[arg(long, env = "LOG_FORMAT", default_value = DEFAULT_LOG_FORMAT, value_enum)]
    pub log_format: LogFormat,

    /// Instead of serving, ask the origin at SERVER_ADDR for /healthz: exit 0 when it answers 200,
    /// 1 otherwise (a container HEALTHCHECK that needs no curl).
    #[arg(long)]
    pub healthcheck: bool,
}

impl ServerConfig {
    /// The database jobs are kept in.
    pub fn backend(&self) -> Backend {
        match &self.database_url {
            Some(url) => Backend::Postgres(url.clone()),
            None => Backend::Sqlite(self.data_dir.clone()),
        }
    }

    /// Refuses what the flags' parsers refuse, for a configuration built in code (the lab, the
    /// tests) rather than parsed; and defaults a request could not ask for itself: `?sleep=2h` gets
    /// a 400 under a 1h `SERVER_MAX_SLEEP`, so `SERVER_SLEEP=2h` must not quietly give every
    /// request two hours.
    pub fn check(&self) -> Result<(), InvalidSetting> {
        let floors = [
            ("SERVER_SLEEP", Some(self.sleep), SHORTEST_ENDLESS_SLEEP),
            (
                "SERVER_MAX_SLEEP",
                Some(self.max_sleep),
                SHORTEST_ENDLESS_SLEEP,
            ),
            ("SERVER_HEARTBEAT", self.heartbeat, SHORTEST_HEARTBEAT),
            ("SERVER_JOB_LEASE", Some(self.job_lease), SHORTEST_JOB_LEASE),
            (
                "SERVER_HEADER_TIMEOUT",
                self.header_timeout,
                SHORTEST_HEADER_TIMEOUT,
            ),
            (
                "SERVER_TCP_USER_TIMEOUT",
                self.tcp_user_timeout,
                SHORTEST_TCP_USER_TIMEOUT,
            ),
        ];
        for (variable, value, floor) in floors {
            if let Some(value) = value.filter(|value| *value < floor) {
                return Err(InvalidSetting {
                    variable,
                    reason: format!("{}: shorter than {}", display(value), display(floor)),
                });
            }
        }
        for (variable, count) in [
            ("SERVER_JOB_MAX", self.job_max),
            ("SERVER_JOBS_PER_CLIENT", self.jobs_per_client),
        ] {
            if count == 0 {
                return Err(InvalidSetting {
                    variable,
                    reason: "0: expected a whole number, 1 or more".to_owned(),
                });
            }
        }
        if cfg!(not(target_os = "linux")) && self.tcp_user_timeout.is_some() {
            return Err(InvalidSetting {
                variable: "SERVER_TCP_USER_TIMEOUT",
                reason: "TCP_USER_TIMEOUT exists on Linux only".to_owned(),
            });
        }
        if let Some(Err(reason)) = self.database_url.as_ref().map(DatabaseUrl::check) {
            return Err(InvalidSetting {
                variable: "SERVER_DATABASE_URL",
                reason,
            });
        }
        let max = self.max_sleep;
        for (variable, value) in [
            ("SERVER_SLEEP", Some(self.sleep)),
            ("SERVER_HEARTBEAT", self.heartbeat),
        ] {
            if let Some(value) = value.filter(|value| *value > max) {
                return Err(InvalidSetting {
                    variable,
                    reason: format!(
                        "{:?}: longer than SERVER_MAX_SLEEP ({}); lower it or raise SERVER_MAX_SLEEP",
                        display(value),
                        display(max)
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A configuration [`ServerConfig::check`] refuses: the variable, and why, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for {variable}: {reason}")]
pub struct InvalidSetting {
    pub variable: &'static str,
    pub reason: String,
}

/// Taken as it is and checked by [`ServerConfig::check`]: clap's own refusal would quote the
/// value, password and all.
fn database_url_setting(value: &str) -> Result<Option<DatabaseUrl>, String> {
    match value.trim() {
        "" => Ok(None),
        url => Ok(Some(DatabaseUrl::new(url))),
    }
}

fn lease_setting(value: &str) -> Result<Duration, SettingError> {
    duration_at_least(value, SHORTEST_JOB_LEASE)
}

fn sleep_setting(value: &str) -> Result<Duration, SettingError> {
    duration_at_least(value, SHORTEST_ENDLESS_SLEEP)
}

fn heartbeat_setting(value: &str) -> Result<Option<Duration>, SettingError> {
    timer_at_least(value, SHORTEST_HEARTBEAT)
}

fn header_timeout_setting(value: &str) -> Result<Option<Duration>, SettingError> {
    timer_at_least(value, SHORTEST_HEADER_TIMEOUT)
}

fn tcp_user_timeout_setting(value: &str) -> Result<Option<Duration>, SettingError> {
    timer_at_least(value, SHORTEST_TCP_USER_TIMEOUT)
}

impl Default for ServerConfig {
    fn default() -> Self {
        let duration =
            |text: &str| parse_duration(text).expect("every default duration is well formed");
        Self {
            addr: DEFAULT_ADDR
                .parse()
                .expect("DEFAULT_ADDR is a socket address"),
            sleep: sleep_setting(DEFAULT_SLEEP).expect("DEFAULT_SLEEP is a sleep"),
            heartbeat: heartbeat_setting(DEFAULT_HEARTBEAT).expect("DEFAULT_HEARTBEAT is a timer"),
            max_sleep: sleep_setting(DEFAULT_MAX_SLEEP).expect("DEFAULT_MAX_SLEEP is a sleep"),
            tcp_user_timeout: None,
            header_timeout: header_timeout_setting(DEFAULT_HEADER_TIMEOUT)
                .expect("DEFAULT_HEADER_TIMEOUT is a timer"),
            drain_timeout: duration(DEFAULT_DRAIN_TIMEOUT),
            data_dir: DEFAULT_DATA_DIR
                .parse()
                .expect("DEFAULT_DATA_DIR is a directory"),
            database_url: None,
            job_lease: lease_setting(DEFAULT_JOB_LEASE).expect("DEFAULT_JOB_LEASE is a lease"),
            job_retention: duration(DEFAULT_JOB_RETENTION),
            job_max: DEFAULT_JOB_MAX
                .parse()
                .expect("DEFAULT_JOB_MAX is a number"),
            jobs_per_client: DEFAULT_JOBS_PER_CLIENT
                .parse()
                .expect("DEFAULT_JOBS_PER_CLIENT is a number"),
            log_format: <LogFormat as clap::ValueEnum>::from_str(DEFAULT_LOG_FORMAT, false)
                .expect("DEFAULT_LOG_FORMAT is a log format"),
            healthcheck: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use keepalive_common::config::{try_parse_from, ConfigError};

    /// Parses `args` as if no env var were set, whatever the environment of the test run holds.
    fn parse_without_env(args: &[&str]) -> ServerConfig {
        let command = ServerConfig::command().mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(args).expect("valid arguments");
        ServerConfig::from_arg_matches(&matches).expect("complete matches")
    }

    #[test]
    fn defaults_resolve_as_documented() {
        let config = ServerConfig::default();
        assert_eq!(config.addr, "127.0.0.1:8000".parse().expect("address"));
        assert_eq!(config.sleep, Duration::from_secs(10));
        assert_eq!(config.header_timeout, Some(Duration::from_secs(60)));
        assert_eq!(config.jobs_per_client, 10);
        assert_eq!(config.heartbeat, None);
        assert_eq!(config.max_sleep, Duration::from_secs(3600));
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(parse_without_env(&["keepalive-server"]), config);
    }

    #[test]
    fn flags_are_read_as_humane_durations() {
        let config = parse_without_env(&[
            "keepalive-server",
            "--addr",
            "127.0.0.1:0",
            "--sleep",
            "250ms",
            "--heartbeat",
            "0.5",
            "--max-sleep",
            "1m",
            "--drain-timeout",
            "0",
            "--log-format",
            "json",
        ]);
        assert_eq!(config.addr, "127.0.0.1:0".parse().expect("address"));
        assert_eq!(config.sleep, Duration::from_millis(250));
        assert_eq!(config.heartbeat, Some(Duration::from_millis(500)));
        assert_eq!(config.max_sleep, Duration::from_secs(60));
        assert_eq!(config.drain_timeout, Duration::ZERO);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_sleep_is_refused_naming_server_sleep() {
        let err = try_parse_from::<ServerConfig, _, _>(["keepalive-server", "--sleep", "soon"])
            .expect_err("soon is not a duration");
        let ConfigError::Invalid(line) = err else {
            panic!("want a one-line refusal, got {err:?}");
        };
        assert!(line.contains("SERVER_SLEEP"), "{line}");
        assert!(line.contains("\"soon\""), "{line}");
        assert!(line.contains("250ms"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    /// `SERVER_HEARTBEAT=1ns` was once accepted while `?heartbeat=1ns` got a 400: each duration
    /// setting now has the floor its query parameter has, refused in one line naming the variable.
    #[test]
    fn durations_below_their_floor_are_refused_naming_variable_value_and_floor() {
        let cases = [
            ("--heartbeat", "1ns", "SERVER_HEARTBEAT", "at least 10ms"),
            ("--sleep", "0", "SERVER_SLEEP", "at least 10ms"),
            ("--sleep", "9ms", "SERVER_SLEEP", "at least 10ms"),
            ("--max-sleep", "1ms", "SERVER_MAX_SLEEP", "at least 10ms"),
            (
                "--header-timeout",
                "1ms",
                "SERVER_HEADER_TIMEOUT",
                "at least 100ms",
            ),
            (
                "--tcp-user-timeout",
                "1ns",
                "SERVER_TCP_USER_TIMEOUT",
                "at least 1s",
            ),
        ];
        for (flag, value, variable, floor) in cases {
            let err = try_parse_from::<ServerConfig, _, _>(["keepalive-server", flag, value])
                .expect_err(value);
            let ConfigError::Invalid(line) = err else {
                panic!("{flag} {value}: want a one-line refusal, got {err:?}");
            };
            assert!(line.contains(variable), "{line}");
            assert!(line.contains(&format!("{value:?}")), "{line}");
            assert!(line.contains(floor), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        let config = parse_without_env(&[
            "keepalive-server",
            "--heartbeat",
            "10ms",
            "--sleep",
            "10ms",
            "--header-timeout",
            "off",
            "--tcp-user-timeout",
            "1s",
        ]);
        assert_eq!(config.heartbeat, Some(Duration::from_millis(10)));
        assert_eq!(config.header_timeout, None);
        assert_eq!(config.check(), Ok(()));
    }

    #[test]
    fn a_configuration_built_in_code_meets_the_same_floors() {
        let cases = [
            (
                ServerConfig {
                    heartbeat: Some(Duration::from_nanos(1)),
                    ..ServerConfig::default()
                },
                "SERVER_HEARTBEAT",
            ),
            (
                ServerConfig {
                    sleep: Duration::ZERO,
                    ..ServerConfig::default()
                },
                "SERVER_SLEEP",
            ),
            (
                ServerConfig {
                    header_timeout: Some(Duration::from_millis(1)),
                    ..ServerConfig::default()
                },
                "SERVER_HEADER_TIMEOUT",
            ),
            (
                ServerConfig {
                    jobs_per_client: 0,
                    ..ServerConfig::default()
                },
                "SERVER_JOBS_PER_CLIENT",
            ),
        ];
        for (config, variable) in cases {
            let err = config.check().expect_err(variable);
            assert_eq!(err.variable, variable, "{err}");
        }
    }

    #[test]
    fn defaults_above_the_maximum_are_refused_naming_both_variables() {
        let config = ServerConfig {
            sleep: Duration::from_secs(7200),
            ..ServerConfig::default()
        };
        let line = config
            .check()
            .expect_err("2h is above the 1h maximum")
            .to_string();
        assert!(
            line.contains("SERVER_SLEEP") && line.contains("SERVER_MAX_SLEEP"),
            "{line}"
        );
        let config = ServerConfig {
            heartbeat: Some(Duration::from_secs(30)),
            max_sleep: Duration::from_secs(10),
            ..ServerConfig::default()
        };
        let line = config
            .check()
            .expect_err("a 30s heartbeat is above a 10s maximum")
            .to_string();
        assert!(line.contains("SERVER_HEARTBEAT"), "{line}");
        assert_eq!(ServerConfig::default().check(), Ok(()));
    }

    #[test]
    fn a_bad_database_url_is_refused_without_showing_its_password() {
        let config = parse_without_env(&[
            "keepalive-server",
            "--database-url=postgres://ann:s3cret@db/jobs?sslmode=sometimes",
        ]);
        let err = config.check().expect_err("no such sslmode");
        assert_eq!(err.variable, "SERVER_DATABASE_URL", "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let config = parse_without_env(&["keepalive-server", "--database-url= "]);
        assert_eq!(config.database_url, None, "an empty URL is no URL");
        let url: DatabaseUrl = "postgres://ann:s3cret@db:5433/jobs".parse().expect("a URL");
        assert_eq!(url.to_string(), "postgres://ann@db:5433/jobs");
    }

    #[test]
    fn help_names_every_env_var() {
        let help = ServerConfig::command().render_long_help().to_string();
        for env in [
            "SERVER_ADDR",
            "SERVER_SLEEP",
            "SERVER_HEARTBEAT",
            "SERVER_MAX_SLEEP",
            "SERVER_DRAIN_TIMEOUT",
            "SERVER_TCP_USER_TIMEOUT",
            "SERVER_HEADER_TIMEOUT",
            "SERVER_JOBS_PER_CLIENT",
            "SERVER_DATABASE_URL",
            "SERVER_JOB_LEASE",
            "LOG_FORMAT",
        ] {
            assert!(help.contains(env), "--help lacks {env}:\n{help}");
        }
    }

    /// Every setting an operator can get wrong, by flag and env var.
    const SETTINGS: [(&str, &str); 14] = [
        ("addr", "SERVER_ADDR"),
        ("sleep", "SERVER_SLEEP"),
        ("heartbeat", "SERVER_HEARTBEAT"),
        ("max-sleep", "SERVER_MAX_SLEEP"),
        ("tcp-user-timeout", "SERVER_TCP_USER_TIMEOUT"),
        ("header-timeout", "SERVER_HEADER_TIMEOUT"),
        ("drain-timeout", "SERVER_DRAIN_TIMEOUT"),
        ("data-dir", "SERVER_DATA_DIR"),
        ("database-url", "SERVER_DATABASE_URL"),
        ("job-lease", "SERVER_JOB_LEASE"),
        ("job-retention", "SERVER_JOB_RETENTION"),
        ("job-max", "SERVER_JOB_MAX"),
        ("jobs-per-client", "SERVER_JOBS_PER_CLIENT"),
        ("log-format", "LOG_FORMAT"),
    ];

    proptest::proptest! {
        /// Whatever value a setting gets, the origin starts or refuses in one line naming the
        /// variable and the value; it never panics.
        #[test]
        fn any_setting_value_is_taken_or_refused_naming_variable_and_value(
            setting in proptest::sample::select(SETTINGS.to_vec()),
            value in proptest::prop_oneof![
                "[ +-]?[0-9]{0,22}(\\.[0-9]{0,6})?(ns|ms|s|m|h|d|y)?",
                "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|localhost)?:?[0-9]{0,6}",
                "off|0|json|pretty|:memory:|[a-z/]{1,12}",
                "\\PC{0,30}",
            ],
        ) {
            let (flag, variable) = setting;
            let quoted = format!("{value:?}");
            match try_parse_from::<ServerConfig, _, _>(["keepalive-server".to_owned(), format!("--{flag}={value}")]) {
                Ok(config) => {
                    // A default may meet another setting's bound (`--max-sleep=5` under a 10s
                    // `SERVER_SLEEP`): the refusal names both.
                    if let Err(err) = config.check() {
                        proptest::prop_assert!(err.to_string().contains(variable), "{}", err);
                    }
                }
                Err(ConfigError::Invalid(line)) => {
                    proptest::prop_assert!(
                        line.contains(variable) && line.contains(&quoted) && !line.contains('\n'),
                        "{line}"
                    );
                }
                Err(ConfigError::Clap(err)) => proptest::prop_assert!(false, "{flag}={value:?}: {err}"),
            }
        }
    }
}
