//! `network/cni`: IP-per-pod networking through CNI plugins (Mesos's network/cni
//! isolator).
//!
//! [`Cni`] is the isolator. For a pod sandbox (a top-level container) it asks for a network
//! and a UTS namespace, attaches the pinned network namespace to the pod's networks (CNI
//! ADD, through its [`CniManager`]) and detaches it when the pod stops; each nested
//! container joins its pod's network and UTS namespaces.

pub mod config;
pub mod invoke;
mod manager;
pub mod result;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;

use cri_mesos_supervisor::protocol::{JoinNs, LaunchInfo, NsKind};
use k8s_cri::v1 as cri;

pub use manager::{
    CniConfig, CniManager, EGRESS_BANDWIDTH, INGRESS_BANDWIDTH, NetworkStatus, PodNetwork,
};

use crate::isolators::IsolatorName;
use crate::isolators::chain::{
    ContainerPrep, Isolator, IsolatorError, PodInfo, PodIsolation, PodNamespaces, PodPrep,
    ResourceStatistics,
};
use crate::launcher::namespaces;

/// Why a pod's network could not be set up, checked or torn down.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(transparent)]
    Select(#[from] config::SelectError),
    #[error("annotation {annotation}: {value:?} is not a quantity (e.g. 10M)")]
    Bandwidth {
        annotation: &'static str,
        value: String,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Plugin(#[from] invoke::PluginError),
    #[error("network {network:?}: {source}")]
    Result {
        network: String,
        source: result::ResultError,
    },
    #[error(transparent)]
    State(#[from] crate::state::CheckpointError),
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
}

impl From<CniError> for IsolatorError {
    fn from(e: CniError) -> Self {
        const ISOLATOR: &str = "network/cni";
        match e {
            CniError::Select(_) => IsolatorError::InvalidArgument {
                field: format!("config.annotations[{}]", config::NETWORKS_ANNOTATION),
                reason: e.to_string(),
            },
            CniError::Bandwidth { annotation, .. } => IsolatorError::InvalidArgument {
                field: format!("config.annotations[{annotation}]"),
                reason: e.to_string(),
            },
            CniError::Plugin(invoke::PluginError::Timeout { .. }) => {
                IsolatorError::DeadlineExceeded {
                    isolator: ISOLATOR,
                    reason: e.to_string(),
                }
            }
            other => IsolatorError::Other {
                isolator: ISOLATOR,
                reason: other.to_string(),
            },
        }
    }
}

/// The `network/cni` isolator: the pod's networks, and each container's place in them.
#[derive(Debug)]
pub struct Cni {
    manager: Arc<CniManager>,
}

impl Cni {
    pub fn new(config: &CniConfig) -> Cni {
        Cni {
            manager: Arc::new(CniManager::new(config)),
        }
    }
}

// No cleanup for containers: the namespaces and their networks are the pod's.
#[tonic::async_trait]
impl Isolator for Cni {
    fn name(&self) -> IsolatorName {
        IsolatorName("network/cni")
    }

    async fn prepare_pod(
        &self,
        pod: &PodPrep<'_>,
        namespaces: &mut PodNamespaces,
    ) -> Result<(), IsolatorError> {
        let host_net = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|o| o.network == cri::NamespaceMode::Node as i32);
        // Host-network pods skip CNI entirely: no namespace, no plugins.
        if !host_net {
            namespaces.net = Some(self.manager.netns_path(pod.id));
            namespaces.uts = Some(pod.dir.join("ns").join("uts"));
        }
        Ok(())
    }

    async fn isolate_pod(
        &self,
        pod: &PodInfo,
        isolation: &mut PodIsolation,
    ) -> Result<(), IsolatorError> {
        if let Some(netns) = &pod.net_ns {
            isolation.network = Some(self.manager.attach(&pod.id, &pod.config, netns).await?);
        }
        Ok(())
    }

    async fn cleanup_pod(&self, pod: &PodInfo) -> Result<(), IsolatorError> {
        // DEL while the namespace still exists, so the plugins also remove what is inside.
        // A failed DEL keeps the namespace and the checkpoint for the retry.
        self.manager.detach(&pod.id).await?;
        if let Some(netns) = &pod.net_ns {
            namespaces::unpin(netns);
        }
        self.manager.forget(&pod.id);
        Ok(())
    }

    /// Interface counters inside the pod's network namespace (none for host-network pods:
    /// the node's interfaces are not the pod's).
    async fn usage_pod(
        &self,
        pod: &PodInfo,
        statistics: &mut ResourceStatistics,
    ) -> Result<(), IsolatorError> {
        if pod.net_ns.is_none() {
            return Ok(());
        }
        let (manager, id) = (self.manager.clone(), pod.id.clone());
        statistics.interfaces = tokio::task::spawn_blocking(move || manager.statistics(&id))
            .await
            .map_err(|e| IsolatorError::Other {
                isolator: "network/cni",
                reason: e.to_string(),
            })??;
        Ok(())
    }

    /// The pod's networks and IPs, a CNI CHECK of them (which is how a live pod's network
    /// is verified from outside) and interface counters.
    async fn pod_status(
        &self,
        pod: &PodInfo,
        ready: bool,
        network: Option<&PodNetwork>,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let status = if pod.net_ns.is_none() {
            serde_json::json!({ "hostNetwork": true })
        } else {
            let check = if ready {
                match self.manager.check(&pod.id).await {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.to_string(),
                }
            } else {
                "not ready".to_string()
            };
            let manager = self.manager.clone();
            let id = pod.id.clone();
            let interfaces = tokio::task::spawn_blocking(move || manager.statistics(&id))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            serde_json::json!({
                "networks": network.map(|n| &n.networks),
                "check": check,
                "interfaces": match interfaces {
                    Ok(stats) => serde_json::to_value(stats).unwrap_or_default(),
                    Err(e) => serde_json::Value::String(e),
                },
            })
        };
        Some(serde_json::Map::from_iter([(
            "network".to_string(),
            status,
        )]))
    }

    fn network_readiness(&self) -> Option<Result<(), String>> {
        Some(self.manager.readiness().map(|_| ()))
    }

    fn set_pod_cidr(&self, cidr: Option<&str>) {
        self.manager.set_pod_cidr(cidr.map(str::to_string));
    }

    fn pod_cidr(&self) -> Option<String> {
        self.manager.pod_cidr()
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let pod = container.pod;
        for (kind, path) in [(NsKind::Net, &pod.net_ns), (NsKind::Uts, &pod.uts_ns)] {
            if let Some(path) = path {
                launch.namespaces.join.push(JoinNs {
                    kind,
                    path: path.clone(),
                });
            }
        }
        // The pod's UTS namespace already carries the hostname; a host-network pod must
        // never rename the node.
        launch.hostname = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::registry::test_support::Fixture;

    fn cni() -> Cni {
        Cni::new(&CniConfig::from_flags(
            &crate::flags::Flags::from_args(["cri-mesos"]).unwrap(),
        ))
    }

    #[tokio::test]
    async fn joins_net_and_uts_unless_host() {
        let mut f = Fixture::new();
        let mut launch = LaunchInfo {
            hostname: Some("x".into()),
            ..Default::default()
        };
        f.prepare_onto(&cni(), &mut launch).await.unwrap();
        assert_eq!(
            launch.namespaces.join,
            [
                JoinNs {
                    kind: NsKind::Net,
                    path: f.dir.path().join("ns/net")
                },
                JoinNs {
                    kind: NsKind::Uts,
                    path: f.dir.path().join("ns/uts")
                },
            ]
        );
        assert_eq!(launch.hostname, None);

        f.pod.net_ns = None;
        f.pod.uts_ns = None;
        assert!(f.prepare(&cni()).await.unwrap().namespaces.join.is_empty());
    }
}
