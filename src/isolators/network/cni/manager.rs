//! The pod side of `network/cni`: attaching a sandbox's network namespace to its networks
//! when it runs and detaching it when it stops, with Mesos's checkpoints under
//! `<work_dir>/isolators/network/cni/<pod-id>/` (`--network_cni_root_dir_persist`, the
//! default: it survives a reboot, so a pod the reboot ended still gets its DEL and its IPs
//! back), else `<runtime_dir>/isolators/network/cni/<pod-id>/`; the namespace is always
//! pinned under the runtime dir:
//!
//! ```text
//! ns                               the pinned network namespace (`ip netns`-usable)
//! _pod.json                        networks in attach order + the arguments plugins got
//! <network>/network.conf           the config used, so DEL works after it left the dir
//! <network>/<ifname>/network.info  the ADD result (DEL's and CHECK's prevResult)
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::CniError;
use super::config::{self, ConfigStore, NetworkList};
use super::invoke::{Invoker, RuntimeArgs, Target};
use super::result::{CniResult, Dns};
use super::stats::{self, InterfaceStats};
use crate::launcher::namespaces;

const POD_CHECKPOINT: &str = "_pod.json";
const NETWORK_CONF: &str = "network.conf";
const NETWORK_INFO: &str = "network.info";
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// What a pod got from its networks; kept in the pod's record for its status and files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub networks: Vec<NetworkStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub ifname: String,
    pub result: CniResult,
}

impl PodNetwork {
    /// The pod IPs as the CRI reports them: those of the first network (eth0), at most one
    /// per family (the API server refuses more), the first one first.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in self
            .networks
            .first()
            .map(|n| n.result.pod_ips())
            .unwrap_or_default()
        {
            if !ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
                ips.push(ip);
            }
        }
        ips
    }

    /// DNS settings from the first network whose result has some.
    pub fn dns(&self) -> Option<&Dns> {
        self.networks
            .iter()
            .map(|n| &n.result.dns)
            .find(|d| !d.is_empty())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PodCheckpoint {
    networks: Vec<Joined>,
    args: RuntimeArgs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Joined {
    name: String,
    ifname: String,
}

/// The `network/cni` isolator's part of the agent flags (`--network_cni_*`).
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// The embedded default network's file is kept under it.
    pub work_dir: PathBuf,
    /// Pinned network namespaces go under it (and the checkpoints, unless `persist`).
    pub runtime_dir: PathBuf,
    /// `--network_cni_root_dir_persist`: checkpoints under the work dir, so the DEL after
    /// a reboot still knows each pod's network.
    pub persist: bool,
    pub config_dir: PathBuf,
    pub plugins_dirs: Vec<PathBuf>,
    pub plugin_timeout: std::time::Duration,
    /// With an empty config dir, use the embedded bridge network.
    pub default_network: bool,
    pub default_subnet: String,
}

impl CniConfig {
    pub fn from_flags(flags: &crate::flags::Flags) -> CniConfig {
        CniConfig {
            work_dir: flags.work_dir.clone(),
            runtime_dir: flags.runtime_dir.clone(),
            persist: flags.network_cni_root_dir_persist,
            config_dir: flags.network_cni_config_dir.clone(),
            plugins_dirs: flags.network_cni_plugins_dir.clone(),
            plugin_timeout: flags.network_cni_plugin_timeout,
            default_network: flags.network_cni_default,
            default_subnet: flags.network_cni_default_subnet.clone(),
        }
    }
}

/// The CNI networks of pods: configs, plugin calls and checkpoints.
#[derive(Debug)]
pub struct CniManager {
    root: PathBuf,
    /// The root of the other `--network_cni_root_dir_persist` setting: a pod attached by a
    /// daemon that had it is still found there.
    other_root: PathBuf,
    /// Where network namespaces are pinned: always the runtime dir (a pin cannot outlive
    /// a reboot anyway; the DEL after one needs only the checkpoints).
    ns_root: PathBuf,
    configs: ConfigStore,
    invoker: Invoker,
    /// The node's pod CIDR as pushed by kubelet (UpdateRuntimeConfig).
    pod_cidr: RwLock<Option<String>>,
}

impl CniManager {
    pub fn new(config: &CniConfig) -> Self {
        let default_file = config.default_network.then(|| {
            config
                .work_dir
                .join("isolators/network/cni")
                .join(format!("{}.conflist", config::DEFAULT_NETWORK))
        });
        let (persistent, volatile) = (
            config.work_dir.join("isolators/network/cni"),
            config.runtime_dir.join("isolators/network/cni"),
        );
        let (root, other_root) = if config.persist {
            (persistent, volatile)
        } else {
            (volatile, persistent)
        };
        CniManager {
            ns_root: config.runtime_dir.join("isolators/network/cni"),
            root,
            other_root,
            configs: ConfigStore::new(
                config.config_dir.clone(),
                default_file,
                config.default_subnet.clone(),
            ),
            invoker: Invoker::new(config.plugins_dirs.clone(), config.plugin_timeout),
            pod_cidr: RwLock::new(None),
        }
    }

    /// Where a pod's network namespace is pinned.
    pub fn netns_path(&self, pod_id: &str) -> PathBuf {
        self.ns_root.join(pod_id).join("ns")
    }

    fn pod_dir(&self, pod_id: &str) -> PathBuf {
        let dir = self.root.join(pod_id);
        let other = self.other_root.join(pod_id);
        // Under the runtime root the directory also holds the netns pin: only a
        // checkpoint says the pod was attached there.
        if !dir.exists() && other.join(POD_CHECKPOINT).exists() {
            return other;
        }
        dir
    }

    pub fn pod_cidr(&self) -> Option<String> {
        self.pod_cidr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_pod_cidr(&self, cidr: Option<String>) {
        *self.pod_cidr.write().unwrap_or_else(|e| e.into_inner()) = cidr;
    }

    /// NetworkReady: the networks pods would join now, or why there are none.
    pub fn readiness(&self) -> Result<Vec<String>, String> {
        let set = self
            .configs
            .current(self.pod_cidr().as_deref())
            .map_err(|e| e.to_string())?;
        if set.networks.is_empty() {
            let mut message = format!(
                "cri-mesos: network/cni has no usable network config in {}",
                self.configs.dir().display()
            );
            if set.errors.is_empty() {
                message.push_str(" (and --network_cni_default is off)");
            } else {
                message.push_str(&format!("; unusable: {}", set.errors.join("; ")));
            }
            return Err(message);
        }
        Ok(set.names().into_iter().map(String::from).collect())
    }

    /// ADD of the pod's networks into `netns`. Each step is checkpointed before it is
    /// taken, so that [`detach`](Self::detach) undoes whatever part of it happened, also
    /// after a crash; a failed attach is undone by the caller through `detach`.
    pub async fn attach(
        &self,
        pod_id: &str,
        config: &cri::PodSandboxConfig,
        netns: &Path,
    ) -> Result<PodNetwork, CniError> {
        let set = self.configs.current(self.pod_cidr().as_deref())?;
        let attachments = config::select(&set, &config.annotations)?;
        if attachments.is_empty() {
            tracing::warn!("no CNI network configured: the pod has loopback only");
            return Ok(PodNetwork::default());
        }
        let args = self.runtime_args(pod_id, config)?;
        let dir = self.pod_dir(pod_id);
        crate::state::checkpoint(
            &dir.join(POD_CHECKPOINT),
            &PodCheckpoint {
                networks: attachments
                    .iter()
                    .map(|a| Joined {
                        name: a.list.name.clone(),
                        ifname: a.ifname.clone(),
                    })
                    .collect(),
                args: args.clone(),
            },
        )?;
        let mut network = PodNetwork::default();
        for attachment in attachments {
            let name = &attachment.list.name;
            let net_dir = dir.join(name);
            crate::state::atomic_write(&net_dir.join(NETWORK_CONF), &attachment.list.to_bytes())?;
            let target = Target {
                ifname: &attachment.ifname,
                netns: Some(netns),
            };
            let raw = self.invoker.add(&attachment.list, target, &args).await?;
            crate::state::checkpoint(&net_dir.join(&attachment.ifname).join(NETWORK_INFO), &raw)?;
            let result = CniResult::parse(&raw).map_err(|source| CniError::Result {
                network: name.clone(),
                source,
            })?;
            tracing::info!(network = %name, ifname = %attachment.ifname, ips = ?result.pod_ips(), "pod network attached");
            network.networks.push(NetworkStatus {
                name: name.clone(),
                ifname: attachment.ifname,
                result,
            });
        }
        Ok(network)
    }

    /// DEL of every network the pod's checkpoint names, in reverse order, from the
    /// checkpointed configs. Idempotent: what is deleted leaves the checkpoint, so a
    /// retry deletes the rest; a namespace already gone is passed as none, which the
    /// plugins take as "release what is outside of it".
    pub async fn detach(&self, pod_id: &str) -> Result<(), CniError> {
        let dir = self.pod_dir(pod_id);
        let checkpoint: Option<PodCheckpoint> = crate::state::recover(&dir.join(POD_CHECKPOINT))?;
        let Some(checkpoint) = checkpoint else {
            return Ok(());
        };
        let netns = self.netns_path(pod_id);
        let netns = namespaces::is_pinned(&netns).then_some(netns.as_path());
        let mut first = None;
        for joined in checkpoint.networks.iter().rev() {
            let net_dir = dir.join(&joined.name);
            let Ok(bytes) = std::fs::read(net_dir.join(NETWORK_CONF)) else {
                continue; // never got to its ADD
            };
            let list = match NetworkList::parse(&bytes) {
                Ok(list) => list,
                Err(reason) => {
                    tracing::warn!(network = %joined.name, %reason, "unreadable network checkpoint; nothing to DEL with");
                    continue;
                }
            };
            let cached: Option<Value> =
                crate::state::recover(&net_dir.join(&joined.ifname).join(NETWORK_INFO))
                    .ok()
                    .flatten();
            let target = Target {
                ifname: &joined.ifname,
                netns,
            };
            match self
                .invoker
                .del(&list, target, &checkpoint.args, cached.as_ref())
                .await
            {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&net_dir);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first {
            return Err(e.into());
        }
        let _ = std::fs::remove_file(dir.join(POD_CHECKPOINT));
        tracing::info!(pod_id, "pod network detached");
        Ok(())
    }

    /// Removes the pod's CNI directory once its namespace is unpinned and nothing is left
    /// to DEL (a failed DEL keeps the checkpoint for a retry).
    pub fn forget(&self, pod_id: &str) {
        let dir = self.pod_dir(pod_id);
        if namespaces::is_pinned(&self.netns_path(pod_id)) || dir.join(POD_CHECKPOINT).exists() {
            return;
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(self.ns_root.join(pod_id));
    }

    /// CHECK of every network of a running pod with its ADD result.
    pub async fn check(&self, pod_id: &str) -> Result<(), CniError> {
        let dir = self.pod_dir(pod_id);
        let checkpoint: Option<PodCheckpoint> = crate::state::recover(&dir.join(POD_CHECKPOINT))?;
        let Some(checkpoint) = checkpoint else {
            return Ok(());
        };
        let netns = self.netns_path(pod_id);
        for joined in &checkpoint.networks {
            let net_dir = dir.join(&joined.name);
            let path = net_dir.join(NETWORK_CONF);
            let bytes = std::fs::read(&path).map_err(|source| CniError::Io {
                path: path.clone(),
                source,
            })?;
            let list = NetworkList::parse(&bytes).map_err(|reason| CniError::Checkpoint {
                path: path.clone(),
                reason,
            })?;
            let info = net_dir.join(&joined.ifname).join(NETWORK_INFO);
            let cached: Value =
                crate::state::recover(&info)?.ok_or_else(|| CniError::Checkpoint {
                    path: info.clone(),
                    reason: "no ADD result".into(),
                })?;
            let target = Target {
                ifname: &joined.ifname,
                netns: Some(&netns),
            };
            self.invoker
                .check(&list, target, &checkpoint.args, &cached)
                .await?;
        }
        Ok(())
    }

    /// Interface counters inside the pod's network namespace (for the statistics RPCs).
    pub fn statistics(&self, pod_id: &str) -> Result<Vec<InterfaceStats>, CniError> {
        Ok(stats::read(&self.netns_path(pod_id))?)
    }

    /// CNI_ARGS and the capability arguments from the pod's config.
    fn runtime_args(
        &self,
        pod_id: &str,
        config: &cri::PodSandboxConfig,
    ) -> Result<RuntimeArgs, CniError> {
        let meta = config.metadata.clone().unwrap_or_default();
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={pod_id};K8S_POD_UID={}",
            meta.namespace, meta.name, meta.uid
        );
        let mut capabilities = Map::new();
        let mappings: Vec<Value> = config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let protocol = match cri::Protocol::try_from(p.protocol) {
                    Ok(cri::Protocol::Udp) => "udp",
                    Ok(cri::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                };
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": protocol,
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = Value::String(p.host_ip.clone());
                }
                m
            })
            .collect();
        if !mappings.is_empty() {
            capabilities.insert("portMappings".into(), Value::Array(mappings));
        }
        if let Some(dns) = &config.dns_config {
            capabilities.insert(
                "dns".into(),
                json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
            );
        }
        if let Some(bandwidth) = bandwidth(&config.annotations)? {
            capabilities.insert("bandwidth".into(), bandwidth);
        }
        if let Some(cidr) = self.pod_cidr() {
            let ranges: Vec<Value> = cidr
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| json!([{ "subnet": c }]))
                .collect();
            capabilities.insert("ipRanges".into(), Value::Array(ranges));
        }
        Ok(RuntimeArgs {
            container_id: pod_id.to_string(),
            cni_args,
            capabilities,
        })
    }
}

/// The `bandwidth` capability from the pod's traffic shaping annotations (bits per
/// second, Kubernetes quantities), with the burst containerd uses.
fn bandwidth(annotations: &HashMap<String, String>) -> Result<Option<Value>, CniError> {
    let mut out = Map::new();
    for (annotation, rate, burst) in [
        (INGRESS_BANDWIDTH, "ingressRate", "ingressBurst"),
        (EGRESS_BANDWIDTH, "egressRate", "egressBurst"),
    ] {
        let Some(text) = annotations.get(annotation) else {
            continue;
        };
        let value = parse_quantity(text).ok_or_else(|| CniError::Bandwidth {
            annotation,
            value: text.clone(),
        })?;
        out.insert(rate.into(), json!(value));
        out.insert(burst.into(), json!(u32::MAX));
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
}

/// A Kubernetes quantity (`10M`, `1Gi`, `500k`, `1.5M`) as a whole number.
fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let value = (number * factor).round();
    (value.is_finite() && value >= 1.0 && value < u64::MAX as f64).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("100"), Some(100));
        assert_eq!(parse_quantity("10 M"), None);
        assert_eq!(parse_quantity("fast"), None);
        assert_eq!(parse_quantity("0"), None);
    }

    #[test]
    fn bandwidth_annotations() {
        let annotations = HashMap::from([(INGRESS_BANDWIDTH.to_string(), "1M".to_string())]);
        assert_eq!(
            bandwidth(&annotations).unwrap(),
            Some(json!({"ingressRate": 1_000_000, "ingressBurst": u32::MAX}))
        );
        assert_eq!(bandwidth(&HashMap::new()).unwrap(), None);
        let bad = HashMap::from([(EGRESS_BANDWIDTH.to_string(), "lots".to_string())]);
        let err = bandwidth(&bad).unwrap_err().to_string();
        assert!(
            err.contains(EGRESS_BANDWIDTH) && err.contains("lots"),
            "{err}"
        );
    }

    #[test]
    fn runtime_args_from_the_pod_config() {
        let dir = tempfile::tempdir().unwrap();
        let flags = crate::flags::Flags::from_args([
            "cri-mesos".to_string(),
            format!("--work_dir={}", dir.path().join("work").display()),
            format!("--runtime_dir={}", dir.path().join("run").display()),
        ])
        .unwrap();
        let manager = CniManager::new(&CniConfig::from_flags(&flags));
        manager.set_pod_cidr(Some("10.244.0.0/24,fd00::/64".into()));
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "prod".into(),
                attempt: 0,
            }),
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                // No host port: nothing for portmap to do.
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["prod.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        let args = manager.runtime_args("abc", &config).unwrap();
        assert_eq!(args.container_id, "abc");
        assert_eq!(
            args.cni_args,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1"
        );
        assert_eq!(
            Value::Object(args.capabilities),
            json!({
                "portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}],
                "dns": {"servers": ["10.96.0.10"], "searches": ["prod.svc.cluster.local"], "options": ["ndots:5"]},
                "ipRanges": [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00::/64"}]],
            })
        );
    }

    #[test]
    fn pod_ips_one_per_family_from_the_first_network() {
        let result = |ips: &[&str]| CniResult {
            cni_version: "1.0.0".into(),
            ips: ips
                .iter()
                .map(|a| super::super::result::IpConfig {
                    address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let network = PodNetwork {
            networks: vec![
                NetworkStatus {
                    name: "a".into(),
                    ifname: "eth0".into(),
                    result: result(&["10.1.0.2/24", "10.1.0.3/24", "fd00::2/64"]),
                },
                NetworkStatus {
                    name: "b".into(),
                    ifname: "eth1".into(),
                    result: result(&["10.2.0.2/24"]),
                },
            ],
        };
        let ips: Vec<String> = network.pod_ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.1.0.2", "fd00::2"]);
        assert!(network.dns().is_none());
    }
}
