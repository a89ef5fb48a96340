//! On/off settings. On the command line a switch is a plain flag (`--buffering-ignore-header`), or takes its
//! value after `=` (`--buffering-ignore-header=false`) to turn off one that is on by default; in an env var,
//! where there is no bare flag, it takes the words compose files and systemd units use.

/// The accepted form, quoted in every error.
pub const SWITCH_FORM: &str = "1, 0, true, false, yes, no, on or off";

/// Why a switch could not be read; its `Display` names the value and the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not on or off: expected {SWITCH_FORM}")]
pub struct SwitchError {
    value: String,
}

/// Parses `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`, in any case.
pub fn parse_switch(value: &str) -> Result<bool, SwitchError> {
    let word = value.trim().to_ascii_lowercase();
    match word.as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(SwitchError {
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_words_read_as_on_and_off() {
        for on in ["1", "true", "TRUE", "yes", "On", " on "] {
            assert_eq!(parse_switch(on), Ok(true), "{on}");
        }
        for off in ["0", "false", "False", "no", "OFF"] {
            assert_eq!(parse_switch(off), Ok(false), "{off}");
        }
    }

    #[test]
    fn anything_else_is_named_with_the_accepted_form() {
        for bad in ["", "2", "enabled", "t"] {
            let err = parse_switch(bad).expect_err(bad).to_string();
            assert_eq!(
                err,
                format!("{bad:?} is not on or off: expected {SWITCH_FORM}")
            );
        }
    }
}
