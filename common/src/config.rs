//! Reading a program's settings from flags and env vars, the same way in all three programs, with
//! the error a user can act on.
//!
//! clap's own message for a bad env var names the flag, not the variable the user actually set, and
//! spans several lines. Operators set these programs up through env vars (compose files, systemd units),
//! so a bad value stops the program with exit code 2 and one line naming the variable, the value and the
//! accepted form.
//!
//! Two house rules are applied here to whatever a program's settings declare, so that no program can
//! drift from them: every address (a `SocketAddr` setting) reads the forms of [`crate::address`]
//! (`localhost:8080`, `:8080`), and every on/off setting that takes a value is a switch
//! ([`crate::switch`]): `--flag` alone turns it on, `--flag=false` off, an env var takes 1/0/true/false.

use std::any::TypeId;
use std::net::SocketAddr;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Command, Parser};

use crate::address::parse_address;
use crate::switch::parse_switch;

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
    let command = house_rules(T::command());
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(|err| explain(&command, err))?;
    T::from_arg_matches(&matches).map_err(|err| explain(&command, err))
}

/// The house rules of the module comment, on `command` and its subcommands.
fn house_rules(command: Command) -> Command {
    command
        .mut_args(|arg| {
            let kind = arg.get_value_parser().type_id();
            if kind == TypeId::of::<SocketAddr>() {
                arg.value_parser(parse_address)
            } else if kind == TypeId::of::<bool>() && matches!(arg.get_action(), ArgAction::Set) {
                // `=` required: a bare `--flag` must not swallow the next argument as its value.
                arg.value_parser(parse_switch)
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
            } else {
                arg
            }
        })
        .mut_subcommands(house_rules)
}

/// The argument `--long` of `command` or of one of its subcommands.
fn find_arg<'a>(command: &'a Command, long: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long().is_some_and(|l| long == format!("--{l}")))
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_arg(sub, long))
        })
}

/// What a number setting accepts, for the kinds of number clap parses itself: `source` is clap's
/// reason (`invalid digit found in string`, or `0 is not in 1..18446744073709551615` for a range).
fn number_form(kind: impl PartialEq<TypeId>, source: &str) -> Option<String> {
    let whole = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
    ];
    if kind == TypeId::of::<f64>() || kind == TypeId::of::<f32>() {
        return Some("expected a number like 0.5".to_owned());
    }
    if !whole.iter().any(|whole| kind == *whole) {
        return None;
    }
    let Some((_, bounds)) = source.split_once(" is not in ") else {
        return Some(format!("{source}; expected a whole number like 100"));
    };
    let (low, high) = match bounds.split_once("..=") {
        Some((low, high)) => (low, high.parse::<i128>().ok()),
        None => {
            let (low, high) = bounds.split_once("..").unwrap_or((bounds, ""));
            (low, high.parse::<i128>().ok().map(|high| high - 1))
        }
    };
    // clap writes an open end as the type's maximum.
    Some(match high {
        Some(high) if high < i128::from(i32::MAX) => {
            format!("expected a whole number from {low} to {high}")
        }
        _ => format!("expected a whole number of at least {low}"),
    })
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
    // `--flag <VALUE>`, or `--flag[=<VALUE>]` for a switch.
    let long = flag
        .split(|c: char| c.is_whitespace() || c == '[' || c == '=')
        .next()
        .unwrap_or(&flag);
    let arg = find_arg(command, long);
    let name = match arg.and_then(|arg| arg.get_env()) {
        Some(env) => format!("{} ({long})", env.to_string_lossy()),
        None => long.to_owned(),
    };
    let kind = arg.map(|arg| arg.get_value_parser().type_id());
    let reason = match (err.source(), err.get(ContextKind::ValidValue)) {
        (Some(source), _) => kind
            .and_then(|kind| number_form(kind, &source.to_string()))
            .unwrap_or_else(|| source.to_string()),
        (None, Some(ContextValue::Strings(valid))) if !valid.is_empty() => {
            format!("expected one of {}", valid.join(", "))
        }
        // An empty env var (`SERVER_DATA_DIR=`) is a value clap refuses without saying why.
        (None, _) if value.is_empty() => "a value is required".to_owned(),
        (None, _) => "invalid value".to_owned(),
    };
    ConfigError::Invalid(format!(
        "{}: invalid value for {name}: {value:?}: {reason}",
        command.get_name()
    ))
}

use std::error::Error as _;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::builder::BoolishValueParser;
    use clap::{ArgAction, Parser, Subcommand};

    use super::{try_parse_from, ConfigError};

    /// Settings shaped like the programs' own: an address, a switch set the way the proxy sets its
    /// switches, numbers clap parses itself, and a subcommand with a number.
    #[derive(Debug, Parser)]
    #[command(name = "program")]
    struct Settings {
        #[arg(long, env = "TEST_CONFIG_ADDR", default_value = "127.0.0.1:1")]
        addr: SocketAddr,
        #[arg(long, env = "TEST_CONFIG_SWITCH", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
        switch: bool,
        #[arg(long, env = "TEST_CONFIG_COUNT", default_value = "1", value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        #[arg(long, default_value = "10", value_parser = clap::value_parser!(u16).range(1..=100))]
        percent: u16,
        #[arg(long, default_value = "7")]
        limit: u32,
        #[arg(long, default_value = "0.5")]
        share: f64,
        #[arg(long, env = "TEST_CONFIG_DIR", default_value = "data")]
        dir: std::path::PathBuf,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Run {
            #[arg(long, default_value = "1")]
            times: usize,
        },
    }

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        try_parse_from(std::iter::once("program").chain(args.iter().copied()))
    }

    #[track_caller]
    fn refused(args: &[&str]) -> String {
        match parse(args) {
            Err(ConfigError::Invalid(line)) => {
                assert!(!line.contains('\n'), "{line}");
                line
            }
            other => panic!("{args:?} was not refused with one line: {other:?}"),
        }
    }

    #[test]
    fn addresses_take_localhost_and_a_bare_port() {
        let bare = parse(&["--addr", ":8080"]).expect("valid");
        assert_eq!(bare.addr, SocketAddr::from(([0, 0, 0, 0], 8080)));
        let local = parse(&["--addr", "localhost:9"]).expect("valid");
        assert!(local.addr.ip().is_loopback(), "{}", local.addr);
        assert_eq!(local.addr.port(), 9);
        let line = refused(&["--addr", "example.com:80"]);
        assert!(line.contains("TEST_CONFIG_ADDR (--addr)"), "{line}");
        assert!(line.contains("example.com:80"), "{line}");
        assert!(line.contains("localhost:8080 or :8080"), "{line}");
    }

    #[test]
    fn switches_are_plain_flags_that_also_take_a_value() {
        assert!(!parse(&[]).expect("valid").switch);
        assert!(parse(&["--switch"]).expect("valid").switch);
        assert!(!parse(&["--switch=false"]).expect("valid").switch);
        assert!(parse(&["--switch=1"]).expect("valid").switch);
        // A bare switch leaves the next argument alone.
        let then = parse(&["--switch", "run", "--times", "3"]).expect("valid");
        assert!(then.switch);
        assert!(matches!(then.command, Some(Sub::Run { times: 3 })));
        let line = refused(&["--switch=maybe"]);
        assert!(line.contains("TEST_CONFIG_SWITCH (--switch)"), "{line}");
        assert!(line.contains("maybe"), "{line}");
        assert!(line.contains("1, 0, true, false"), "{line}");
    }

    #[test]
    fn an_empty_value_says_one_is_required() {
        let line = refused(&["--dir="]);
        assert!(line.contains("TEST_CONFIG_DIR (--dir): \"\""), "{line}");
        assert!(line.ends_with("a value is required"), "{line}");
    }

    #[test]
    fn a_bad_number_names_the_setting_the_value_and_what_is_expected() {
        let line = refused(&["--count", "ten"]);
        assert!(line.contains("TEST_CONFIG_COUNT (--count)"), "{line}");
        assert!(line.contains("\"ten\""), "{line}");
        assert!(line.contains("expected a whole number like 100"), "{line}");
        let line = refused(&["--count", "0"]);
        assert!(
            line.contains("expected a whole number of at least 1"),
            "{line}"
        );
        let line = refused(&["--percent", "101"]);
        assert!(
            line.contains("expected a whole number from 1 to 100"),
            "{line}"
        );
        let line = refused(&["--limit=-3"]);
        assert!(
            line.contains("--limit") && line.contains("\"-3\""),
            "{line}"
        );
        assert!(
            line.contains("expected a whole number of at least 0"),
            "{line}"
        );
        let line = refused(&["--share", "half"]);
        assert!(line.contains("expected a number like 0.5"), "{line}");
        let line = refused(&["run", "--times", "many"]);
        assert!(
            line.contains("--times") && line.contains("\"many\""),
            "{line}"
        );
        assert!(line.contains("whole number"), "{line}");
    }
}
