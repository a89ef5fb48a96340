//! One scenario's run as a picture: a time axis, a lane per party (client, origin, proxy), the
//! chunks that arrived (poem lines tall, heartbeats as small dots), and the moments that matter (the
//! cut, the reset, the origin learning its client is gone). Plain SVG written by hand: a few shapes
//! on a line do not need a plotting library, and the output opens in any browser.

use std::fmt::Write as _;
use std::time::Duration;

/// What happened at one moment, and how it is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A body chunk with content.
    Chunk,
    /// A heartbeat chunk.
    Heartbeat,
    /// Response headers arrived.
    Headers,
    /// The stream ended properly.
    End,
    /// The stream was cut: truncated or reset.
    Cut,
    /// Something done to the experiment (a kill, a restart) or seen by a party.
    Note,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub mark: Mark,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Lane {
    pub name: String,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub title: String,
    pub lanes: Vec<Lane>,
}

const WIDTH: f64 = 960.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const LANE: f64 = 70.0;
/// About what fits the width at the title's size.
const TITLE_CHARS: usize = 90;

impl Timeline {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            lanes: Vec::new(),
        }
    }

    /// The lane called `name`, added at the bottom the first time.
    pub fn lane(&mut self, name: &str) -> &mut Lane {
        let index = match self.lanes.iter().position(|lane| lane.name == name) {
            Some(index) => index,
            None => {
                self.lanes.push(Lane {
                    name: name.to_owned(),
                    events: Vec::new(),
                });
                self.lanes.len() - 1
            }
        };
        &mut self.lanes[index]
    }

    fn end(&self) -> Duration {
        self.lanes
            .iter()
            .flat_map(|lane| lane.events.iter().map(|event| event.at))
            .max()
            .unwrap_or_default()
    }

    pub fn to_svg(&self) -> String {
        let span = nice_span(self.end());
        let plot = WIDTH - LEFT - RIGHT;
        let x = |at: Duration| LEFT + plot * at.as_secs_f64() / span.as_secs_f64();
        let title = wrap(&self.title, TITLE_CHARS);
        let top = TOP + 18.0 * (title.len().saturating_sub(1)) as f64;
        let height = top + LANE * self.lanes.len() as f64 + 40.0;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (index, line) in title.iter().enumerate() {
            let _ = writeln!(
                svg,
                r#"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
                24.0 + 18.0 * index as f64,
                escape(line)
            );
        }
        let axis_y = top + LANE * self.lanes.len() as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#444"/>"##,
            WIDTH - RIGHT
        );
        let step = tick_step(span);
        let mut tick = Duration::ZERO;
        while tick <= span {
            let tx = x(tick);
            let _ = writeln!(
                svg,
                r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{axis_y}" stroke="#eee"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}s</text>"##,
                axis_y + 16.0,
                trim_float(tick.as_secs_f64())
            );
            tick += step;
        }
        for (index, lane) in self.lanes.iter().enumerate() {
            let y = top + LANE * index as f64 + LANE / 2.0;
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{y:.1}" text-anchor="end" dominant-baseline="middle" font-weight="bold">{}</text><line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ccc"/>"##,
                LEFT - 10.0,
                escape(&lane.name),
                WIDTH - RIGHT
            );
            let mut label_row = 0usize;
            for event in &lane.events {
                let ex = x(event.at);
                let title = format!("{:.3}s {}", event.at.as_secs_f64(), event.label);
                let shape = match event.mark {
                    Mark::Chunk => format!(
                        r##"<rect class="chunk" x="{:.1}" y="{:.1}" width="3" height="24" fill="#2b6cb0"><title>{}</title></rect>"##,
                        ex - 1.5,
                        y - 12.0,
                        escape(&title)
                    ),
                    Mark::Heartbeat => format!(
                        r##"<circle class="heartbeat" cx="{ex:.1}" cy="{y:.1}" r="2.5" fill="#999"><title>{}</title></circle>"##,
                        escape(&title)
                    ),
                    Mark::Headers => format!(
                        r##"<path class="headers" d="M{ex:.1} {:.1} l6 8 l-12 0 z" fill="#2f855a"><title>{}</title></path>"##,
                        y - 18.0,
                        escape(&title)
                    ),
                    Mark::End => format!(
                        r##"<rect class="end" x="{:.1}" y="{:.1}" width="4" height="32" fill="#2f855a"><title>{}</title></rect>"##,
                        ex - 2.0,
                        y - 16.0,
                        escape(&title)
                    ),
                    Mark::Cut => format!(
                        r##"<path class="cut" d="M{:.1} {:.1} l14 14 m0 -14 l-14 14" stroke="#c53030" stroke-width="3"><title>{}</title></path>"##,
                        ex - 7.0,
                        y - 7.0,
                        escape(&title)
                    ),
                    Mark::Note => format!(
                        r##"<line class="note" x1="{ex:.1}" y1="{:.1}" x2="{ex:.1}" y2="{:.1}" stroke="#d69e2e" stroke-width="2" stroke-dasharray="4 3"><title>{}</title></line>"##,
                        y - 20.0,
                        y + 20.0,
                        escape(&title)
                    ),
                };
                svg.push_str(&shape);
                svg.push('\n');
                // Only the marks that tell the story get a visible label, staggered so they do not
                // overlap; chunks and heartbeats keep theirs as a tooltip.
                if matches!(
                    event.mark,
                    Mark::Cut | Mark::End | Mark::Note | Mark::Headers
                ) && !event.label.is_empty()
                {
                    let ly = y + 22.0 + 12.0 * (label_row % 2) as f64;
                    label_row += 1;
                    let anchor = if ex > WIDTH - 250.0 { "end" } else { "start" };
                    let _ = writeln!(
                        svg,
                        r##"<text x="{ex:.1}" y="{ly:.1}" text-anchor="{anchor}" fill="#333">{}</text>"##,
                        escape(&event.label)
                    );
                }
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// `text` in lines of at most `width` characters, broken between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// The axis's length: the last event, rounded up to a tick, never zero.
fn nice_span(end: Duration) -> Duration {
    let end = end.max(Duration::from_millis(100));
    let step = tick_step(end);
    let steps = (end.as_secs_f64() / step.as_secs_f64()).ceil().max(1.0);
    step.mul_f64(steps)
}

/// A tick every 1, 2 or 5 times a power of ten, about ten ticks along `span`.
fn tick_step(span: Duration) -> Duration {
    let rough = span.as_secs_f64() / 10.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * power);
    Duration::from_secs_f64(step)
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(millis: u64, mark: Mark, label: &str) -> Event {
        Event {
            at: Duration::from_millis(millis),
            mark,
            label: label.to_owned(),
        }
    }

    #[test]
    fn every_event_is_drawn_once_on_its_lane() {
        let mut timeline = Timeline::new("idle cut <500ms>");
        timeline.lane("client").events = vec![
            event(0, Mark::Headers, "200"),
            event(2, Mark::Chunk, "line"),
            event(200, Mark::Heartbeat, " "),
            event(400, Mark::Heartbeat, " "),
            event(503, Mark::Cut, "truncated"),
        ];
        timeline.lane("origin").events = vec![event(505, Mark::Note, "client gone")];
        let svg = timeline.to_svg();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="chunk""#).count(), 1);
        assert_eq!(svg.matches(r#"class="heartbeat""#).count(), 2);
        assert_eq!(svg.matches(r#"class="cut""#).count(), 1);
        assert_eq!(svg.matches(r#"class="note""#).count(), 1);
        assert!(svg.contains("idle cut &lt;500ms&gt;"), "titles are escaped");
        assert!(!svg.contains("<500ms>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn long_titles_wrap_between_words() {
        assert_eq!(wrap("a bb ccc", 4), vec!["a bb", "ccc"]);
        assert_eq!(wrap("short", 100), vec!["short"]);
    }

    #[test]
    fn the_axis_ends_on_a_round_tick_past_the_last_event() {
        assert_eq!(
            nice_span(Duration::from_millis(503)),
            Duration::from_millis(600)
        );
        assert_eq!(tick_step(Duration::from_secs(12)), Duration::from_secs(2));
        assert_eq!(nice_span(Duration::ZERO), Duration::from_millis(100));
    }
}
