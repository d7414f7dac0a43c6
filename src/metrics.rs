//! The daemon's own counters, for `/metrics` (Prometheus text format 0.0.4).
//!
//! One process-wide registry: the counters are bumped where things happen (a gRPC call
//! ends, a blob chunk lands, a CNI plugin exits, an OOM kill is read) by modules that
//! otherwise share nothing, and a scrape reads them all. Atomics only: nothing here
//! blocks or allocates on the hot paths but the first call of a (method, code) pair.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 16],
    count: AtomicU64,
    /// Microseconds, so that the sum stays an integer atomic.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// (gRPC method, status code) → calls.
    rpc_calls: Mutex<BTreeMap<(String, String), u64>>,
    /// gRPC method → latency.
    rpc_latency: Mutex<BTreeMap<String, &'static Histogram>>,
    pub image_bytes_pulled: AtomicU64,
    pub oom_kills: AtomicU64,
    /// Fetcher cache requests served by an entry (downloaded or being downloaded).
    pub fetcher_cache_hits: AtomicU64,
    /// Fetcher cache requests that made a new entry.
    pub fetcher_cache_misses: AtomicU64,
    pub fetcher_cache_evictions: AtomicU64,
    /// Bytes the fetcher cache holds or has reserved now.
    pub fetcher_cache_bytes: AtomicU64,
    /// Bytes the fetcher read from URIs' sources (http(s), host files).
    pub fetcher_bytes_fetched: AtomicU64,
    /// (plugin type, CNI command) → plugin run time.
    cni_plugin: Mutex<BTreeMap<(String, String), &'static Histogram>>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// A figure of the moment: name, help text, and its values by label set.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, u64)>);

/// A histogram that lives as long as the process (one per label set, a handful).
fn histogram_for<K: Ord + Clone>(
    map: &Mutex<BTreeMap<K, &'static Histogram>>,
    key: &K,
) -> &'static Histogram {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = map.get(key) {
        return h;
    }
    let h: &'static Histogram = Box::leak(Box::default());
    map.insert(key.clone(), h);
    h
}

/// Prometheus label values: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// One finished gRPC call (`method`: the path, e.g. `/runtime.v1.RuntimeService/Version`).
    pub fn rpc(&self, method: &str, code: &str, elapsed: Duration) {
        *self
            .rpc_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method.to_string(), code.to_string()))
            .or_default() += 1;
        histogram_for(&self.rpc_latency, &method.to_string()).observe(elapsed);
    }

    pub fn cni_plugin(&self, plugin: &str, command: &str, elapsed: Duration) {
        histogram_for(&self.cni_plugin, &(plugin.to_string(), command.to_string()))
            .observe(elapsed);
    }

    /// The text exposition; `gauges` are figures of the moment (pods by state, ...), each
    /// `(name, help, [(labels, value)])`.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cri_mesos_grpc_requests_total CRI calls served, by method and gRPC status code.\n# TYPE cri_mesos_grpc_requests_total counter"
        );
        for ((method, code), n) in self
            .rpc_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "cri_mesos_grpc_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
                escape(method),
                escape(code)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cri_mesos_grpc_request_duration_seconds Time to serve a CRI call, by method.\n# TYPE cri_mesos_grpc_request_duration_seconds histogram"
        );
        for (method, h) in self
            .rpc_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.render(
                &mut out,
                "cri_mesos_grpc_request_duration_seconds",
                &format!("method=\"{}\"", escape(method)),
            );
        }
        let _ = writeln!(
            out,
            "# HELP cri_mesos_image_pulled_bytes_total Image blob bytes downloaded from registries.\n# TYPE cri_mesos_image_pulled_bytes_total counter\ncri_mesos_image_pulled_bytes_total {}",
            self.image_bytes_pulled.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cri_mesos_oom_kills_total Containers found OOM-killed.\n# TYPE cri_mesos_oom_kills_total counter\ncri_mesos_oom_kills_total {}",
            self.oom_kills.load(Ordering::Relaxed)
        );
        for (name, kind, help, value) in [
            (
                "cri_mesos_fetcher_cache_hits_total",
                "counter",
                "Fetcher cache requests served by a cached (or downloading) entry.",
                &self.fetcher_cache_hits,
            ),
            (
                "cri_mesos_fetcher_cache_misses_total",
                "counter",
                "Fetcher cache requests that had to download.",
                &self.fetcher_cache_misses,
            ),
            (
                "cri_mesos_fetcher_cache_evictions_total",
                "counter",
                "Fetcher cache entries evicted to make room.",
                &self.fetcher_cache_evictions,
            ),
            (
                "cri_mesos_fetcher_cache_bytes",
                "gauge",
                "Bytes the fetcher cache holds or has reserved.",
                &self.fetcher_cache_bytes,
            ),
            (
                "cri_mesos_fetcher_fetched_bytes_total",
                "counter",
                "Bytes the fetcher read from URIs (http(s) and host files).",
                &self.fetcher_bytes_fetched,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cri_mesos_cni_plugin_duration_seconds Run time of CNI plugins, by plugin and command.\n# TYPE cri_mesos_cni_plugin_duration_seconds histogram"
        );
        for ((plugin, command), h) in self
            .cni_plugin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.render(
                &mut out,
                "cri_mesos_cni_plugin_duration_seconds",
                &format!(
                    "plugin=\"{}\",command=\"{}\"",
                    escape(plugin),
                    escape(command)
                ),
            );
        }
        for (name, help, values) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in values {
                let braces = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{labels}}}")
                };
                let _ = writeln!(out, "{name}{braces} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.rpc("/a", "OK", Duration::from_millis(3));
        m.rpc("/a", "OK", Duration::from_millis(300));
        m.rpc("/a\"b", "NotFound", Duration::from_secs(500));
        let text = m.render(&[("g", "a gauge", vec![("state=\"x\"".into(), 2)])]);
        assert!(text.contains("cri_mesos_grpc_requests_total{method=\"/a\",code=\"OK\"} 2"));
        assert!(text.contains("method=\"/a\\\"b\""), "{text}");
        assert!(text.contains(
            "cri_mesos_grpc_request_duration_seconds_bucket{method=\"/a\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "cri_mesos_grpc_request_duration_seconds_bucket{method=\"/a\",le=\"0.5\"} 2"
        ));
        // Past the last bucket: only in +Inf and the count.
        assert!(text.contains(
            "cri_mesos_grpc_request_duration_seconds_bucket{method=\"/a\\\"b\",le=\"120\"} 0"
        ));
        assert!(text.contains(
            "cri_mesos_grpc_request_duration_seconds_bucket{method=\"/a\\\"b\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains("g{state=\"x\"} 2"));
    }
}
