//! What every handler shares: the configuration requests are read against, the metrics, the job
//! store and where the drain stands.
//!
//! Built from a [`ServerConfig`] alone so that the binary, the lab CLI and the tests make the same
//! origin; cloning is cheap because every part is shared.

use std::sync::Arc;

use crate::config::ServerConfig;
use crate::drain::DrainState;
use crate::jobs::{Jobs, Retention, StoreError};
use crate::metrics::Metrics;

/// The router's state.
#[derive(Debug, Clone)]
pub struct AppState {
    config: Arc<ServerConfig>,
    metrics: Metrics,
    jobs: Jobs,
    drain: DrainState,
}

impl AppState {
    /// A fresh origin: its own metrics, all at zero, and the job store `config.backend()`
    /// (opened, not yet resumed: see [`Jobs::resume`]).
    pub async fn new(config: ServerConfig) -> Result<Self, StoreError> {
        let metrics = Metrics::new();
        let jobs = Jobs::open(
            &config.backend(),
            config.job_lease,
            Retention {
                max_age: config.job_retention,
                max_jobs: config.job_max,
            },
            config.jobs_per_client,
            metrics.jobs(),
        )
        .await?;
        Ok(Self {
            config: Arc::new(config),
            metrics,
            jobs,
            drain: DrainState::never(),
        })
    }

    /// The same origin, its drain read from the accept loop that serves it ([`crate::serve`]).
    pub(crate) fn draining_with(self, drain: DrainState) -> Self {
        Self { drain, ..self }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    pub fn drain(&self) -> &DrainState {
        &self.drain
    }
}
