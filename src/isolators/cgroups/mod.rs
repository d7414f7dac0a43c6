//! The cgroups isolator (Mesos's `cgroups/*` family: one object for all selected
//! controllers). `cgroups/devices` is implied: the CRI's device rules always apply.

pub mod bpf;
pub mod devices;

use cri_mesos_supervisor::protocol::LaunchInfo;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};

/// One isolator for every selected `cgroups/*` controller; today that is `devices`.
#[derive(Debug, Default)]
pub struct Cgroups;

#[tonic::async_trait]
impl Isolator for Cgroups {
    fn name(&self) -> IsolatorName {
        IsolatorName("cgroups/devices")
    }

    /// The rules are written before the container's process joins its cgroup (it does so
    /// first thing after the fork), so nothing it runs ever sees the host's devices.
    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        _launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let privileged = crate::isolators::linux::privileged(container.config);
        let rules = devices::rules(&container.config.devices, privileged)?;
        let dirs = container.cgroup.dirs.clone();
        tokio::task::spawn_blocking(move || devices::apply(&dirs, &rules))
            .await
            .map_err(|e| IsolatorError::Other {
                isolator: "cgroups/devices",
                reason: e.to_string(),
            })?
    }
}
