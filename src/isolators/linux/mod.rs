//! Linux isolators (Mesos's `linux/*`): what the kernel grants a container's processes.

pub mod capabilities;
pub mod seccomp;

use k8s_cri::v1 as cri;

/// The container's security context, if it sent one.
pub fn security_context(
    config: &cri::ContainerConfig,
) -> Option<&cri::LinuxContainerSecurityContext> {
    config.linux.as_ref()?.security_context.as_ref()
}

/// Whether the container asked to be privileged.
pub fn privileged(config: &cri::ContainerConfig) -> bool {
    security_context(config).is_some_and(|s| s.privileged)
}

pub mod nnp {
    //! `linux/nnp`, as in Mesos: when named, every container runs with `no_new_privs`,
    //! whatever its config says (the CRI's per-container field applies either way).

    use cri_mesos_supervisor::protocol::LaunchInfo;

    use crate::isolators::IsolatorName;
    use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};

    #[derive(Debug, Default)]
    pub struct LinuxNnp;

    #[tonic::async_trait]
    impl Isolator for LinuxNnp {
        fn name(&self) -> IsolatorName {
            IsolatorName("linux/nnp")
        }

        async fn prepare(
            &self,
            _container: &ContainerPrep<'_>,
            launch: &mut LaunchInfo,
        ) -> Result<(), IsolatorError> {
            launch.process.no_new_privileges = true;
            Ok(())
        }
    }
}
