//! Runtime control, for test suites that cut a stream at the moment they choose and for pages that
//! watch the proxy: the settings that may change while it runs (`settings`), the table of open
//! streams and their cuts (`streams`), the feed of what happens to them (`events`), and the admin
//! routes that expose all three as JSON (`api`), behind a bearer token when one is set.
//!
//! The request path only reads from here: the edge registers each stream and reports its events,
//! each layer reads the settings in force when a request begins.

pub mod api;
pub mod events;
pub mod settings;
pub mod streams;

use std::sync::Arc;

use events::Events;
use settings::{Live, Settings, Store};

use crate::metrics::Metrics;
use streams::Streams;

/// Everything the control API acts on; cheap to clone.
#[derive(Clone)]
pub struct Control {
    settings: Arc<Store>,
    pub streams: Streams,
    pub events: Events,
}

impl Control {
    /// Starts from `start`; the timer gauges of `metrics` follow every change.
    pub fn new(start: Settings, metrics: Metrics) -> Self {
        Self {
            settings: Arc::new(Store::new(start, metrics)),
            streams: Streams::default(),
            events: Events::default(),
        }
    }

    pub fn live(&self) -> Live {
        self.settings.live()
    }

    pub fn settings(&self) -> &Store {
        &self.settings
    }
}
