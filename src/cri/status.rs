//! The CRI's status messages of pods and containers, from the containerizer's records:
//! what PodSandboxStatus, ContainerStatus, the List calls and the events carry.

use k8s_cri::v1 as cri;

use crate::containerizer::Containerizer;
use crate::containerizer::records::{ContainerRecord, PodRecord};

pub(super) fn pod_status(pod: &PodRecord) -> cri::PodSandboxStatus {
    let options = pod
        .info
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    // The first IP is the primary one; the other, of the other family, is dual stack's.
    let mut ips = pod
        .network
        .as_ref()
        .map(|n| n.pod_ips())
        .unwrap_or_default()
        .into_iter()
        .map(|ip| ip.to_string());
    let network = cri::PodSandboxNetworkStatus {
        ip: ips.next().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip }).collect(),
    };
    cri::PodSandboxStatus {
        id: pod.id().to_string(),
        metadata: pod.metadata(),
        state: pod.cri_state() as i32,
        created_at: pod.created_at,
        network: Some(network),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options }),
        }),
        labels: pod.info.config.labels.clone(),
        annotations: pod.info.config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

/// The statuses of a pod's containers, as PodSandboxStatus and the events carry them.
pub(super) fn container_statuses_of(
    containerizer: &dyn Containerizer,
    pod_id: &str,
) -> Vec<cri::ContainerStatus> {
    let mut statuses: Vec<cri::ContainerStatus> = containerizer
        .containers()
        .iter()
        .filter(|c| c.pod_id == pod_id)
        .map(|c| container_status(c, c.exit()))
        .collect();
    statuses.sort_by_key(|s| s.created_at);
    statuses
}

pub(super) fn container_status(
    c: &ContainerRecord,
    exit: Option<cri_mesos_supervisor::protocol::ExitRecord>,
) -> cri::ContainerStatus {
    let state = c.cri_state(&exit);
    let (exit_code, finished_at, reason, message) = match (&exit, &c.start_error) {
        (_, Some(error)) => (
            128,
            exit.as_ref()
                .map(|e| e.finished_at_ns)
                .unwrap_or(c.created_at),
            "StartError",
            error.clone(),
        ),
        (Some(e), None) if c.limitation.is_some() => {
            let l = c.limitation.as_ref().expect("matched");
            (
                e.exit_code,
                e.finished_at_ns,
                l.reason.as_str(),
                l.message.clone(),
            )
        }
        (Some(e), None) if e.oom_killed => {
            (e.exit_code, e.finished_at_ns, "OOMKilled", String::new())
        }
        (Some(e), None) if e.exit_code == 0 => (0, e.finished_at_ns, "Completed", String::new()),
        (Some(e), None) => (
            e.exit_code,
            e.finished_at_ns,
            "Error",
            e.error.clone().unwrap_or_default(),
        ),
        (None, None) => (0, 0, "", String::new()),
    };
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.metadata(),
        state: state as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at,
        exit_code,
        image: c.image_spec(),
        image_ref: c.image_id.clone(),
        reason: reason.to_string(),
        message,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: c.resources_in_force().map(|linux| cri::ContainerResources {
            linux: Some(linux),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        // The identity the process really got (after image and security-context rules),
        // as kubelet's SupplementalGroupsPolicy reporting wants it.
        user: (c.pid > 0).then(|| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: c.process.uid.into(),
                gid: c.process.gid.into(),
                supplemental_groups: c
                    .process
                    .additional_gids
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
    }
}
