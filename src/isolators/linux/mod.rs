//! Linux isolators (Mesos's `linux/*`): what the kernel grants a container's processes.

pub mod capabilities;

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
