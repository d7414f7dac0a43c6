//! A pod supervisor's death: how long until the CRI shows the pod NOTREADY and its
//! container EXITED after a kill -9 of the supervisor (noticed through its pidfd, the
//! container's processes killed through its cgroup), and how long StopPodSandbox +
//! RemovePodSandbox then take. Prints the median, p90, min and max of each. Run with
//! `cargo bench --bench recovery` (root: namespaces, mounts, cgroups).

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use test_support::{Daemon, Registry};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_cri-mesos");
const PODS: usize = 20;

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:7.1} ms   p90 {:7.1} ms   min {:7.1} ms   max {:7.1} ms   (n={})",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn pod_config(i: usize, logs: &Path) -> cri::PodSandboxConfig {
    let name = format!("orphan-{i}");
    let log_directory = logs.join(&name);
    std::fs::create_dir_all(&log_directory).unwrap();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name,
        log_directory: log_directory.display().to_string(),
        ..Default::default()
    }
}

/// A pod with one running container; the pod's id, the container's id, the supervisor's pid.
async fn start(
    rt: &mut RuntimeServiceClient<Channel>,
    i: usize,
    image: &str,
    logs: &Path,
) -> (String, String, i32) {
    let config = pod_config(i, logs);
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "100000".into()],
                log_path: "sleeper.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    let info = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    (pod_id, id, info["supervisorPid"].as_i64().unwrap() as i32)
}

async fn lost(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str, id: &str) -> bool {
    let pod = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap();
    let container = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .unwrap();
    pod.state == cri::PodSandboxState::SandboxNotready as i32
        && container.state == cri::ContainerState::ContainerExited as i32
}

#[tokio::main]
async fn main() {
    if !test_support::is_root() {
        eprintln!("recovery bench: needs root (namespaces, mounts, cgroups); skipped");
        return;
    }
    let registry = Registry::start().await.expect("registry");
    let images = test_support::push_all(&registry).await.expect("images");
    let daemon = Daemon::builder(BIN)
        .arg(format!("--insecure_registries={}", registry.addr()))
        .start()
        .await
        .expect("daemon");
    let mut rt = daemon.runtime_client().await.unwrap();
    let mut image = daemon.image_client().await.unwrap();
    let reference = images.busybox.reference();
    image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage");
    let logs = tempfile::tempdir().unwrap();
    let (mut detect, mut cleanup) = (Vec::new(), Vec::new());
    for i in 0..PODS {
        let (pod_id, id, supervisor) = start(&mut rt, i, &reference, logs.path()).await;
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(supervisor),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 the supervisor");
        // The status calls themselves (~0.2 ms each) bound the resolution.
        while !lost(&mut rt, &pod_id, &id).await {
            assert!(killed.elapsed() < Duration::from_secs(30), "never NOTREADY");
        }
        detect.push(killed.elapsed());
        let started = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox");
        cleanup.push(started.elapsed());
    }
    println!("kill -9 of a pod's supervisor (one running container), {PODS} pods one at a time:");
    println!(
        "  until NOTREADY + EXITED through the CRI  {}",
        summary(detect)
    );
    println!(
        "  StopPodSandbox + RemovePodSandbox after  {}",
        summary(cleanup)
    );
}
