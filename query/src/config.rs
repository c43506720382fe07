//! The `[query]` section of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits of the query endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// A query running longer than this is cancelled and answered with an error.
    #[serde(with = "store::config::duration")]
    pub timeout: Duration,
    /// Most rows a SQL answer carries; more are cut off and the answer says `"truncated": true`.
    pub sql_max_rows: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig { timeout: Duration::from_secs(60), sql_max_rows: 100_000 }
    }
}
