//! `namespaces/pid`: whether a container gets a pid namespace of its own.
//!
//! The pod supervisor forks every container, so a container that shares the pod's (or
//! the host's) pid namespace simply stays in the supervisor's: the supervisor already
//! holds the pod's namespace when the pod shares one, and sits in the host's otherwise.

use cri_mesos_supervisor::protocol::LaunchInfo;
use k8s_cri::v1 as cri;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError, NsMode};

#[derive(Debug, Default)]
pub struct PidNamespace;

// No cleanup: a container's own pid namespace ends with its last process.
#[tonic::async_trait]
impl Isolator for PidNamespace {
    fn name(&self) -> IsolatorName {
        IsolatorName("namespaces/pid")
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let options = container
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|sc| sc.namespace_options.as_ref());
        // Without namespace options the container is on its own, as kubelet's default
        // (no shareProcessNamespace) is.
        let mode = match options {
            None => cri::NamespaceMode::Container,
            Some(o) => cri::NamespaceMode::try_from(o.pid)
                .map_err(|_| invalid(format!("unknown mode {}", o.pid)))?,
        };
        let pod = container.pod.pid_mode;
        launch.namespaces.new_pid = match mode {
            cri::NamespaceMode::Container => true,
            cri::NamespaceMode::Pod if pod == NsMode::Pod => false,
            cri::NamespaceMode::Pod => {
                return Err(invalid(
                    "POD, but the pod sandbox does not share a pid namespace".into(),
                ));
            }
            // The supervisor of a pod sharing a namespace is inside it: its children cannot
            // get back to the host's.
            cri::NamespaceMode::Node if pod != NsMode::Pod => false,
            cri::NamespaceMode::Node => {
                return Err(invalid(
                    "NODE, but the pod sandbox has a pid namespace of its own".into(),
                ));
            }
            cri::NamespaceMode::Target => {
                return Err(invalid("TARGET is not supported yet".into()));
            }
        };
        Ok(())
    }
}

fn invalid(reason: String) -> IsolatorError {
    IsolatorError::InvalidArgument {
        field: "namespace_options.pid".into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::registry::test_support::Fixture;

    fn with_pid(f: &mut Fixture, mode: cri::NamespaceMode) {
        f.security_context().namespace_options = Some(cri::NamespaceOption {
            pid: mode as i32,
            ..Default::default()
        });
    }

    #[tokio::test]
    async fn modes() {
        let mut f = Fixture::new();
        assert!(
            f.prepare(&PidNamespace).await.unwrap().namespaces.new_pid,
            "default: own namespace"
        );

        with_pid(&mut f, cri::NamespaceMode::Container);
        assert!(f.prepare(&PidNamespace).await.unwrap().namespaces.new_pid);

        f.pod.pid_mode = NsMode::Pod;
        with_pid(&mut f, cri::NamespaceMode::Pod);
        let launch = f.prepare(&PidNamespace).await.unwrap();
        assert!(!launch.namespaces.new_pid);
        assert!(launch.namespaces.join.is_empty());

        f.pod.pid_mode = NsMode::Node;
        with_pid(&mut f, cri::NamespaceMode::Node);
        assert!(!f.prepare(&PidNamespace).await.unwrap().namespaces.new_pid);
    }

    #[tokio::test]
    async fn unsupported_or_inconsistent_modes_are_invalid() {
        let mut f = Fixture::new();
        for (pod, mode, reason) in [
            (
                NsMode::Container,
                cri::NamespaceMode::Target,
                "TARGET is not supported yet",
            ),
            (NsMode::Container, cri::NamespaceMode::Pod, "POD, but"),
            (NsMode::Pod, cri::NamespaceMode::Node, "NODE, but"),
        ] {
            f.pod.pid_mode = pod;
            with_pid(&mut f, mode);
            let err = f.prepare(&PidNamespace).await.unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("namespace_options.pid: {reason}")),
                "{err}"
            );
        }
    }
}
