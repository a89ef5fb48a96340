//! What the control API may change while the proxy runs: the preset, the seven timers, the faults,
//! the buffering and compressing hops, and the cut style. Everything else (addresses, TLS, the
//! upstream set, the fault-header policy) is fixed at start, because changing it would mean new
//! listeners or new connections rather than a new value read at the next request.
//!
//! A change takes effect for what starts after it, never for what is already running, as a reload
//! of nginx leaves open streams to the old workers: each request reads the settings once, when it
//! arrives, and keeps them to its end; each client connection reads its `header`, `keepalive` and
//! `send` limits when it is accepted; `connect` applies to the next upstream connection made. An
//! open stream is ended at a chosen moment by a cut (`streams.rs`), not by a new timer.
//!
//! The settings live in a `watch` channel: reading them is a read lock and a copy, and every layer
//! holds a [`Live`] to read them from.

use std::fmt::Write as _;
use std::time::Duration;

use clap::ValueEnum;
use keepalive_common::duration::{display, parse_timer, TIMER_FORM};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::config::{Compression, ProxyConfig};
use crate::cut_style::CutStyle;
use crate::faults::compression::CompressionHop;
use crate::faults::value::{parse_buffering, parse_probability, parse_size, parse_switch};
use crate::faults::FaultSettings;
use crate::metrics::Metrics;
use crate::preset::{Preset, TimerSet};
use crate::timeouts::client_conn::ClientConnLimits;
use crate::timeouts::stream::StreamTimeouts;

/// Every setting the control API can change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub preset: Preset,
    pub timers: TimerSet,
    pub faults: FaultSettings,
    pub cut_style: CutStyle,
}

impl Settings {
    /// The settings `config` starts with.
    pub fn of(config: &ProxyConfig) -> Self {
        Self {
            preset: config.preset,
            timers: config.timers(),
            faults: config.faults(),
            cut_style: config.cut_style,
        }
    }

    pub fn stream_timeouts(&self) -> StreamTimeouts {
        StreamTimeouts {
            first_byte: self.timers.first_byte,
            idle: self.timers.idle,
            max_duration: self.timers.max_duration,
        }
    }

    pub fn client_conn_limits(&self) -> ClientConnLimits {
        ClientConnLimits {
            header: self.timers.header,
            keepalive: self.timers.keepalive,
            send: self.timers.send,
        }
    }

    /// Every setting by its key, in the form `set` accepts back: durations and sizes as text, `off`
    /// for a disabled one.
    pub fn to_json(self) -> Map<String, Value> {
        KEYS.iter()
            .map(|key| (key.name.to_owned(), (key.show)(&self)))
            .collect()
    }

    /// The keys whose values differ between `self` and `other`.
    pub fn differences(&self, other: &Settings) -> Vec<&'static str> {
        KEYS.iter()
            .filter(|key| (key.show)(self) != (key.show)(other))
            .map(|key| key.name)
            .collect()
    }

    /// These settings with `changes` applied, all or nothing. `preset` applies first, whatever its
    /// place: it sets every timer to the preset's, and timers named beside it win.
    pub fn with(&self, changes: &Map<String, Value>) -> Result<Settings, Rejected> {
        let mut next = *self;
        let mut ordered: Vec<(&String, &Value)> = changes.iter().collect();
        ordered.sort_by_key(|(name, _)| name.as_str() != "preset");
        for (name, value) in ordered {
            let Some(key) = KEYS.iter().find(|key| key.name == name) else {
                return Err(Rejected {
                    field: name.clone(),
                    reason: format!("{name:?} is not a setting that can be changed"),
                    accepts: key_names(),
                });
            };
            let rejected = |reason: String| Rejected {
                field: key.name.to_owned(),
                reason,
                accepts: key.form.to_owned(),
            };
            let text = text_of(value, key.form == SWITCH_FORM)
                .ok_or_else(|| rejected(format!("{value} is not a value of this setting")))?;
            (key.set)(&mut next, &text).map_err(rejected)?;
        }
        Ok(next)
    }
}

/// A change the control API refused, and why; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason} (accepts {accepts})")]
pub struct Rejected {
    /// The key at fault (`body` when the request is not a JSON object).
    pub field: String,
    /// Names the value and what is wrong with it.
    pub reason: String,
    pub accepts: String,
}

/// When a change to a setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Requests,
    Connections,
    UpstreamConnects,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "new requests",
            Self::Connections => "new client connections",
            Self::UpstreamConnects => "new upstream connections",
        }
    }
}

/// One setting: its key (also `keepalive-lab ctl set`'s), when a change applies, what it accepts,
/// and how it is read and shown.
pub struct Key {
    pub name: &'static str,
    pub scope: Scope,
    pub form: &'static str,
    set: fn(&mut Settings, &str) -> Result<(), String>,
    show: fn(&Settings) -> Value,
}

const SIZE_FORM: &str = "a size like 70, 1KiB or 64KiB; 0 or off disables";
const SWITCH_FORM: &str = "true or false (1 or 0)";

fn timer(value: Option<Duration>) -> Value {
    Value::from(value.map_or_else(|| "off".to_owned(), display))
}

fn size(value: Option<u64>) -> Value {
    value.map_or_else(|| Value::from("off"), Value::from)
}

fn choice<T: ValueEnum>(value: &str) -> Result<T, String> {
    T::from_str(value.trim(), true).map_err(|_| format!("{value:?} is not one of them"))
}

macro_rules! timer_key {
    ($name:literal, $field:ident, $scope:expr) => {
        Key {
            name: $name,
            scope: $scope,
            form: TIMER_FORM,
            set: |settings, value| {
                settings.timers.$field = parse_timer(value).map_err(|err| err.to_string())?;
                Ok(())
            },
            show: |settings| timer(settings.timers.$field),
        }
    };
}

macro_rules! fault_key {
    ($name:literal, $field:ident, $parse:expr, $form:expr, $show:expr) => {
        Key {
            name: $name,
            scope: Scope::Requests,
            form: $form,
            set: |settings, value| {
                settings.faults.$field = $parse(value).map_err(|err| err.to_string())?;
                Ok(())
            },
            show: |settings| $show(settings.faults.$field),
        }
    };
}

/// Every key, in the order `GET /config` shows them. `compression_ignore_no_transform` stays a
/// start-up setting: it only makes sense with a compressing hop an operator chose to misconfigure,
/// not as an experiment's switch.
pub static KEYS: [Key; 18] = [
    Key {
        name: "preset",
        scope: Scope::Requests,
        form: "nginx, haproxy, envoy, aws-alb, heroku, cloudflare, gcp or demo (sets every timer)",
        set: |settings, value| {
            let preset: Preset = choice(value)?;
            settings.preset = preset;
            settings.timers = preset.timers();
            Ok(())
        },
        show: |settings| Value::from(settings.preset.name()),
    },
    timer_key!("connect", connect, Scope::UpstreamConnects),
    timer_key!("first_byte", first_byte, Scope::Requests),
    timer_key!("idle", idle, Scope::Requests),
    timer_key!("max_duration", max_duration, Scope::Requests),
    timer_key!("header", header, Scope::Connections),
    timer_key!("keepalive", keepalive, Scope::Connections),
    timer_key!("send", send, Scope::Connections),
    fault_key!("latency", latency, parse_timer, TIMER_FORM, timer),
    fault_key!("bandwidth", bandwidth, parse_size, SIZE_FORM, size),
    fault_key!("limit_bytes", limit_bytes, parse_size, SIZE_FORM, size),
    fault_key!("reset_after", reset_after, parse_timer, TIMER_FORM, timer),
    fault_key!(
        "blackhole_after",
        blackhole_after,
        parse_timer,
        TIMER_FORM,
        timer
    ),
    fault_key!(
        "probability",
        probability,
        parse_probability,
        "a share of requests from 0 to 1, like 0.5",
        Value::from
    ),
    fault_key!(
        "buffering",
        buffering,
        parse_buffering,
        "a size up to 1MiB like 64KiB; 0 or off disables",
        size
    ),
    fault_key!(
        "buffering_ignore_header",
        buffering_ignore_header,
        parse_switch,
        SWITCH_FORM,
        Value::from
    ),
    Key {
        name: "compression",
        scope: Scope::Requests,
        form: "off or gzip",
        set: |settings, value| {
            let compression: Compression = choice(value)?;
            settings.faults.compression.enabled = compression == Compression::Gzip;
            Ok(())
        },
        show: |settings| {
            let CompressionHop { enabled, .. } = settings.faults.compression;
            Value::from(if enabled { "gzip" } else { "off" })
        },
    },
    Key {
        name: "cut_style",
        scope: Scope::Requests,
        form: "truncate, clean or reset",
        set: |settings, value| {
            settings.cut_style = choice(value)?;
            Ok(())
        },
        show: |settings| Value::from(settings.cut_style.as_str()),
    },
];

fn key_names() -> String {
    let mut names = String::from("one of ");
    for (index, key) in KEYS.iter().enumerate() {
        if index > 0 {
            names.push_str(", ");
        }
        let _ = write!(names, "{}", key.name);
    }
    names
}

/// A JSON value as the text a setting is parsed from: a number as written (bare seconds for a
/// timer, bytes for a size), a boolean for a switch only, `null` as `off`.
fn text_of(value: &Value, switch: bool) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(on) if switch => Some(if *on { "1" } else { "0" }.to_owned()),
        Value::Null => Some("off".to_owned()),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The settings in force, as each layer reads them when a request or a connection begins.
#[derive(Clone)]
pub struct Live(watch::Receiver<Settings>);

impl Live {
    /// Settings that never change: for a layer tested alone.
    #[cfg(test)]
    pub fn fixed(settings: Settings) -> Self {
        Self(watch::channel(settings).1)
    }

    pub fn now(&self) -> Settings {
        *self.0.borrow()
    }
}

/// The one writer of the settings, what they were at start (for `reset`), and the gauges that show
/// the timers in force, set under the same lock as the settings so that they never disagree.
pub struct Store {
    start: Settings,
    sender: watch::Sender<Settings>,
    metrics: Metrics,
}

impl Store {
    pub fn new(start: Settings, metrics: Metrics) -> Self {
        metrics.limits(&start.timers);
        Self {
            start,
            sender: watch::channel(start).0,
            metrics,
        }
    }

    pub fn live(&self) -> Live {
        Live(self.sender.subscribe())
    }

    pub fn now(&self) -> Settings {
        *self.sender.borrow()
    }

    pub fn start(&self) -> Settings {
        self.start
    }

    /// Applies `changes` atomically (a concurrent change cannot interleave with this one): the
    /// settings before and after.
    pub fn change(&self, changes: &Map<String, Value>) -> Result<(Settings, Settings), Rejected> {
        let mut outcome = None;
        self.sender.send_if_modified(|settings| {
            let before = *settings;
            match before.with(changes) {
                Ok(next) => {
                    self.metrics.limits(&next.timers);
                    *settings = next;
                    outcome = Some(Ok((before, next)));
                    next != before
                }
                Err(rejected) => {
                    outcome = Some(Err(rejected));
                    false
                }
            }
        });
        // `send_if_modified` always calls the closure.
        outcome.unwrap_or_else(|| Ok((self.now(), self.now())))
    }

    /// Back to the start: the settings before.
    pub fn reset(&self) -> Settings {
        let mut before = self.start;
        self.sender.send_modify(|settings| {
            before = *settings;
            *settings = self.start;
            self.metrics.limits(&self.start.timers);
        });
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            other => panic!("an object, not {other}"),
        }
    }

    fn start() -> Settings {
        Settings::of(&ProxyConfig::default())
    }

    #[test]
    fn a_change_sets_what_it_names_and_nothing_else() {
        let next = start()
            .with(&changes(
                serde_json::json!({"idle": "1s", "limit_bytes": 70, "cut_style": "reset"}),
            ))
            .expect("valid");
        assert_eq!(next.timers.idle, Some(Duration::from_secs(1)));
        assert_eq!(next.faults.limit_bytes, Some(70));
        assert_eq!(next.cut_style, CutStyle::Reset);
        let mut changed = next.differences(&start());
        changed.sort_unstable();
        assert_eq!(changed, ["cut_style", "idle", "limit_bytes"]);
    }

    #[test]
    fn a_bad_value_names_its_field_and_form_and_applies_nothing() {
        let store = Store::new(start(), Metrics::new());
        let rejected = store
            .change(&changes(serde_json::json!({"idle": "1s", "send": "soon"})))
            .expect_err("soon is no duration");
        assert_eq!(rejected.field, "send");
        assert!(rejected.reason.contains("\"soon\""), "{rejected}");
        assert!(rejected.accepts.contains("250ms"), "{rejected}");
        assert_eq!(store.now(), start(), "the valid idle was applied anyway");
    }

    #[test]
    fn an_unknown_key_lists_the_keys() {
        let rejected = start()
            .with(&changes(serde_json::json!({"idel": "1s"})))
            .expect_err("no such key");
        assert_eq!(rejected.field, "idel");
        assert!(rejected.accepts.contains("idle"), "{rejected}");
        assert!(rejected.accepts.contains("max_duration"), "{rejected}");
    }

    #[test]
    fn a_preset_sets_every_timer_and_timers_named_beside_it_win_whatever_the_order() {
        let mut map = Map::new();
        map.insert("idle".to_owned(), Value::from("2s"));
        map.insert("preset".to_owned(), Value::from("heroku"));
        let next = start().with(&map).expect("valid");
        assert_eq!(next.preset, Preset::Heroku);
        assert_eq!(next.timers.first_byte, Preset::Heroku.timers().first_byte);
        assert_eq!(next.timers.idle, Some(Duration::from_secs(2)));
    }

    #[test]
    fn what_is_shown_is_accepted_back() {
        let mut changed = start();
        changed.timers.idle = Some(Duration::from_millis(1500));
        changed.faults.bandwidth = Some(1024);
        changed.faults.compression.enabled = true;
        let shown = changed.to_json();
        assert_eq!(start().with(&shown).expect("its own form"), changed);
        assert_eq!(shown["idle"], "1.5s");
        assert_eq!(shown["max_duration"], "off");
    }

    #[test]
    fn a_boolean_is_a_value_of_switches_only() {
        let next = start()
            .with(&changes(
                serde_json::json!({"buffering_ignore_header": true}),
            ))
            .expect("a switch");
        assert!(next.faults.buffering_ignore_header);
        let rejected = start()
            .with(&changes(serde_json::json!({"idle": true})))
            .expect_err("a timer is no switch");
        assert_eq!(rejected.field, "idle");
    }

    #[test]
    fn numbers_are_seconds_and_bytes_and_null_is_off() {
        let next = start()
            .with(&changes(
                serde_json::json!({"idle": 2.5, "bandwidth": 100, "connect": null}),
            ))
            .expect("valid");
        assert_eq!(next.timers.idle, Some(Duration::from_millis(2500)));
        assert_eq!(next.faults.bandwidth, Some(100));
        assert_eq!(next.timers.connect, None);
    }

    #[test]
    fn reset_restores_the_start() {
        let store = Store::new(start(), Metrics::new());
        let live = store.live();
        store
            .change(&changes(serde_json::json!({"idle": "1s"})))
            .expect("valid");
        assert_eq!(live.now().timers.idle, Some(Duration::from_secs(1)));
        store.reset();
        assert_eq!(live.now(), start());
    }
}
