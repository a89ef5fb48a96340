//! Reading a program's settings from flags and env vars, with the error a user can act on.
//!
//! clap's own message for a bad env var names the flag, not the variable the user actually set, and
//! spans several lines. Operators set these programs up through env vars (compose files, systemd units),
//! so a bad value stops the program with exit code 2 and one line naming the variable, the value and the
//! accepted form.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser;

/// Parses flags and env vars into `T`, or exits: 0 for `--help`/`--version`, 2 with one line otherwise.
pub fn parse_or_exit<T: Parser>() -> T {
    match try_parse_from::<T, _, _>(std::env::args_os()) {
        Ok(config) => config,
        Err(ConfigError::Clap(err)) => err.exit(),
        Err(ConfigError::Invalid(line)) => {
            eprintln!("{line}");
            std::process::exit(2);
        }
    }
}

/// Why settings were refused: a help/usage outcome clap prints itself, or one line for a bad value.
#[derive(Debug)]
pub enum ConfigError {
    Clap(clap::Error),
    Invalid(String),
}

/// Like [`parse_or_exit`], from the given arguments; the environment is read as usual.
pub fn try_parse_from<T, I, A>(args: I) -> Result<T, ConfigError>
where
    T: Parser,
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    let command = T::command();
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(|err| explain(&command, err))?;
    T::from_arg_matches(&matches).map_err(|err| explain(&command, err))
}

fn explain(command: &clap::Command, err: clap::Error) -> ConfigError {
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return ConfigError::Clap(err);
    }
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (Some(flag), Some(value)) = (
        context(ContextKind::InvalidArg),
        context(ContextKind::InvalidValue),
    ) else {
        return ConfigError::Clap(err);
    };
    let long = flag.split_whitespace().next().unwrap_or(&flag);
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long().is_some_and(|l| long == format!("--{l}")));
    let name = match arg.and_then(|arg| arg.get_env()) {
        Some(env) => format!("{} ({long})", env.to_string_lossy()),
        None => long.to_owned(),
    };
    let reason = match (err.source(), err.get(ContextKind::ValidValue)) {
        (Some(source), _) if source.is::<std::net::AddrParseError>() => {
            format!("{source}; expected an IP address and a port, like 0.0.0.0:8080")
        }
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        (None, _) => "invalid value".to_owned(),
    };
    ConfigError::Invalid(format!(
        "{}: invalid value for {name}: {value:?}: {reason}",
        command.get_name()
    ))
}

use std::error::Error as _;
