//! Shared set-up of the end-to-end tests: a registry with the harness images, a daemon
//! that pulls from it, and builders for CRI configs.
#![allow(dead_code)]

pub mod spdy;
pub mod ws;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use test_support::{Daemon, Registry, TestImages};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_cri-mesos");

pub struct Env {
    pub registry: Registry,
    pub images: TestImages,
    pub daemon: Daemon,
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
    /// Where pods write their logs (`log_directory`).
    pub logs: tempfile::TempDir,
}

impl Env {
    /// A registry with every harness image and a daemon allowed to pull from it.
    pub async fn start(extra_args: &[&str]) -> Env {
        Env::start_with_env(extra_args, &[]).await
    }

    /// [`start`](Self::start) with environment variables for the daemon.
    pub async fn start_with_env(extra_args: &[&str], envs: &[(&str, &str)]) -> Env {
        let registry = Registry::start().await.expect("registry");
        let images = test_support::push_all(&registry)
            .await
            .expect("push images");
        let logs = tempfile::tempdir().unwrap();
        let mut builder = Daemon::builder(BIN)
            .arg(format!("--insecure_registries={}", registry.addr()))
            .args(extra_args);
        for (key, value) in envs {
            builder = builder.env(key, value);
        }
        // Pods join no CNI network unless the test configures one: what the machine has
        // in /etc/cni/net.d must not change what the tests see.
        if !extra_args
            .iter()
            .any(|a| a.starts_with("--network_cni_config_dir"))
        {
            builder = builder.arg(format!(
                "--network_cni_config_dir={}",
                logs.path().join("no-cni-config").display()
            ));
        }
        let daemon = builder.start().await.expect("daemon");
        let runtime = daemon.runtime_client().await.unwrap();
        let image = daemon.image_client().await.unwrap();
        Env {
            registry,
            images,
            daemon,
            runtime,
            image,
            logs,
        }
    }

    pub async fn pull(&mut self, reference: &str) -> String {
        self.image
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: reference.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e}\n{}", self.daemon.log()))
            .into_inner()
            .image_ref
    }

    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let uid = format!("uid-{name}-{}", std::process::id());
        let log_directory = self.logs.path().join(name);
        std::fs::create_dir_all(&log_directory).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid,
                namespace: "test".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            annotations: HashMap::from([("note".to_string(), "kept as is: ünïcode".to_string())]),
            ..Default::default()
        }
    }

    pub async fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> String {
        match self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
        {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!("RunPodSandbox: {e}\n{}", self.daemon.log()),
        }
    }

    pub async fn create(
        &mut self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    /// Create + start, panicking with the daemon log on failure.
    pub async fn run(
        &mut self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = match self.create(pod_id, pod, config).await {
            Ok(id) => id,
            Err(e) => panic!("CreateContainer: {e}\n{}", self.daemon.log()),
        };
        if let Err(e) = self.start_container(&id).await {
            panic!("StartContainer: {e}\n{}", self.daemon.log());
        }
        id
    }

    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id).await;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still {:?} after {timeout:?}",
                status.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// ListPodSandbox without a filter.
    pub async fn pods(&mut self) -> Vec<cri::PodSandbox> {
        self.runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items
    }

    /// ListContainers without a filter.
    pub async fn containers(&mut self) -> Vec<cri::Container> {
        self.runtime
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
    }

    /// A container's verbose status details (the `info` key, JSON).
    pub async fn verbose_info(&mut self, id: &str) -> serde_json::Value {
        let reply = self
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        serde_json::from_str(&reply.info["info"]).unwrap()
    }

    /// A pod's verbose status details (the `info` key, JSON).
    pub async fn pod_verbose_info(&mut self, id: &str) -> serde_json::Value {
        let reply = self
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        serde_json::from_str(&reply.info["info"]).unwrap()
    }

    /// The runtime's verbose Status info (each value as the daemon wrote it).
    pub async fn runtime_info(&mut self) -> HashMap<String, String> {
        self.runtime
            .status(cri::StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner()
            .info
    }

    pub async fn stop_remove_pod(&mut self, pod_id: &str) {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .unwrap();
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .unwrap();
    }

    /// Mount points below the daemon's work and runtime dirs that are still mounted (the
    /// dirs themselves are shared bind mounts the daemon keeps, as Mesos does).
    pub fn mounts_under_daemon(&self) -> Vec<String> {
        let dirs = [self.daemon.work_dir(), self.daemon.runtime_dir()]
            .map(|d| format!("{}/", d.display()));
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| dirs.iter().any(|d| m.starts_with(d.as_str())))
            .map(str::to_string)
            .collect()
    }
}

pub fn container(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        ..Default::default()
    }
}

/// The pod's Linux security context, made if absent, for a test to set fields of.
pub fn pod_security(pod: &mut cri::PodSandboxConfig) -> &mut cri::LinuxSandboxSecurityContext {
    pod.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's Linux security context, made if absent.
pub fn container_security(
    config: &mut cri::ContainerConfig,
) -> &mut cri::LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The CRI log records of a file: (stream, tag, content).
pub fn log_records(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next().unwrap_or_default();
            assert!(
                time.ends_with('Z') && time.contains('T') && time.len() == 30,
                "RFC3339Nano time: {line:?}"
            );
            let stream = parts.next().unwrap_or_default().to_string();
            let tag = parts.next().unwrap_or_default().to_string();
            let content = parts.next().unwrap_or_default().to_string();
            assert!(
                stream == "stdout" || stream == "stderr",
                "stream in {line:?}"
            );
            assert!(tag == "P" || tag == "F", "tag in {line:?}");
            (stream, tag, content)
        })
        .collect()
}

pub fn log_path(status: &cri::ContainerStatus) -> PathBuf {
    PathBuf::from(&status.log_path)
}

/// Waits until `check` holds for the text of `path`.
pub async fn wait_for_log(path: &Path, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "log {} never matched; it has:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every mounted cgroup hierarchy: each cgroup v1 mount, controllers and named ones
/// (`name=systemd`) alike, and the cgroup2 mount, wherever this machine has them.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    cri_mesos_supervisor::mountinfo::read()
        .expect("read /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

pub fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// crictl (cri-tools v1.32, installed by hack/critest.sh and hack/test.sh).
pub fn crictl() -> String {
    let path = std::env::var("CRICTL").unwrap_or_else(|_| "/usr/local/bin/crictl".into());
    assert!(
        std::path::Path::new(&path).is_file(),
        "{path} is missing: hack/test.sh builds it (../shared/critest/build-cri-tools.sh)"
    );
    path
}

impl Env {
    /// Runs crictl against this daemon with `stdin`, as a user would.
    pub async fn crictl(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(crictl())
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", self.daemon.socket().display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).await.unwrap();
        drop(input);
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("crictl finished")
            .unwrap()
    }
}
