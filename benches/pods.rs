//! Pod lifecycle latency and memory per pod, through the CRI socket.
//!
//! Prints the median of RunPodSandbox+CreateContainer+StartContainer and of
//! StopPodSandbox+RemovePodSandbox over 20+ pods, then, with 20 pods running, memory per
//! pod = (PSS of every supervisor + the daemon's PSS growth over idle) / 20, and runtime
//! processes per pod. Run with `hack/bench.sh` (builds both release binaries first).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use test_support::{Daemon, Registry};

const ROUNDS: usize = 25;
const RUNNING: usize = 20;

fn pss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Pss:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pod(name: &str, logs: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

fn container(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "100000".into()],
        log_path: "sleeper/0.log".into(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    if !test_support::is_root() {
        eprintln!("pods bench: needs root; skipped");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_cri-mesos");
    let supervisor = std::path::Path::new(bin).with_file_name("cri-mesos-supervisor");
    assert!(
        supervisor.exists(),
        "build {} first (hack/bench.sh does)",
        supervisor.display()
    );
    let registry = Registry::start().await.expect("registry");
    let images = test_support::push_all(&registry).await.expect("push");
    let daemon = Daemon::builder(bin)
        .arg(format!("--insecure_registries={}", registry.addr()))
        .env("RUST_LOG", "warn")
        .start()
        .await
        .expect("daemon");
    let mut rt = daemon.runtime_client().await.unwrap();
    let mut img = daemon.image_client().await.unwrap();
    let image = images.busybox.reference();
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("pull");
    let logs = tempfile::tempdir().unwrap();
    let daemon_pid = daemon.pid().unwrap() as i32;

    // Warm-up so one-off costs (first supervisor exec, page cache) stay out of the figures.
    let start_pod = |rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
                     name: String| {
        let mut rt = rt.clone();
        let config = pod(&name, logs.path());
        let image = image.clone();
        async move {
            let id = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .expect("runp")
                .into_inner()
                .pod_sandbox_id;
            let cid = rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: id.clone(),
                    config: Some(container(&image)),
                    sandbox_config: Some(config),
                })
                .await
                .expect("create")
                .into_inner()
                .container_id;
            rt.start_container(cri::StartContainerRequest { container_id: cid })
                .await
                .expect("start");
            id
        }
    };
    let stop_pod = |rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
                    id: String| {
        let mut rt = rt.clone();
        async move {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("stopp");
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .expect("rmp");
        }
    };
    let id = start_pod(&mut rt, "warmup".into()).await;
    stop_pod(&mut rt, id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_pss = pss_kb(daemon_pid);

    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for i in 0..ROUNDS {
        let t = Instant::now();
        let id = start_pod(&mut rt, format!("lat-{i}")).await;
        starts.push(t.elapsed());
        let t = Instant::now();
        stop_pod(&mut rt, id).await;
        stops.push(t.elapsed());
    }

    let mut running = Vec::new();
    for i in 0..RUNNING {
        running.push(start_pod(&mut rt, format!("mem-{i}")).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut supervisors = HashMap::new();
    for id in &running {
        let status = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        supervisors.insert(id.clone(), info["supervisorPid"].as_i64().unwrap() as i32);
    }
    let supervisor_pss: u64 = supervisors.values().map(|p| pss_kb(*p)).sum();
    let daemon_growth = pss_kb(daemon_pid).saturating_sub(idle_pss);
    // Runtime processes: every process whose executable is one of ours, but the daemon.
    let ours = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == supervisor)
        })
        .count();

    println!("cri-mesos pods bench (release build, busybox `sleep`, one container per pod)");
    println!(
        "runp+create+start median of {ROUNDS}: {:>8.1} ms",
        median(starts).as_secs_f64() * 1000.0
    );
    println!(
        "stopp+rmp          median of {ROUNDS}: {:>8.1} ms",
        median(stops).as_secs_f64() * 1000.0
    );
    println!("with {RUNNING} pods running:");
    println!(
        "  supervisors PSS total {supervisor_pss} kB, daemon PSS growth {daemon_growth} kB (idle {idle_pss} kB)"
    );
    println!(
        "  memory per pod: {:.0} kB",
        (supervisor_pss + daemon_growth) as f64 / RUNNING as f64
    );
    println!(
        "  runtime processes per pod: {:.2} (supervisors: {ours}; plus one daemon per node)",
        ours as f64 / RUNNING as f64
    );
    for id in running {
        stop_pod(&mut rt, id).await;
    }
}
