//! The CRI's stats messages from the containerizer's usage figures (Mesos's
//! `ResourceStatistics`), and the cpu rate kubelet wants beside the cumulative time.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_cri::v1 as cri;

use crate::containerizer::records::{ContainerRecord, PodRecord};
use crate::isolators::chain::ResourceStatistics;

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

/// The last cumulative cpu sample of each container and pod: `usage_nano_cores` is the
/// rate between two samples, as kubelet (and containerd) compute it.
#[derive(Debug, Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuRates {
    /// The rate since the previous sample of `id` (none for the first), and records this
    /// one.
    pub fn rate(&self, id: &str, timestamp_ns: i64, usage_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.insert(id.to_string(), (timestamp_ns, usage_ns));
        let (then, used) = previous?;
        let elapsed = timestamp_ns.checked_sub(then).filter(|e| *e > 0)?;
        let spent = usage_ns.checked_sub(used)?;
        Some((spent as u128 * 1_000_000_000 / elapsed as u128) as u64)
    }

    /// Forgets the ids that are gone.
    pub fn retain(&self, alive: impl Fn(&str) -> bool) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| alive(id));
    }
}

fn cpu(id: &str, s: &ResourceStatistics, rates: &CpuRates) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: s.timestamp_ns,
        usage_core_nano_seconds: value(s.cpu_usage_ns),
        usage_nano_cores: value(
            s.cpu_usage_ns
                .and_then(|u| rates.rate(id, s.timestamp_ns, u)),
        ),
    }
}

fn memory(s: &ResourceStatistics) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: s.timestamp_ns,
        working_set_bytes: value(s.mem_working_set_bytes),
        // As cAdvisor: what is left under the limit, when there is one.
        available_bytes: value(
            s.mem_limit_bytes
                .zip(s.mem_working_set_bytes)
                .map(|(l, w)| l.saturating_sub(w)),
        ),
        usage_bytes: value(s.mem_total_bytes),
        rss_bytes: value(s.mem_rss_bytes),
        page_faults: value(s.mem_page_faults),
        major_page_faults: value(s.mem_major_page_faults),
    }
}

/// `writable_fs`: the directory the container rootfses live under, as the writable
/// layer's filesystem id.
pub fn container_stats(
    c: &ContainerRecord,
    s: &ResourceStatistics,
    rates: &CpuRates,
    writable_fs: &str,
) -> cri::ContainerStats {
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.metadata(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: Some(cpu(&c.id, s, rates)),
        memory: Some(memory(s)),
        // disk/du's last measure of the writable layer (kubelet counts the logs itself);
        // none before the first or without the isolator.
        writable_layer: s.disk_writable_bytes.map(|bytes| cri::FilesystemUsage {
            timestamp: s.disk_measured_ns.unwrap_or(s.timestamp_ns),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: writable_fs.to_string(),
            }),
            used_bytes: value(Some(bytes)),
            inodes_used: value(s.disk_inodes_used),
        }),
        swap: None,
    }
}

pub fn pod_stats(
    pod: &PodRecord,
    s: &ResourceStatistics,
    containers: Vec<cri::ContainerStats>,
    rates: &CpuRates,
) -> cri::PodSandboxStats {
    let interface =
        |i: &crate::isolators::network::cni::stats::InterfaceStats| cri::NetworkInterfaceUsage {
            name: i.name.clone(),
            rx_bytes: value(Some(i.rx_bytes)),
            rx_errors: value(Some(i.rx_errors)),
            tx_bytes: value(Some(i.tx_bytes)),
            tx_errors: value(Some(i.tx_errors)),
        };
    let interfaces: Vec<cri::NetworkInterfaceUsage> = s
        .interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .map(interface)
        .collect();
    // The CNI default network's interface (kubelet names eth0 the default one).
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| interfaces.first())
        .cloned();
    let network = (!s.interfaces.is_empty()).then_some(cri::NetworkUsage {
        timestamp: s.timestamp_ns,
        default_interface,
        interfaces,
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id().to_string(),
            metadata: pod.metadata(),
            labels: pod.info.config.labels.clone(),
            annotations: pod.info.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(pod.id(), s, rates)),
            memory: Some(memory(s)),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: s.timestamp_ns,
                process_count: value(s.processes),
            }),
            containers,
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_between_two_samples() {
        let rates = CpuRates::default();
        assert_eq!(rates.rate("c", 1_000_000_000, 5_000), None);
        // Half a core over two seconds.
        assert_eq!(
            rates.rate("c", 3_000_000_000, 1_000_005_000),
            Some(500_000_000)
        );
        // A clock that did not move, or a counter that went back, gives no rate.
        assert_eq!(rates.rate("c", 3_000_000_000, 1_000_006_000), None);
        assert_eq!(rates.rate("c", 4_000_000_000, 10), None);
        rates.retain(|_| false);
        assert_eq!(rates.rate("c", 5_000_000_000, 20), None);
    }

    #[test]
    fn available_is_what_is_left_under_the_limit() {
        let s = ResourceStatistics {
            mem_limit_bytes: Some(1000),
            mem_working_set_bytes: Some(300),
            ..Default::default()
        };
        assert_eq!(memory(&s).available_bytes.unwrap().value, 700);
        let unlimited = ResourceStatistics {
            mem_working_set_bytes: Some(300),
            ..Default::default()
        };
        assert!(memory(&unlimited).available_bytes.is_none());
    }
}
