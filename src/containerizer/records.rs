//! What the containerizer checkpoints about pods and containers (under `<work_dir>/meta`),
//! and the state it derives from them.

use std::path::PathBuf;

use cri_mesos_supervisor::protocol::{ExitRecord, ProcessSpec};
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use super::MesosState;
use crate::cgroups::Cgroup;
use crate::isolators::chain::PodInfo;

/// A pod sandbox (top-level container).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub info: PodInfo,
    pub created_at: i64,
    pub ready: bool,
    pub mesos_state: MesosState,
    pub runtime_handler: String,
    pub supervisor_pid: i32,
    pub supervisor_socket: PathBuf,
    /// The supervisor's own cgroup (a child of the pod cgroup).
    pub supervisor_cgroup: Cgroup,
    /// Whether the pod cgroup was made by us (no `cgroup_parent`) and so is ours to remove.
    pub owns_pod_cgroup: bool,
    /// What the pod's CNI networks gave it (IPs, DNS); `None` until attached and for
    /// host-network pods.
    #[serde(default)]
    pub network: Option<crate::isolators::network::cni::PodNetwork>,
    /// Why the pod went NOTREADY without a StopPodSandbox (its supervisor died), shown in
    /// its verbose status.
    #[serde(default)]
    pub lost: Option<String>,
}

impl PodRecord {
    pub fn id(&self) -> &str {
        &self.info.id
    }

    pub fn metadata(&self) -> Option<cri::PodSandboxMetadata> {
        self.info.config.metadata.clone()
    }

    pub fn cri_state(&self) -> cri::PodSandboxState {
        if self.ready {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        }
    }
}

/// A CRI container (nested container).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: cri::ContainerConfig,
    pub created_at: i64,
    pub started_at: i64,
    pub mesos_state: MesosState,
    /// The image id (`sha256:<config digest>`) the rootfs was made from.
    pub image_id: String,
    pub rootfs: PathBuf,
    pub backend: String,
    pub cgroup: Cgroup,
    /// Host pid of the container's init, once forked.
    pub pid: i32,
    pub log_path: Option<PathBuf>,
    pub stop_signal: i32,
    /// The process as launched; exec sessions reuse its env, user and cwd.
    pub process: ProcessSpec,
    /// Where the supervisor writes the exit status.
    pub exit_file: PathBuf,
    /// Why StartContainer failed, when it did.
    #[serde(default)]
    pub start_error: Option<String>,
    /// The resources in force after UpdateContainerResources; `None`: the config's.
    #[serde(default)]
    pub resources: Option<cri::LinuxContainerResources>,
    /// Whether the OOM killer took a process of the container, read from its memory
    /// cgroup when its exit was first seen (the cgroup goes with RemoveContainer; the
    /// answer stays here). `None`: not looked at yet.
    #[serde(default)]
    pub oom_killed: Option<bool>,
    /// The limit an isolator found it past (a disk quota), for which it was killed.
    #[serde(default)]
    pub limitation: Option<crate::isolators::chain::Limitation>,
}

impl ContainerRecord {
    /// The exit status, once exited, with what the memory cgroup said about OOM kills.
    pub fn exit(&self) -> Option<ExitRecord> {
        let mut exit: ExitRecord = crate::state::recover(&self.exit_file).ok().flatten()?;
        exit.oom_killed |= self.oom_killed == Some(true);
        Some(exit)
    }

    /// The resources in force (ContainerStatus.resources).
    pub fn resources_in_force(&self) -> Option<cri::LinuxContainerResources> {
        self.resources
            .clone()
            .or_else(|| self.config.linux.as_ref().and_then(|l| l.resources.clone()))
    }

    /// The CRI state: an exit record means EXITED, a start means RUNNING.
    pub fn cri_state(&self, exit: &Option<ExitRecord>) -> cri::ContainerState {
        if exit.is_some() || self.start_error.is_some() {
            cri::ContainerState::ContainerExited
        } else if self.started_at > 0 {
            cri::ContainerState::ContainerRunning
        } else {
            cri::ContainerState::ContainerCreated
        }
    }

    pub fn metadata(&self) -> Option<cri::ContainerMetadata> {
        self.config.metadata.clone()
    }

    pub fn image_spec(&self) -> Option<cri::ImageSpec> {
        self.config.image.clone()
    }
}
