//! `network/cni`, the container side: a container joins its pod's network and UTS
//! namespaces, which the pod side set up (interfaces, hostname) when the sandbox ran.

use cri_mesos_supervisor::protocol::{JoinNs, LaunchInfo, NsKind};

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};

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
