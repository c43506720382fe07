//! The `[otlp]` section of the server's config. The gRPC listen address is `server.otlp_grpc_addr`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How OTLP data is mapped onto Lumen's streams and series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Resource attributes that name a log stream and become its labels (dots turned into underscores:
    /// `service.name` → `service_name`). Every other attribute becomes a field of the entry.
    pub stream_attributes: Vec<String>,
    /// Resource attributes copied onto every metric series of the resource, besides `job` and `instance`
    /// (which come from `service.namespace`/`service.name` and `service.instance.id`). All resource
    /// attributes are on `target_info` either way.
    pub promote_resource_attributes: Vec<String>,
    /// Finest scale at which exponential histograms are stored as classic `le` buckets: finer data points
    /// are merged down to it, so 2 means at most 4 buckets per power of two.
    pub exponential_histogram_max_scale: i32,
    /// How long the running total of a delta series is kept without a new point. A series seen again
    /// after that (or after a restart) starts again from zero, which PromQL reads as a counter reset.
    #[serde(with = "store::config::duration")]
    pub delta_state_ttl: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            stream_attributes: DEFAULT_STREAM_ATTRIBUTES.iter().map(|s| s.to_string()).collect(),
            promote_resource_attributes: Vec::new(),
            exponential_histogram_max_scale: 2,
            delta_state_ttl: Duration::from_secs(3600),
        }
    }
}

/// The resource attributes that name a source, as Loki's OTLP endpoint indexes them by default.
pub const DEFAULT_STREAM_ATTRIBUTES: &[&str] = &[
    "service.name",
    "service.namespace",
    "service.instance.id",
    "deployment.environment",
    "deployment.environment.name",
    "cloud.region",
    "cloud.availability_zone",
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "container.name",
    "k8s.replicaset.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
];

impl OtlpConfig {
    /// Checks what serde cannot.
    ///
    /// # Errors
    /// A message naming the key and what to do.
    pub fn validate(&self) -> Result<(), String> {
        if !(-10..=20).contains(&self.exponential_histogram_max_scale) {
            return Err(format!(
                "otlp.exponential_histogram_max_scale = {} is outside -10..=20, the scales OTLP defines",
                self.exponential_histogram_max_scale
            ));
        }
        for key in self.stream_attributes.iter().chain(&self.promote_resource_attributes) {
            if crate::naming::label_name(key).is_none() {
                return Err(format!("otlp: attribute {key:?} cannot become a label name; remove it"));
            }
        }
        if self.delta_state_ttl.is_zero() {
            return Err("otlp.delta_state_ttl must be more than zero, e.g. \"1h\"".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        OtlpConfig::default().validate().unwrap();
        let bad = OtlpConfig { exponential_histogram_max_scale: 21, ..OtlpConfig::default() };
        assert!(bad.validate().unwrap_err().contains("otlp.exponential_histogram_max_scale = 21"));
        let bad = OtlpConfig { stream_attributes: vec!["...".into()], ..OtlpConfig::default() };
        assert!(bad.validate().unwrap_err().contains("\"...\" cannot become a label name"));
        let bad = OtlpConfig { delta_state_ttl: Duration::ZERO, ..OtlpConfig::default() };
        assert!(bad.validate().unwrap_err().contains("delta_state_ttl"));
        let parsed: OtlpConfig =
            toml::from_str("delta_state_ttl = \"30m\"\npromote_resource_attributes = [\"k8s.cluster.name\"]").unwrap();
        assert_eq!(parsed.delta_state_ttl, Duration::from_secs(1800));
        assert!(toml::from_str::<OtlpConfig>("unknown = 1").is_err(), "unknown keys are refused");
    }
}
