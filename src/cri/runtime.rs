//! CRI RuntimeService: version/status/config now; the pod and container lifecycle
//! arrives with the containerizer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::service_impl;
use crate::flags::Flags;

/// The version of the kubelet runtime API this runtime speaks (what kubelet itself sends).
const KUBELET_API_VERSION: &str = "0.1.0";

/// Serves the runtime RPCs.
#[derive(Debug)]
pub struct CriRuntime {
    flags: Arc<Flags>,
    /// The node's pod CIDR as pushed by kubelet (UpdateRuntimeConfig); the default CNI
    /// network allocates from it.
    pod_cidr: RwLock<Option<String>>,
}

impl CriRuntime {
    pub fn new(flags: Arc<Flags>) -> Self {
        Self {
            flags,
            pod_cidr: RwLock::new(None),
        }
    }

    pub fn pod_cidr(&self) -> Option<String> {
        self.pod_cidr.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn conditions(&self) -> Vec<cri::RuntimeCondition> {
        vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!(
                    "cri-mesos: network/cni has no network loaded (config dir {})",
                    self.flags.network_cni_config_dir.display()
                ),
            },
        ]
    }
}

/// Checks a pod CIDR as kubelet sends it: one CIDR, or two comma-separated for dual stack.
fn validate_pod_cidr(text: &str) -> Result<(), String> {
    for cidr in text.split(',').map(str::trim) {
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("'{cidr}' is not ADDRESS/PREFIX"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("'{cidr}' has an invalid address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => return Err(format!("'{cidr}' has an invalid prefix length")),
        }
    }
    Ok(())
}

service_impl! {
    impl RuntimeService for CriRuntime {
        type GetContainerEventsStream = tokio_stream::Empty<Result<cri::ContainerEventResponse, Status>>;

        async fn version(
            &self,
            _request: Request<cri::VersionRequest>,
        ) -> Result<Response<cri::VersionResponse>, Status> {
            Ok(Response::new(cri::VersionResponse {
                version: KUBELET_API_VERSION.into(),
                runtime_name: "cri-mesos".into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: "v1".into(),
            }))
        }

        async fn status(
            &self,
            request: Request<cri::StatusRequest>,
        ) -> Result<Response<cri::StatusResponse>, Status> {
            let mut info = HashMap::new();
            if request.get_ref().verbose {
                let config = serde_json::to_string(&*self.flags)
                    .map_err(|e| Status::internal(format!("cannot encode the configuration: {e}")))?;
                info.insert("config".to_string(), config);
                info.insert(
                    "podCIDR".to_string(),
                    serde_json::to_string(&self.pod_cidr()).unwrap_or_default(),
                );
            }
            let handler_features = Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            });
            Ok(Response::new(cri::StatusResponse {
                status: Some(cri::RuntimeStatus { conditions: self.conditions() }),
                info,
                runtime_handlers: vec![cri::RuntimeHandler { name: String::new(), features: handler_features }],
                features: Some(cri::RuntimeFeatures { supplemental_groups_policy: false }),
            }))
        }

        async fn runtime_config(
            &self,
            _request: Request<cri::RuntimeConfigRequest>,
        ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
            Ok(Response::new(cri::RuntimeConfigResponse {
                linux: Some(cri::LinuxRuntimeConfiguration {
                    cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
                }),
            }))
        }

        async fn update_runtime_config(
            &self,
            request: Request<cri::UpdateRuntimeConfigRequest>,
        ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
            let cidr = request
                .into_inner()
                .runtime_config
                .and_then(|c| c.network_config)
                .map(|n| n.pod_cidr)
                .unwrap_or_default();
            // An empty CIDR is kubelet saying "nothing to change", not "forget it".
            if cidr.is_empty() {
                return Ok(Response::new(cri::UpdateRuntimeConfigResponse {}));
            }
            validate_pod_cidr(&cidr).map_err(|reason| {
                Status::invalid_argument(format!("runtime_config.network_config.pod_cidr: {reason}"))
            })?;
            tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
            *self.pod_cidr.write().unwrap_or_else(|e| e.into_inner()) = Some(cidr);
            Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
        }

        async fn get_container_events(
            &self,
            _request: Request<cri::GetEventsRequest>,
        ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
            Err(super::not_yet("GetContainerEvents"))
        }
    }
    unimplemented {
        run_pod_sandbox(cri::RunPodSandboxRequest) -> cri::RunPodSandboxResponse = "RunPodSandbox";
        stop_pod_sandbox(cri::StopPodSandboxRequest) -> cri::StopPodSandboxResponse = "StopPodSandbox";
        remove_pod_sandbox(cri::RemovePodSandboxRequest) -> cri::RemovePodSandboxResponse = "RemovePodSandbox";
        pod_sandbox_status(cri::PodSandboxStatusRequest) -> cri::PodSandboxStatusResponse = "PodSandboxStatus";
        list_pod_sandbox(cri::ListPodSandboxRequest) -> cri::ListPodSandboxResponse = "ListPodSandbox";
        create_container(cri::CreateContainerRequest) -> cri::CreateContainerResponse = "CreateContainer";
        start_container(cri::StartContainerRequest) -> cri::StartContainerResponse = "StartContainer";
        stop_container(cri::StopContainerRequest) -> cri::StopContainerResponse = "StopContainer";
        remove_container(cri::RemoveContainerRequest) -> cri::RemoveContainerResponse = "RemoveContainer";
        list_containers(cri::ListContainersRequest) -> cri::ListContainersResponse = "ListContainers";
        container_status(cri::ContainerStatusRequest) -> cri::ContainerStatusResponse = "ContainerStatus";
        update_container_resources(cri::UpdateContainerResourcesRequest) -> cri::UpdateContainerResourcesResponse = "UpdateContainerResources";
        reopen_container_log(cri::ReopenContainerLogRequest) -> cri::ReopenContainerLogResponse = "ReopenContainerLog";
        exec_sync(cri::ExecSyncRequest) -> cri::ExecSyncResponse = "ExecSync";
        exec(cri::ExecRequest) -> cri::ExecResponse = "Exec";
        attach(cri::AttachRequest) -> cri::AttachResponse = "Attach";
        port_forward(cri::PortForwardRequest) -> cri::PortForwardResponse = "PortForward";
        container_stats(cri::ContainerStatsRequest) -> cri::ContainerStatsResponse = "ContainerStats";
        list_container_stats(cri::ListContainerStatsRequest) -> cri::ListContainerStatsResponse = "ListContainerStats";
        pod_sandbox_stats(cri::PodSandboxStatsRequest) -> cri::PodSandboxStatsResponse = "PodSandboxStats";
        list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest) -> cri::ListPodSandboxStatsResponse = "ListPodSandboxStats";
        checkpoint_container(cri::CheckpointContainerRequest) -> cri::CheckpointContainerResponse = "CheckpointContainer";
        list_metric_descriptors(cri::ListMetricDescriptorsRequest) -> cri::ListMetricDescriptorsResponse = "ListMetricDescriptors";
        list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest) -> cri::ListPodSandboxMetricsResponse = "ListPodSandboxMetrics";
    }
}

#[cfg(test)]
mod tests {
    use super::validate_pod_cidr;

    #[test]
    fn pod_cidrs() {
        assert!(validate_pod_cidr("10.244.1.0/24").is_ok());
        assert!(validate_pod_cidr("10.244.1.0/24,fd00:10:244::/64").is_ok());
        assert!(validate_pod_cidr("10.244.1.0").is_err());
        assert!(validate_pod_cidr("10.244.1.0/33").is_err());
        assert!(validate_pod_cidr("nonsense/8").is_err());
    }
}
