//! `PROXY_PRESET` resolves to exactly the values the README's preset table promises, preset by
//! preset and timer by timer, so the table users read and the code that runs cannot drift apart.

use std::time::Duration;

use keepalive_proxy::{Preset, TimerSet};

/// The README's row for `preset`: the seven timer cells, in the table's column order.
fn readme_row(readme: &str, preset: Preset) -> Vec<String> {
    let start = format!("| `{}`", preset.name());
    let row = readme
        .lines()
        .find(|line| line.starts_with(&start))
        .unwrap_or_else(|| panic!("README has no preset row starting {start:?}"));
    row.split('|')
        .skip(2)
        .take(7)
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// `60 s` -> 60 seconds, `off` -> no timer.
fn cell_value(cell: &str) -> Option<Duration> {
    if cell == "off" {
        return None;
    }
    let seconds = cell
        .strip_suffix(" s")
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("README cell {cell:?} is neither `N s` nor `off`"));
    Some(Duration::from_secs(seconds))
}

#[test]
fn presets_resolve_to_the_readme_table_values() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    for preset in Preset::ALL {
        let cells = readme_row(&readme, preset);
        let documented = TimerSet {
            connect: cell_value(&cells[0]),
            first_byte: cell_value(&cells[1]),
            idle: cell_value(&cells[2]),
            max_duration: cell_value(&cells[3]),
            header: cell_value(&cells[4]),
            keepalive: cell_value(&cells[5]),
            send: cell_value(&cells[6]),
        };
        assert_eq!(
            preset.timers(),
            documented,
            "PROXY_PRESET={} differs from its README row {cells:?}",
            preset.name()
        );
    }
}
