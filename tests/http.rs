//! The agent's HTTP endpoints on `--http_address`: Mesos's `/monitor/statistics` and
//! `/containers`, Prometheus `/metrics` (parsed as Prometheus parses it), `/health`.

mod common;

use common::{Env, container};
use k8s_cri::v1 as cri;
use serde_json::Value;

async fn http_address(env: &mut Env) -> String {
    env.runtime_info().await["httpAddress"].clone()
}

async fn get(address: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.text().await.unwrap())
}

const STATISTICS: &[&str] = &[
    "timestamp",
    "cpus_user_time_secs",
    "cpus_system_time_secs",
    "cpus_limit",
    "cpus_nr_periods",
    "cpus_nr_throttled",
    "cpus_throttled_time_secs",
    "mem_total_bytes",
    "mem_limit_bytes",
    "mem_rss_bytes",
    "mem_cache_bytes",
    "mem_anon_bytes",
    "mem_file_bytes",
    "mem_mapped_file_bytes",
    "disk_used_bytes",
    "disk_limit_bytes",
    "net_rx_bytes",
    "net_rx_packets",
    "net_rx_errors",
    "net_rx_dropped",
    "net_tx_bytes",
    "net_tx_packets",
    "net_tx_errors",
    "net_tx_dropped",
    "processes",
    "threads",
];

#[tokio::test]
#[ignore = "needs root"]
async fn monitor_containers_metrics_and_health() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut pod = env.pod_config("http");
    pod.metadata.as_mut().unwrap().namespace = "team-a".into();
    let pod_id = env.run_pod(&pod).await;
    let mut config = container("web", &image, &["sleep", "1000"]);
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.resources = Some(cri::LinuxContainerResources {
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let id = env.run(&pod_id, &pod, config).await;
    let address = http_address(&mut env).await;
    assert!(address.starts_with("127.0.0.1:"), "{address}");

    assert_eq!(get(&address, "/health").await, (200, "OK\n".to_string()));
    assert_eq!(get(&address, "/no/such/endpoint").await.0, 404);

    for path in ["/monitor/statistics", "/monitor/statistics.json"] {
        let (code, body) = get(&address, path).await;
        assert_eq!(code, 200);
        let entries: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(entries.len(), 1, "{body}");
        let e = &entries[0];
        assert_eq!(e["container_id"], id.as_str());
        assert_eq!(e["executor_id"], pod_id.as_str());
        assert_eq!(e["executor_name"], "team-a/http");
        assert_eq!(e["framework_id"], "team-a");
        assert_eq!(e["source"], "web");
        let s = e["statistics"].as_object().unwrap();
        for field in STATISTICS {
            assert!(s.contains_key(*field), "{field} missing in {body}");
        }
        assert_eq!(s["cpus_limit"], 0.5);
        assert_eq!(s["mem_limit_bytes"], 64 << 20);
        assert!(s["mem_total_bytes"].as_u64().unwrap() > 0);
        assert_eq!(s["processes"], 1);
        assert_eq!(s["threads"], 1);
        assert!(s["timestamp"].as_f64().unwrap() > 1.0e9);
    }

    let (code, body) = get(&address, "/containers").await;
    assert_eq!(code, 200);
    let entries: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(entries.len(), 1);
    let status = &entries[0]["container_status"];
    assert_eq!(status["container_id"]["value"], id.as_str());
    assert_eq!(status["container_id"]["parent"]["value"], pod_id.as_str());
    assert_eq!(status["state"], "CONTAINER_RUNNING");
    assert!(status["executor_pid"].as_i64().unwrap() > 1);

    // A refused call is counted under its code.
    let err = env
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: "nosuchcontainer".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let (code, text) = get(&address, "/metrics").await;
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    };
    let run = "/runtime.v1.RuntimeService/RunPodSandbox";
    assert_eq!(
        value(
            "cri_mesos_grpc_requests_total",
            &[("method", run), ("code", "OK")]
        ),
        1.0
    );
    let status_rpc = "/runtime.v1.RuntimeService/ContainerStatus";
    assert_eq!(
        value(
            "cri_mesos_grpc_requests_total",
            &[("method", status_rpc), ("code", "NotFound")]
        ),
        1.0
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "cri_mesos_grpc_request_duration_seconds"
                && s.labels.get("method") == Some(run)
        })
        .expect("a latency histogram for RunPodSandbox");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().unwrap().count, 1.0, "{buckets:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(value("cri_mesos_pods", &[("state", "ready")]), 1.0);
    assert_eq!(value("cri_mesos_containers", &[("state", "running")]), 1.0);
    assert!(value("cri_mesos_image_pulled_bytes_total", &[]) > 100_000.0);
    assert_eq!(value("cri_mesos_oom_kills_total", &[]), 0.0);
    env.stop_remove_pod(&pod_id).await;
}
