//! What kubelet's stats calls cost with 100 running containers (10 pods of 10, `disk/du`
//! measuring them): ListContainerStats of all of them, ContainerStats of one,
//! ListPodSandboxStats, ListPodSandboxMetrics and ImageFsInfo, through the CRI socket.
//! Prints the median, p90 and max of each, per call and per container, and the daemon
//! threads and children before and after (the stats path reads files; it forks nothing).
//! Run with `cargo bench --bench stats` (root: pods need namespaces and cgroups).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_cri::v1 as cri;
use test_support::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_cri-mesos");
const PODS: usize = 10;
const PER_POD: usize = 10;
const ROUNDS: usize = 30;

fn summary(label: &str, mut v: Vec<Duration>, per: usize) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = v[v.len() / 2];
    println!(
        "{label:<34} median {:7.2} ms   p90 {:7.2} ms   max {:7.2} ms   ({:.3} ms per container, n={})",
        ms(median),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1]),
        ms(median) / per as f64,
        v.len()
    );
}

/// Threads of the daemon and its children (a stats call that forked would show here).
fn threads_and_children(pid: u32) -> (usize, usize) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .map(|c| c.split_whitespace().count())
        .sum();
    (threads, children)
}

fn pod(i: usize, logs: &Path) -> cri::PodSandboxConfig {
    let name = format!("stats-{i}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

fn container(j: usize, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: format!("c{j}"),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "100000".into()],
        log_path: format!("c{j}/0.log"),
        ..Default::default()
    }
}

async fn timed<T, F, Fut>(rounds: usize, mut call: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        call().await?;
        times.push(t.elapsed());
    }
    Ok(times)
}

async fn bench() -> Result<()> {
    let registry = test_support::Registry::start().await?;
    let images = test_support::push_all(&registry).await?;
    let image = images.busybox.reference();
    let logs = tempfile::tempdir()?;
    let daemon = Daemon::builder(BIN)
        .arg(format!("--insecure_registries={}", registry.addr()))
        .arg(format!(
            "--network_cni_config_dir={}",
            logs.path().join("no-cni").display()
        ))
        .arg("--container_disk_watch_interval=5secs")
        .env("RUST_LOG", "warn")
        .start()
        .await?;
    let mut rt = daemon.runtime_client().await?;
    let mut im = daemon.image_client().await?;
    im.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mut pods = Vec::new();
    let result = async {
        let mut one = String::new();
        for i in 0..PODS {
            let config = pod(i, logs.path());
            let id = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id;
            pods.push(id.clone());
            for j in 0..PER_POD {
                let cid = rt
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: id.clone(),
                        config: Some(container(j, &image)),
                        sandbox_config: Some(config.clone()),
                    })
                    .await?
                    .into_inner()
                    .container_id;
                rt.start_container(cri::StartContainerRequest {
                    container_id: cid.clone(),
                })
                .await?;
                one = cid;
            }
        }
        let n = PODS * PER_POD;
        // A round of disk/du measures first, as on a node that has been up a while.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let listed = rt
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await?
            .into_inner()
            .stats;
        anyhow::ensure!(
            listed.len() == n,
            "{} stats for {n} containers",
            listed.len()
        );
        let measured = listed.iter().filter(|s| s.writable_layer.is_some()).count();
        let pid = daemon.pid().context("daemon pid")?;
        let before = threads_and_children(pid);

        println!("stats bench: {PODS} pods x {PER_POD} running containers, {ROUNDS} rounds each");
        let t = timed(ROUNDS, || {
            let mut rt = rt.clone();
            async move {
                rt.list_container_stats(cri::ListContainerStatsRequest { filter: None })
                    .await
            }
        })
        .await?;
        summary("ListContainerStats (100)", t, n);
        let t = timed(ROUNDS, || {
            let (mut rt, container_id) = (rt.clone(), one.clone());
            async move {
                rt.container_stats(cri::ContainerStatsRequest { container_id })
                    .await
            }
        })
        .await?;
        summary("ContainerStats (1)", t, 1);
        let t = timed(ROUNDS, || {
            let mut rt = rt.clone();
            async move {
                rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
                    .await
            }
        })
        .await?;
        summary("ListPodSandboxStats (10 x 10)", t, n);
        let t = timed(ROUNDS, || {
            let mut rt = rt.clone();
            async move {
                rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
                    .await
            }
        })
        .await?;
        summary("ListPodSandboxMetrics (10 x 10)", t, n);
        let t = timed(ROUNDS, || {
            let mut im = im.clone();
            async move { im.image_fs_info(cri::ImageFsInfoRequest {}).await }
        })
        .await?;
        summary("ImageFsInfo", t, 1);

        let after = threads_and_children(pid);
        println!(
            "daemon threads {} -> {}, children {} -> {}; writable layers measured: {measured}/{n}",
            before.0, after.0, before.1, after.1
        );
        anyhow::Ok(())
    }
    .await;
    for id in &pods {
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
    }
    result
}

#[tokio::main]
async fn main() {
    if !test_support::is_root() {
        eprintln!("stats bench: needs root; skipped");
        return;
    }
    if let Err(e) = bench().await {
        eprintln!("stats bench failed: {e:#}");
        std::process::exit(1);
    }
}
