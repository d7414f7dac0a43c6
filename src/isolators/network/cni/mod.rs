//! `network/cni`: IP-per-pod networking through CNI plugins (Mesos's network/cni
//! isolator).
//!
//! The pod side ([`CniManager`]) attaches a sandbox's network namespace to its networks
//! when it runs and detaches it when it stops; the container side ([`Cni`]) has each
//! container join its pod's network and UTS namespaces.

pub mod config;
pub mod invoke;
mod manager;
pub mod result;
pub mod stats;

use std::path::PathBuf;

use cri_mesos_supervisor::protocol::{JoinNs, LaunchInfo, NsKind};

pub use manager::{CniManager, EGRESS_BANDWIDTH, INGRESS_BANDWIDTH, NetworkStatus, PodNetwork};

use crate::containerizer::ContainerizerError;
use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};

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

impl From<CniError> for ContainerizerError {
    fn from(e: CniError) -> Self {
        match e {
            CniError::Select(_) => ContainerizerError::InvalidArgument {
                field: format!("config.annotations[{}]", config::NETWORKS_ANNOTATION),
                reason: e.to_string(),
            },
            CniError::Bandwidth { annotation, .. } => ContainerizerError::InvalidArgument {
                field: format!("config.annotations[{annotation}]"),
                reason: e.to_string(),
            },
            CniError::Plugin(invoke::PluginError::Timeout { .. }) => {
                ContainerizerError::DeadlineExceeded(format!("network/cni: {e}"))
            }
            other => ContainerizerError::Isolator(IsolatorError::Other {
                isolator: "network/cni",
                reason: other.to_string(),
            }),
        }
    }
}

#[derive(Debug, Default)]
pub struct Cni;

// No cleanup for containers: the namespaces and their networks are the pod's.
#[tonic::async_trait]
impl Isolator for Cni {
    fn name(&self) -> IsolatorName {
        IsolatorName("network/cni")
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

    #[tokio::test]
    async fn joins_net_and_uts_unless_host() {
        let mut f = Fixture::new();
        let mut launch = LaunchInfo {
            hostname: Some("x".into()),
            ..Default::default()
        };
        f.prepare_onto(&Cni, &mut launch).await.unwrap();
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
        assert!(f.prepare(&Cni).await.unwrap().namespaces.join.is_empty());
    }
}
