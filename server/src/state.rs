//! What every handler shares: the configuration requests are read against, and the metrics.
//!
//! Built from a [`ServerConfig`] alone so that the binary, the lab CLI and the tests make the same
//! origin; cloning is cheap because both halves are shared.

use std::sync::Arc;

use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// The router's state.
#[derive(Debug, Clone)]
pub struct AppState {
    config: Arc<ServerConfig>,
    metrics: Metrics,
}

impl AppState {
    /// A fresh origin: its own metrics, all at zero.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config: Arc::new(config),
            metrics: Metrics::new(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
