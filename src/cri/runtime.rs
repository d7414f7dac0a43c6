//! CRI RuntimeService: translation between CRI messages and the containerizer, which it
//! reaches only through the [`Containerizer`] trait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::events::{EventHub, EventStream};
use super::status::{container_status, container_statuses_of, pod_status};
use super::usage::Usage;
use super::{containerizer_status, not_yet, validate};
use super::{metrics, stats};
use crate::containerizer::records::{ContainerRecord, PodRecord};
use crate::containerizer::{ContainerId, Containerizer, LaunchConfig};
use crate::flags::Flags;
use crate::stream::StreamServer;
use crate::stream::token::Pending;

/// The version of the kubelet runtime API this runtime speaks (what kubelet itself sends).
const KUBELET_API_VERSION: &str = "0.1.0";

/// Serves the runtime RPCs.
#[derive(Debug)]
pub struct CriRuntime {
    flags: Arc<Flags>,
    containerizer: Arc<dyn Containerizer>,
    events: Arc<EventHub>,
    rates: stats::CpuRates,
    /// Where the HTTP endpoints listen (verbose Status), once bound.
    http_address: Option<std::net::SocketAddr>,
    streaming: Arc<StreamServer>,
}

impl CriRuntime {
    /// Must be called on the tokio runtime: it starts the events task.
    pub fn new(
        flags: Arc<Flags>,
        containerizer: Arc<dyn Containerizer>,
        streaming: Arc<StreamServer>,
    ) -> Self {
        Self {
            flags,
            events: EventHub::start(containerizer.clone()),
            containerizer,
            rates: stats::CpuRates::default(),
            http_address: None,
            streaming,
        }
    }

    pub fn with_http_address(mut self, address: std::net::SocketAddr) -> Self {
        self.http_address = Some(address);
        self
    }

    /// The container of a streaming request, which must be running.
    fn running(&self, id: String) -> Result<ContainerRecord, Status> {
        let id = required(id, "container_id")?;
        let c = self
            .containerizer
            .container(&id)
            .map_err(|e| containerizer_status(&e))?;
        if c.cri_state(&c.exit()) != cri::ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        Ok(c)
    }

    fn url(&self, pending: Pending) -> Result<String, Status> {
        self.streaming
            .url_for(pending)
            .map_err(|e| Status::resource_exhausted(e.to_string()))
    }

    /// The node's pod CIDR as pushed by kubelet (UpdateRuntimeConfig); kept by the
    /// containerizer's network, whose default network allocates from it.
    pub fn pod_cidr(&self) -> Option<String> {
        self.containerizer.pod_cidr()
    }

    /// The nested container `id` names (a unique prefix will do), with its pod as parent.
    fn nested(&self, id: &str) -> Result<ContainerId, Status> {
        let container = self
            .containerizer
            .container(id)
            .map_err(|e| containerizer_status(&e))?;
        Ok(ContainerId {
            value: container.id,
            parent: Some(container.pod_id),
        })
    }

    fn usage(&self) -> Usage<'_> {
        Usage {
            containerizer: &*self.containerizer,
            rates: &self.rates,
            writable_fs: self
                .flags
                .work_dir
                .join("provisioner")
                .join("containers")
                .display()
                .to_string(),
        }
    }

    fn conditions(&self) -> Vec<cri::RuntimeCondition> {
        // Re-read on every Status: a config dropped into the dir makes the node Ready
        // without a restart, as it does for other runtimes.
        let network = match self.containerizer.network_ready() {
            Ok(()) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(message) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message,
            },
        };
        vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            network,
        ]
    }
}

fn required(value: String, field: &str) -> Result<String, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )))
    } else {
        Ok(value)
    }
}

/// Kubernetes label selectors in the CRI are plain equality on every listed label.
fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Checks a pod CIDR as kubelet sends it: one CIDR, or two comma-separated for dual stack.
fn validate_pod_cidr(text: &str) -> Result<(), String> {
    for cidr in text.split(',').map(str::trim) {
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("'{cidr}' is not ADDRESS/PREFIX"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("'{cidr}' has an invalid address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => return Err(format!("'{cidr}' has an invalid prefix length")),
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl RuntimeService for CriRuntime {
    type GetContainerEventsStream = EventStream;

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
            let mut config = serde_json::to_value(&*self.flags)
                .map_err(|e| Status::internal(format!("cannot encode the configuration: {e}")))?;
            // The chain in effect (aliases expanded, implied isolators added), not the text.
            if let Ok(chain) = crate::isolators::registry::chain(&self.flags) {
                config["isolation"] = chain.iter().map(|i| i.as_str()).collect();
            }
            let config = config.to_string();
            info.insert("config".to_string(), config);
            info.insert(
                "podCIDR".to_string(),
                serde_json::to_string(&self.pod_cidr()).unwrap_or_default(),
            );
            if let Some(address) = self.http_address {
                info.insert("httpAddress".to_string(), address.to_string());
            }
            let (clients, cut_off) = self.events.counts();
            info.insert(
                "containerEvents".to_string(),
                serde_json::json!({"clients": clients, "cutOff": cut_off}).to_string(),
            );
            info.insert(
                "isolators".to_string(),
                serde_json::Value::Object(self.containerizer.isolator_status()).to_string(),
            );
            info.insert(
                "recovery".to_string(),
                self.containerizer.recovery_status().to_string(),
            );
            info.insert(
                "streaming".to_string(),
                serde_json::json!({"address": self.streaming.address().to_string()}).to_string(),
            );
        }
        let handler_features = Some(cri::RuntimeHandlerFeatures {
            recursive_read_only_mounts: false,
            user_namespaces: false,
        });
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: self.conditions(),
            }),
            info,
            // The default handler ("") and its name, as RuntimeClass may spell it.
            runtime_handlers: ["", "mesos"]
                .into_iter()
                .map(|name| cri::RuntimeHandler {
                    name: name.into(),
                    features: handler_features,
                })
                .collect(),
            // Strict is built (docker/runtime) and the identity is in ContainerStatus.user.
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: if self.flags.cgroup_driver == "systemd" {
                    cri::CgroupDriver::Systemd as i32
                } else {
                    cri::CgroupDriver::Cgroupfs as i32
                },
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
        self.containerizer
            .set_pod_cidr(Some(cidr))
            .await
            .map_err(|e| Status::internal(format!("pod CIDR not kept: {e}")))?;
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        validate::pod_config(&config)?;
        let launch = LaunchConfig::Sandbox {
            config,
            runtime_handler: request.runtime_handler,
        };
        let id = self
            .containerizer
            .clone()
            .launch(launch)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id.value,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = required(request.into_inner().pod_sandbox_id, "pod_sandbox_id")?;
        let sandbox = ContainerId {
            value: id,
            parent: None,
        };
        self.containerizer
            .stop(&sandbox, Duration::ZERO)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = required(request.into_inner().pod_sandbox_id, "pod_sandbox_id")?;
        let Ok(pod) = self.containerizer.pod(&id) else {
            return Ok(Response::new(cri::RemovePodSandboxResponse {}));
        };
        let sandbox = ContainerId {
            value: pod.id().to_string(),
            parent: None,
        };
        self.containerizer
            .destroy(&sandbox, Duration::ZERO)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let id = required(request.pod_sandbox_id, "pod_sandbox_id")?;
        let pod = self
            .containerizer
            .pod(&id)
            .map_err(|e| containerizer_status(&e))?;
        let mut info = HashMap::new();
        if request.verbose {
            let sandbox = ContainerId {
                value: pod.id().to_string(),
                parent: None,
            };
            let details = self
                .containerizer
                .status(&sandbox)
                .await
                .map_err(|e| containerizer_status(&e))?;
            info.insert("info".to_string(), details.to_string());
        }
        let containerizer = self.containerizer.clone();
        let pod_id = pod.id().to_string();
        // Statuses read exit records from disk: off the async threads.
        let containers_statuses = tokio::task::spawn_blocking(move || {
            container_statuses_of(containerizer.as_ref(), &pod_id)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(pod_status(&pod)),
            info,
            containers_statuses,
            timestamp: crate::containerizer::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let items = self
            .containerizer
            .pods()
            .iter()
            .filter(|p| filter.id.is_empty() || p.id().starts_with(&filter.id))
            .filter(|p| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == p.cri_state() as i32)
            })
            .filter(|p| labels_match(&p.info.config.labels, &filter.label_selector))
            .map(|p| cri::PodSandbox {
                id: p.id().to_string(),
                metadata: p.metadata(),
                state: p.cri_state() as i32,
                created_at: p.created_at,
                labels: p.info.config.labels.clone(),
                annotations: p.info.config.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            })
            .collect();
        let reply = cri::ListPodSandboxResponse { items };
        validate::reply_size("ListPodSandbox", &reply)?;
        Ok(Response::new(reply))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let pod_id = required(request.pod_sandbox_id, "pod_sandbox_id")?;
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        validate::container_config(&config)?;
        let launch = LaunchConfig::Nested {
            sandbox_id: pod_id,
            config,
        };
        let id = self
            .containerizer
            .clone()
            .launch(launch)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id.value,
        }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = required(request.into_inner().container_id, "container_id")?;
        let nested = self.nested(&id)?;
        self.containerizer
            .start(&nested)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        let id = required(request.container_id, "container_id")?;
        // Idempotent: stopping what is not there succeeds.
        let Ok(nested) = self.nested(&id) else {
            return Ok(Response::new(cri::StopContainerResponse {}));
        };
        let grace = Duration::from_secs(request.timeout.max(0) as u64);
        self.containerizer
            .stop(&nested, grace)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = required(request.into_inner().container_id, "container_id")?;
        let Ok(nested) = self.nested(&id) else {
            return Ok(Response::new(cri::RemoveContainerResponse {}));
        };
        self.containerizer
            .destroy(&nested, Duration::ZERO)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = self
            .containerizer
            .containers()
            .iter()
            .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
            .filter(|c| {
                filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id)
            })
            .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
            .filter_map(|c| {
                let state = c.cri_state(&c.exit());
                if filter
                    .state
                    .as_ref()
                    .is_some_and(|s| s.state != state as i32)
                {
                    return None;
                }
                Some(cri::Container {
                    id: c.id.clone(),
                    pod_sandbox_id: c.pod_id.clone(),
                    metadata: c.metadata(),
                    image: c.image_spec(),
                    image_ref: c.image_id.clone(),
                    state: state as i32,
                    created_at: c.created_at,
                    labels: c.config.labels.clone(),
                    annotations: c.config.annotations.clone(),
                    image_id: c.image_id.clone(),
                })
            })
            .collect();
        let reply = cri::ListContainersResponse { containers };
        validate::reply_size("ListContainers", &reply)?;
        Ok(Response::new(reply))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let id = required(request.container_id, "container_id")?;
        let nested = self.nested(&id)?;
        // The exit as the containerizer knows it (with the OOM killer's part), first:
        // reading it may update the record.
        let exit = self
            .containerizer
            .wait(&nested)
            .await
            .map_err(|e| containerizer_status(&e))?;
        let container = self
            .containerizer
            .container(&nested.value)
            .map_err(|e| containerizer_status(&e))?;
        let mut info = HashMap::new();
        if request.verbose {
            let nested = ContainerId {
                value: container.id.clone(),
                parent: Some(container.pod_id.clone()),
            };
            let details = self
                .containerizer
                .status(&nested)
                .await
                .map_err(|e| containerizer_status(&e))?;
            info.insert("info".to_string(), details.to_string());
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container_status(&container, exit)),
            info,
        }))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = required(request.into_inner().container_id, "container_id")?;
        let nested = self.nested(&id)?;
        self.containerizer
            .reopen_log(&nested)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let id = required(request.container_id, "container_id")?;
        validate::exec_cmd(&request.cmd)?;
        let nested = self.nested(&id)?;
        let result = self
            .containerizer
            .exec_sync(&nested, request.cmd, request.timeout)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: result.stdout(),
            stderr: result.stderr(),
            exit_code: result.exit_code,
        }))
    }

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(self.events.subscribe()))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let id = required(request.container_id, "container_id")?;
        if request.windows.is_some() {
            return Err(Status::invalid_argument(
                "windows: Windows resources on a Linux runtime",
            ));
        }
        let nested = self.nested(&id)?;
        // No Linux resources: nothing to change.
        let Some(linux) = request.linux else {
            return Ok(Response::new(cri::UpdateContainerResourcesResponse {}));
        };
        self.containerizer
            .update(&nested, &linux)
            .await
            .map_err(|e| containerizer_status(&e))?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    // ---- not implemented yet ----

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let mut request = request.into_inner();
        validate::exec_cmd(&request.cmd)?;
        validate::stream_flags(request.stdin, request.stdout, request.stderr, request.tty)?;
        let c = self.running(std::mem::take(&mut request.container_id))?;
        request.container_id = c.id;
        let url = self.url(Pending::Exec(request))?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let mut request = request.into_inner();
        validate::stream_flags(request.stdin, request.stdout, request.stderr, request.tty)?;
        let c = self.running(std::mem::take(&mut request.container_id))?;
        request.container_id = c.id;
        let url = self.url(Pending::Attach(request))?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let mut request = request.into_inner();
        let id = required(
            std::mem::take(&mut request.pod_sandbox_id),
            "pod_sandbox_id",
        )?;
        if let Some(p) = request.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!(
                "port: {p} is not a TCP port (1-65535)"
            )));
        }
        let pod = self
            .containerizer
            .pod(&id)
            .map_err(|e| containerizer_status(&e))?;
        if !pod.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                pod.id()
            )));
        }
        request.pod_sandbox_id = pod.id().to_string();
        let url = self.url(Pending::PortForward(request))?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = required(request.into_inner().container_id, "container_id")?;
        let nested = self.nested(&id)?;
        let record = self
            .containerizer
            .container(&nested.value)
            .map_err(|e| containerizer_status(&e))?;
        let stats = self.usage().container(&record).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let all = self.containerizer.containers();
        self.rates
            .retain(|id| all.iter().any(|c| c.id == id) || self.containerizer.pod(id).is_ok());
        let chosen: Vec<&ContainerRecord> = all
            .iter()
            .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
            .filter(|c| {
                filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id)
            })
            .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
            .collect();
        let stats = self.usage().containers(&chosen).await;
        let reply = cri::ListContainerStatsResponse { stats };
        validate::reply_size("ListContainerStats", &reply)?;
        Ok(Response::new(reply))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = required(request.into_inner().pod_sandbox_id, "pod_sandbox_id")?;
        let pod = self
            .containerizer
            .pod(&id)
            .map_err(|e| containerizer_status(&e))?;
        let stats = self.usage().pod(&pod).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        // As containerd: the pods that are ready (a stopped one has no network left).
        let pods: Vec<PodRecord> = self
            .containerizer
            .pods()
            .into_iter()
            .filter(|p| p.ready)
            .filter(|p| filter.id.is_empty() || p.id().starts_with(&filter.id))
            .filter(|p| labels_match(&p.info.config.labels, &filter.label_selector))
            .collect();
        let mut stats = Vec::with_capacity(pods.len());
        for result in self.usage().pods(&pods).await {
            match result {
                Ok(s) => stats.push(s),
                // Removed meanwhile: not listed, as if listed a moment later.
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let reply = cri::ListPodSandboxStatsResponse { stats };
        validate::reply_size("ListPodSandboxStats", &reply)?;
        Ok(Response::new(reply))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(not_yet("CheckpointContainer"))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        // As ListPodSandboxStats: the ready pods (a stopped one has nothing to measure).
        let pods: Vec<PodRecord> = self
            .containerizer
            .pods()
            .into_iter()
            .filter(|p| p.ready)
            .collect();
        let pod_metrics = self.usage().pod_metrics(&pods).await;
        let reply = cri::ListPodSandboxMetricsResponse { pod_metrics };
        validate::reply_size("ListPodSandboxMetrics", &reply)?;
        Ok(Response::new(reply))
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
