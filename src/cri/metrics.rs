//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor metric families kubelet
//! serves on `/metrics/cadvisor` when it takes them from the runtime
//! (`PodAndContainerStatsFromCRI`), filled from the same usage figures as the CRI stats.
//!
//! The label keys are the runtime's part only (`id`, `name`, `image` as CRI-O has them,
//! plus one per family such as `cpu` or `interface`): kubelet appends `namespace`, `pod`
//! and `container` itself and refuses a descriptor that already has them. Values are
//! whole numbers (the CRI's `UInt64Value`), so seconds are truncated as CRI-O and
//! containerd truncate them.

use k8s_cri::v1 as cri;

use crate::containerizer::records::{ContainerRecord, PodRecord};
use crate::isolators::chain::ResourceStatistics;
use crate::isolators::network::cni::stats::InterfaceStats;

const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

/// Whose figures a family has: a cgroup's (the container's, or the pod's own), or the
/// pod network namespace's interfaces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Cgroup,
    Network,
}

/// What one family reads: each value with its extra label's value (empty when the family
/// has no extra label).
type Values = fn(&ResourceStatistics, &str) -> Vec<(String, u64)>;

struct Family {
    name: &'static str,
    help: &'static str,
    extra: Option<&'static str>,
    kind: cri::MetricType,
    scope: Scope,
    values: Values,
}

fn one(v: Option<u64>) -> Vec<(String, u64)> {
    v.map(|v| (String::new(), v)).into_iter().collect()
}

fn secs(v: Option<f64>) -> Vec<(String, u64)> {
    one(v.filter(|s| s.is_finite() && *s >= 0.0).map(|s| s as u64))
}

fn per_interface(s: &ResourceStatistics, f: fn(&InterfaceStats) -> u64) -> Vec<(String, u64)> {
    s.interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .map(|i| (i.name.clone(), f(i)))
        .collect()
}

use cri::MetricType::{Counter, Gauge};

const FAMILIES: &[Family] = &[
    Family {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative cpu time consumed in seconds.",
        extra: Some("cpu"),
        kind: Counter,
        scope: Scope::Cgroup,
        values: |s, _| {
            s.cpu_usage_ns
                .map(|ns| ("total".to_string(), ns / 1_000_000_000))
                .into_iter()
                .collect()
        },
    },
    Family {
        name: "container_cpu_user_seconds_total",
        help: "Cumulative user cpu time consumed in seconds.",
        extra: None,
        kind: Counter,
        scope: Scope::Cgroup,
        values: |s, _| secs(s.cpus_user_time_secs),
    },
    Family {
        name: "container_cpu_system_seconds_total",
        help: "Cumulative system cpu time consumed in seconds.",
        extra: None,
        kind: Counter,
        scope: Scope::Cgroup,
        values: |s, _| secs(s.cpus_system_time_secs),
    },
    Family {
        name: "container_cpu_cfs_periods_total",
        help: "Number of elapsed enforcement period intervals.",
        extra: None,
        kind: Counter,
        scope: Scope::Cgroup,
        values: |s, _| one(s.cpus_nr_periods),
    },
    Family {
        name: "container_cpu_cfs_throttled_periods_total",
        help: "Number of throttled period intervals.",
        extra: None,
        kind: Counter,
        scope: Scope::Cgroup,
        values: |s, _| one(s.cpus_nr_throttled),
    },
    Family {
        name: "container_cpu_cfs_throttled_seconds_total",
        help: "Total time duration the container has been throttled.",
        extra: None,
        kind: Counter,
        scope: Scope::Cgroup,
        values: |s, _| secs(s.cpus_throttled_time_secs),
    },
    Family {
        name: "container_memory_usage_bytes",
        help: "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.mem_total_bytes),
    },
    Family {
        name: "container_memory_working_set_bytes",
        help: "Current working set in bytes.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.mem_working_set_bytes),
    },
    Family {
        name: "container_memory_rss",
        help: "Size of RSS in bytes.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.mem_rss_bytes),
    },
    Family {
        name: "container_memory_cache",
        help: "Number of bytes of page cache memory.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.mem_cache_bytes),
    },
    Family {
        name: "container_memory_mapped_file",
        help: "Size of memory mapped files in bytes.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.mem_mapped_file_bytes),
    },
    Family {
        name: "container_spec_memory_limit_bytes",
        help: "Memory limit for the container.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.mem_limit_bytes),
    },
    Family {
        name: "container_processes",
        help: "Number of processes running inside the container.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.processes),
    },
    Family {
        name: "container_threads",
        help: "Number of threads running inside the container.",
        extra: None,
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, _| one(s.threads),
    },
    Family {
        name: "container_fs_usage_bytes",
        help: "Number of bytes that are consumed by the container on this filesystem.",
        extra: Some("device"),
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, device| {
            s.disk_used_bytes
                .map(|b| (device.to_string(), b))
                .into_iter()
                .collect()
        },
    },
    Family {
        name: "container_fs_limit_bytes",
        help: "Number of bytes that can be consumed by the container on this filesystem.",
        extra: Some("device"),
        kind: Gauge,
        scope: Scope::Cgroup,
        values: |s, device| {
            s.disk_limit_bytes
                .map(|b| (device.to_string(), b))
                .into_iter()
                .collect()
        },
    },
    Family {
        name: "container_network_receive_bytes_total",
        help: "Cumulative count of bytes received.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.rx_bytes),
    },
    Family {
        name: "container_network_receive_packets_total",
        help: "Cumulative count of packets received.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.rx_packets),
    },
    Family {
        name: "container_network_receive_packets_dropped_total",
        help: "Cumulative count of packets dropped while receiving.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.rx_dropped),
    },
    Family {
        name: "container_network_receive_errors_total",
        help: "Cumulative count of errors encountered while receiving.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.rx_errors),
    },
    Family {
        name: "container_network_transmit_bytes_total",
        help: "Cumulative count of bytes transmitted.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.tx_bytes),
    },
    Family {
        name: "container_network_transmit_packets_total",
        help: "Cumulative count of packets transmitted.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.tx_packets),
    },
    Family {
        name: "container_network_transmit_packets_dropped_total",
        help: "Cumulative count of packets dropped while transmitting.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.tx_dropped),
    },
    Family {
        name: "container_network_transmit_errors_total",
        help: "Cumulative count of errors encountered while transmitting.",
        extra: Some("interface"),
        kind: Counter,
        scope: Scope::Network,
        values: |s, _| per_interface(s, |i| i.tx_errors),
    },
];

/// Every family this runtime fills, as ListMetricDescriptors answers them.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    FAMILIES
        .iter()
        .map(|f| cri::MetricDescriptor {
            name: f.name.into(),
            help: f.help.into(),
            label_keys: BASE_LABELS
                .iter()
                .copied()
                .chain(f.extra)
                .map(String::from)
                .collect(),
        })
        .collect()
}

/// Who the figures are of, as the base labels name it.
struct Subject<'a> {
    id: &'a str,
    name: &'a str,
    image: &'a str,
}

fn metrics(
    subject: &Subject<'_>,
    s: &ResourceStatistics,
    scopes: &[Scope],
    device: &str,
) -> Vec<cri::Metric> {
    let mut out = Vec::new();
    for family in FAMILIES.iter().filter(|f| scopes.contains(&f.scope)) {
        // disk/du's figures are a measure from its last round, not read now.
        let timestamp = if family.extra == Some("device") {
            s.disk_measured_ns.unwrap_or_default()
        } else {
            0
        };
        for (extra, value) in (family.values)(s, device) {
            let mut label_values = vec![
                subject.id.to_string(),
                subject.name.to_string(),
                subject.image.to_string(),
            ];
            if family.extra.is_some() {
                label_values.push(extra);
            }
            out.push(cri::Metric {
                name: family.name.into(),
                timestamp,
                metric_type: family.kind as i32,
                label_values,
                value: Some(cri::UInt64Value { value }),
            });
        }
    }
    out
}

/// One pod's metrics: its own cgroup's and its network's, then each container's that has
/// any (an exited container has no cgroup left to read).
pub fn pod_metrics(
    pod: &PodRecord,
    pod_usage: &ResourceStatistics,
    containers: &[(ContainerRecord, ResourceStatistics)],
    device: &str,
) -> cri::PodSandboxMetrics {
    let name = pod.metadata().map(|m| m.name).unwrap_or_default();
    let subject = Subject {
        id: pod.id(),
        name: &name,
        image: "",
    };
    let container_metrics = containers
        .iter()
        .filter_map(|(c, usage)| {
            let name = c.metadata().map(|m| m.name).unwrap_or_default();
            let image = c.image_spec().map(|i| i.image).unwrap_or_default();
            let subject = Subject {
                id: &c.id,
                name: &name,
                image: &image,
            };
            let metrics = metrics(&subject, usage, &[Scope::Cgroup], device);
            (!metrics.is_empty()).then(|| cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics,
            })
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: pod.id().to_string(),
        metrics: metrics(
            &subject,
            pod_usage,
            &[Scope::Cgroup, Scope::Network],
            device,
        ),
        container_metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_a_value_per_label_key_and_a_known_family() {
        let descriptors = descriptors();
        let s = ResourceStatistics {
            cpu_usage_ns: Some(2_500_000_000),
            cpus_user_time_secs: Some(1.75),
            mem_total_bytes: Some(4096),
            disk_used_bytes: Some(10),
            disk_measured_ns: Some(42),
            interfaces: vec![
                InterfaceStats {
                    name: "lo".into(),
                    rx_bytes: 1,
                    ..Default::default()
                },
                InterfaceStats {
                    name: "eth0".into(),
                    rx_bytes: 7,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let subject = Subject {
            id: "c1",
            name: "app",
            image: "busybox",
        };
        let all = metrics(&subject, &s, &[Scope::Cgroup, Scope::Network], "/var");
        for m in &all {
            let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
            assert!(!d.label_keys.iter().any(|k| k == "pod" || k == "namespace"));
        }
        let find = |name: &str| all.iter().find(|m| m.name == name).unwrap();
        let cpu = find("container_cpu_usage_seconds_total");
        assert_eq!(cpu.value.as_ref().unwrap().value, 2);
        assert_eq!(cpu.label_values, ["c1", "app", "busybox", "total"]);
        assert_eq!(cpu.metric_type, cri::MetricType::Counter as i32);
        assert_eq!(
            find("container_cpu_user_seconds_total")
                .value
                .as_ref()
                .unwrap()
                .value,
            1
        );
        let fs = find("container_fs_usage_bytes");
        assert_eq!(fs.timestamp, 42);
        assert_eq!(fs.label_values[3], "/var");
        // The loopback is no pod traffic.
        let rx: Vec<_> = all
            .iter()
            .filter(|m| m.name == "container_network_receive_bytes_total")
            .collect();
        assert_eq!(rx.len(), 1);
        assert_eq!(rx[0].label_values[3], "eth0");
        assert_eq!(rx[0].value.as_ref().unwrap().value, 7);
        // What this host could not tell is left out, not reported as zero.
        assert!(!all.iter().any(|m| m.name == "container_memory_rss"));
        // Container scope has no network figures of its own.
        assert!(
            !metrics(&subject, &s, &[Scope::Cgroup], "/var")
                .iter()
                .any(|m| m.name.starts_with("container_network"))
        );
    }
}
