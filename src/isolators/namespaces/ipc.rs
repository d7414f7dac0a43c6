//! `namespaces/ipc`: the container joins its pod's IPC namespace (SysV IPC and POSIX
//! message queues are shared pod-wide, as with a pause container).

use cri_mesos_supervisor::protocol::{JoinNs, LaunchInfo, NsKind};
use k8s_cri::v1 as cri;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError, PodNamespaces, PodPrep};

#[derive(Debug, Default)]
pub struct IpcNamespace;

// No cleanup: the namespace is the pod's, pinned and released with the pod.
#[tonic::async_trait]
impl Isolator for IpcNamespace {
    fn name(&self) -> IsolatorName {
        IsolatorName("namespaces/ipc")
    }

    /// The pod's own IPC namespace, unless it runs in the host's; the containerizer gives
    /// a pod with its own one a /dev/shm of its own.
    async fn prepare_pod(
        &self,
        pod: &PodPrep<'_>,
        namespaces: &mut PodNamespaces,
    ) -> Result<(), IsolatorError> {
        let host_ipc = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|o| o.ipc == cri::NamespaceMode::Node as i32);
        if !host_ipc {
            namespaces.ipc = Some(pod.dir.join("ns").join("ipc"));
        }
        Ok(())
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        // The container's own `namespace_options.ipc` is not read: kubelet always repeats
        // the pod's mode there, and the pod's decides what was pinned.
        if let Some(path) = &container.pod.ipc_ns {
            launch.namespaces.join.push(JoinNs {
                kind: NsKind::Ipc,
                path: path.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::registry::test_support::Fixture;

    #[tokio::test]
    async fn joins_the_pods_ipc_namespace_unless_host() {
        let mut f = Fixture::new();
        let launch = f.prepare(&IpcNamespace).await.unwrap();
        assert_eq!(
            launch.namespaces.join,
            [JoinNs {
                kind: NsKind::Ipc,
                path: f.dir.path().join("ns/ipc")
            }]
        );

        f.pod.ipc_ns = None;
        assert!(
            f.prepare(&IpcNamespace)
                .await
                .unwrap()
                .namespaces
                .join
                .is_empty()
        );
    }
}
