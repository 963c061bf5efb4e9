//! Prometheus metrics (OpenMetrics text at `GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::pool::PoolStats;
use crate::result::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<StatusLabel, Counter>,
    run_seconds: Histogram,
    rejected: Family<ReasonLabel, Counter>,
    envs: Family<CacheLabel, Counter>,
    http: Family<CodeLabel, Counter>,
    queued: Gauge,
    running: Gauge,
    workers: Gauge,
    cancelled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kakoi");
        let runs = Family::<StatusLabel, Counter>::default();
        registry.register("runs", "Finished runs by result status", runs.clone());
        let run_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "run_duration_seconds",
            "Time from request to result of finished runs (queue, env, lint and run)",
            run_seconds.clone(),
        );
        let rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rejected_runs",
            "Run requests answered without running, by reason",
            rejected.clone(),
        );
        let envs = Family::<CacheLabel, Counter>::default();
        registry.register(
            "env_resolutions",
            "Environment lookups by cache result (hit, miss)",
            envs.clone(),
        );
        let http = Family::<CodeLabel, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP responses by status code",
            http.clone(),
        );
        let queued = Gauge::default();
        registry.register("queue_depth", "Runs waiting for a sandbox", queued.clone());
        let running = Gauge::default();
        registry.register("running", "Runs in progress", running.clone());
        let workers = Gauge::default();
        registry.register("workers", "Live launcher processes", workers.clone());
        let cancelled = Gauge::default();
        registry.register(
            "cancelled_runs",
            "Runs cancelled since start (client gone or shutdown)",
            cancelled.clone(),
        );
        Metrics {
            registry,
            runs,
            run_seconds,
            rejected,
            envs,
            http,
            queued,
            running,
            workers,
            cancelled,
        }
    }

    /// A run finished with `status` after `seconds`.
    pub fn record_run(&self, status: Status, seconds: f64) {
        let status = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.runs.get_or_create(&StatusLabel { status }).inc();
        self.run_seconds.observe(seconds);
    }

    /// A run request was answered with an error (`code` of the error body).
    pub fn record_rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// An environment was looked up.
    pub fn record_env(&self, cache_hit: bool) {
        let cache = if cache_hit { "hit" } else { "miss" };
        self.envs
            .get_or_create(&CacheLabel {
                cache: cache.into(),
            })
            .inc();
    }

    /// An HTTP response was sent.
    pub fn record_http(&self, code: u16) {
        self.http
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text, with the pool's gauges as of now.
    pub fn encode(&self, stats: &PoolStats) -> String {
        self.queued.set(stats.queued as i64);
        self.running.set(stats.running as i64);
        self.workers.set(stats.workers as i64);
        self.cancelled.set(stats.cancelled as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_text() {
        let m = Metrics::new();
        m.record_run(Status::Ok, 0.012);
        m.record_run(Status::Timeout, 1.0);
        m.record_run(Status::Ok, 0.02);
        m.record_rejected("queue_full");
        m.record_env(true);
        let text = m.encode(&PoolStats {
            queued: 3,
            ..PoolStats::default()
        });
        assert!(text.contains("kakoi_runs_total{status=\"ok\"} 2"), "{text}");
        assert!(
            text.contains("kakoi_runs_total{status=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.contains("kakoi_rejected_runs_total{reason=\"queue_full\"} 1"));
        assert!(text.contains("kakoi_env_resolutions_total{cache=\"hit\"} 1"));
        assert!(text.contains("kakoi_queue_depth 3"));
        assert!(text.contains("kakoi_run_duration_seconds_count 3"));
        assert!(text.ends_with("# EOF\n"));
    }
}
