//! RunPodSandbox latency with CNI (Debian's bridge + host-local + portmap + loopback, a
//! host port per pod) next to the same call without a network (loopback only), through
//! the CRI socket; and the StopPodSandbox + RemovePodSandbox latency (CNI DEL). Prints the
//! median, p90, min and max of each. Run with `cargo bench --bench network`.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use test_support::Daemon;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_cri-mesos");
const PODS: usize = 30;
const BRIDGE: &str = "cmb-bench0";
const SUBNET: &str = "10.212.0.0/24";
const FIRST_HOST_PORT: i32 = 32100;

struct Figures {
    run: Vec<Duration>,
    teardown: Vec<Duration>,
}

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
    let name = format!("bench-{i}");
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
        port_mappings: vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: FIRST_HOST_PORT + i as i32,
            host_ip: String::new(),
        }],
        ..Default::default()
    }
}

/// Runs `PODS` sandboxes one after the other (all alive at the end, as on a node), then
/// stops and removes them.
async fn measure(rt: &mut RuntimeServiceClient<Channel>, logs: &Path) -> Figures {
    let mut run = Vec::new();
    let mut ids = Vec::new();
    for i in 0..PODS {
        let started = Instant::now();
        let id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config(i, logs)),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        run.push(started.elapsed());
        ids.push(id);
    }
    let mut teardown = Vec::new();
    for id in ids {
        let started = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("StopPodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("RemovePodSandbox");
        teardown.push(started.elapsed());
    }
    Figures { run, teardown }
}

async fn daemon(config_dir: &Path) -> Daemon {
    Daemon::builder(BIN)
        .arg(format!("--network_cni_config_dir={}", config_dir.display()))
        .arg("--network_cni_plugins_dir=/usr/lib/cni")
        .start()
        .await
        .expect("daemon")
}

#[tokio::main]
async fn main() {
    if !test_support::is_root() {
        eprintln!("network bench: needs root (namespaces, bridges, iptables); skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (with_cni, without) = (dir.path().join("net.d"), dir.path().join("empty"));
    std::fs::create_dir_all(&with_cni).unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.path().join("ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"},
        ],
    });
    std::fs::write(
        with_cni.join("10-bench.conflist"),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();

    println!("RunPodSandbox, {PODS} pods one after another (all running at the end):");
    let plain = {
        let daemon = daemon(&without).await;
        let mut rt = daemon.runtime_client().await.unwrap();
        measure(&mut rt, &dir.path().join("logs-plain")).await
    };
    let cni = {
        let daemon = daemon(&with_cni).await;
        let mut rt = daemon.runtime_client().await.unwrap();
        // One pod first: the bridge is made, the plugins' VERSION answers cached.
        let warm = measure_one(&mut rt, &dir.path().join("logs-warm")).await;
        println!("  first pod with CNI (makes the bridge)      {warm:7.1} ms");
        measure(&mut rt, &dir.path().join("logs-cni")).await
    };
    println!(
        "  with CNI (bridge+host-local+portmap+lo)     {}",
        summary(cni.run)
    );
    println!(
        "  without a network (loopback only)           {}",
        summary(plain.run)
    );
    println!("StopPodSandbox + RemovePodSandbox:");
    println!(
        "  with CNI (DEL of the chain)                 {}",
        summary(cni.teardown)
    );
    println!(
        "  without a network                           {}",
        summary(plain.teardown)
    );
    let _ = std::process::Command::new("ip")
        .args(["link", "del", BRIDGE])
        .status();
}

async fn measure_one(rt: &mut RuntimeServiceClient<Channel>, logs: &Path) -> f64 {
    let mut config = pod_config(PODS, logs);
    config.metadata.as_mut().unwrap().name = "bench-warm".into();
    let started = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("RemovePodSandbox");
    elapsed
}
