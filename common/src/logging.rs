//! One logging set-up for every binary: `RUST_LOG` filters, `LOG_FORMAT` picks the shape.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines look: `pretty` for a terminal, `json` for a log pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The filter `RUST_LOG` asks for, `default_filter` when it is unset or empty, or one line saying why
/// it cannot be used: a typo there would otherwise silently hide the logs the user asked for.
pub fn filter(default_filter: &str) -> Result<EnvFilter, String> {
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|err| {
                format!(
                    "invalid value for RUST_LOG: {directives:?}: {err}; expected directives like info or keepalive_proxy=debug"
                )
            }),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new(default_filter)),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("invalid value for RUST_LOG: not UTF-8".to_owned())
        }
    }
}

/// Installs the global subscriber on stderr, or exits 2 with one line when `RUST_LOG` is unusable.
pub fn init(program: &str, format: LogFormat, default_filter: &str) {
    let filter = filter(default_filter).unwrap_or_else(|line| {
        eprintln!("{program}: {line}");
        std::process::exit(2);
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never in `docker logs` or a file.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
