//! The Mesos agent's `/monitor/statistics` and `/containers` views of the CRI containers:
//! one entry per container, its pod as the executor (Mesos runs tasks under an executor
//! the way the CRI runs containers in a pod).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::containerizer::records::{ContainerRecord, PodRecord};
use crate::containerizer::{ContainerId, Containerizer};
use crate::isolators::chain::ResourceStatistics;

/// Mesos's `ResourceStatistics` JSON: every field named, `null` where this host or chain
/// cannot tell (disk figures without `disk/du`, or before its first measure).
fn statistics(s: &ResourceStatistics, c: &ContainerRecord, pod: &ResourceStatistics) -> Value {
    let cpus_limit = c
        .resources_in_force()
        .filter(|r| r.cpu_quota > 0 && r.cpu_period > 0)
        .map(|r| r.cpu_quota as f64 / r.cpu_period as f64);
    // The pod's interfaces are every container's: they share its network namespace.
    let net = |f: fn(&crate::isolators::network::cni::stats::InterfaceStats) -> u64| {
        (!pod.interfaces.is_empty()).then(|| {
            pod.interfaces
                .iter()
                .filter(|i| i.name != "lo")
                .map(f)
                .sum::<u64>()
        })
    };
    json!({
        "timestamp": s.timestamp_ns as f64 / 1e9,
        "cpus_user_time_secs": s.cpus_user_time_secs,
        "cpus_system_time_secs": s.cpus_system_time_secs,
        "cpus_limit": cpus_limit,
        "cpus_nr_periods": s.cpus_nr_periods,
        "cpus_nr_throttled": s.cpus_nr_throttled,
        "cpus_throttled_time_secs": s.cpus_throttled_time_secs,
        "mem_total_bytes": s.mem_total_bytes,
        "mem_limit_bytes": s.mem_limit_bytes,
        "mem_rss_bytes": s.mem_rss_bytes,
        "mem_cache_bytes": s.mem_cache_bytes,
        "mem_anon_bytes": s.mem_anon_bytes,
        "mem_file_bytes": s.mem_file_bytes,
        "mem_mapped_file_bytes": s.mem_mapped_file_bytes,
        "disk_used_bytes": s.disk_used_bytes,
        "disk_limit_bytes": s.disk_limit_bytes,
        "net_rx_bytes": net(|i| i.rx_bytes),
        "net_rx_packets": net(|i| i.rx_packets),
        "net_rx_errors": net(|i| i.rx_errors),
        "net_rx_dropped": net(|i| i.rx_dropped),
        "net_tx_bytes": net(|i| i.tx_bytes),
        "net_tx_packets": net(|i| i.tx_packets),
        "net_tx_errors": net(|i| i.tx_errors),
        "net_tx_dropped": net(|i| i.tx_dropped),
        "processes": s.processes,
        "threads": s.threads,
    })
}

fn executor(c: &ContainerRecord, pod: Option<&PodRecord>) -> serde_json::Map<String, Value> {
    let meta = pod.and_then(|p| p.metadata()).unwrap_or_default();
    let mut entry = serde_json::Map::new();
    entry.insert("container_id".into(), json!(c.id));
    entry.insert("executor_id".into(), json!(c.pod_id));
    entry.insert(
        "executor_name".into(),
        json!(format!("{}/{}", meta.namespace, meta.name)),
    );
    entry.insert("framework_id".into(), json!(meta.namespace));
    entry.insert(
        "source".into(),
        json!(c.metadata().map(|m| m.name).unwrap_or_default()),
    );
    entry
}

/// Each container with its figures and its pod's (network) figures, read at once.
async fn gather(
    containerizer: &dyn Containerizer,
) -> Vec<(
    ContainerRecord,
    Option<PodRecord>,
    ResourceStatistics,
    ResourceStatistics,
)> {
    let pods: HashMap<String, PodRecord> = containerizer
        .pods()
        .into_iter()
        .map(|p| (p.id().to_string(), p))
        .collect();
    let pod_usage = futures_util::future::join_all(pods.keys().map(|id| async move {
        let sandbox = ContainerId {
            value: id.clone(),
            parent: None,
        };
        (
            id.clone(),
            containerizer.usage(&sandbox).await.unwrap_or_default(),
        )
    }))
    .await
    .into_iter()
    .collect::<HashMap<_, _>>();
    let containers = containerizer.containers();
    let usage = futures_util::future::join_all(containers.iter().map(|c| {
        let nested = ContainerId {
            value: c.id.clone(),
            parent: Some(c.pod_id.clone()),
        };
        async move { containerizer.usage(&nested).await }
    }))
    .await;
    containers
        .into_iter()
        .zip(usage)
        // Removed while we looked: not listed.
        .filter_map(|(c, u)| {
            let u = u.ok()?;
            let pod = pods.get(&c.pod_id).cloned();
            let pod_u = pod_usage.get(&c.pod_id).cloned().unwrap_or_default();
            Some((c, pod, u, pod_u))
        })
        .collect()
}

/// `/monitor/statistics`.
pub async fn statistics_json(containerizer: &dyn Containerizer) -> Value {
    let entries: Vec<Value> = gather(containerizer)
        .await
        .iter()
        .map(|(c, pod, u, pod_u)| {
            let mut entry = executor(c, pod.as_ref());
            entry.insert("statistics".into(), statistics(u, c, pod_u));
            Value::Object(entry)
        })
        .collect();
    Value::Array(entries)
}

/// `/containers`: the same, with each container's status (its ids, the executor's pid,
/// the pod's IPs) as Mesos's `ContainerStatus`.
pub async fn containers_json(containerizer: &dyn Containerizer) -> Value {
    let entries: Vec<Value> = gather(containerizer)
        .await
        .iter()
        .map(|(c, pod, u, pod_u)| {
            let mut entry = executor(c, pod.as_ref());
            let ips: Vec<Value> = pod
                .as_ref()
                .and_then(|p| p.network.as_ref())
                .map(|n| n.pod_ips())
                .unwrap_or_default()
                .into_iter()
                .map(|ip| json!({"ip_address": ip.to_string()}))
                .collect();
            let state = c.cri_state(&c.exit());
            let status = json!({
                "container_id": {"value": c.id, "parent": {"value": c.pod_id}},
                "executor_pid": pod.as_ref().map(|p| p.supervisor_pid),
                "network_infos": [{"ip_addresses": ips}],
                "state": state.as_str_name(),
            });
            entry.insert("container_status".into(), status.clone());
            entry.insert("status".into(), status);
            entry.insert("statistics".into(), statistics(u, c, pod_u));
            Value::Object(entry)
        })
        .collect();
    Value::Array(entries)
}
