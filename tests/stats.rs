//! CRI stats through the socket, checked against the cgroup files the kernel keeps: a
//! container that burns cpu and one that holds memory, the filters, and pod stats.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Env, container};
use k8s_cri::v1 as cri;
use tonic::Code;

const MIB: u64 = 1024 * 1024;

/// A cgroup file of the container (verbose status names its cgroup), on this host's v1
/// controller mount or the cgroup2 one.
async fn cgroup_file(env: &mut Env, id: &str, v1: &str, v2: &str) -> u64 {
    let info = env.verbose_info(id).await;
    let relative = PathBuf::from(info["cgroup"].as_str().unwrap());
    let (dir, file) = v1.split_once('/').unwrap();
    let v1_path = PathBuf::from("/sys/fs/cgroup")
        .join(dir)
        .join(&relative)
        .join(file);
    let path = if v1_path.exists() {
        v1_path
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
            .join(&relative)
            .join(v2)
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    // cpu.stat's usage_usec on v2, a plain number on v1.
    match text.lines().find_map(|l| l.strip_prefix("usage_usec ")) {
        Some(us) => us.trim().parse::<u64>().unwrap() * 1000,
        None => text.trim().parse().unwrap(),
    }
}

async fn stats(env: &mut Env, id: &str) -> cri::ContainerStats {
    env.runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

async fn list(env: &mut Env, filter: cri::ContainerStatsFilter) -> Vec<String> {
    let mut ids: Vec<String> = env
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .into_iter()
        .map(|s| s.attributes.unwrap().id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
#[ignore = "needs root"]
async fn stats_agree_with_the_cgroup_files() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("stats");
    let pod_id = env.run_pod(&pod).await;
    let mut burner = container("burner", &image, &["sh", "-c", "while :; do :; done"]);
    burner.labels.insert("role".into(), "burn".into());
    let burner = env.run(&pod_id, &pod, burner).await;
    // 48 MiB of the pod's /dev/shm tmpfs, charged to the writer's memory cgroup.
    let mut holder = container(
        "holder",
        &image,
        &[
            "sh",
            "-c",
            "head -c 50331648 /dev/zero > /dev/shm/fill && echo full && sleep 1000",
        ],
    );
    holder.labels.insert("role".into(), "hold".into());
    let holder = env.run(&pod_id, &pod, holder).await;
    let log = common::log_path(&env.status(&holder).await);
    common::wait_for_log(&log, Duration::from_secs(30), |t| t.contains("full")).await;

    // Memory: the figure is the cgroup's, and holds the 48 MiB.
    let s = stats(&mut env, &holder).await;
    let attributes = s.attributes.as_ref().unwrap();
    assert_eq!(attributes.id, holder);
    assert_eq!(attributes.metadata.as_ref().unwrap().name, "holder");
    let memory = s.memory.unwrap();
    assert!(memory.timestamp > 0);
    let usage = memory.usage_bytes.unwrap().value;
    let file = cgroup_file(
        &mut env,
        &holder,
        "memory/memory.usage_in_bytes",
        "memory.current",
    )
    .await;
    assert!(usage >= 48 * MIB, "{usage}");
    assert!(
        usage.abs_diff(file) < 4 * MIB,
        "reported {usage}, file {file}"
    );
    // tmpfs pages are not inactive file cache: they are in the working set.
    let working_set = memory.working_set_bytes.unwrap().value;
    assert!(
        working_set >= 48 * MIB && working_set <= usage,
        "{working_set}"
    );
    assert!(memory.rss_bytes.is_some() && memory.page_faults.is_some());

    // Cpu: the cumulative figure is the cgroup's; the rate appears with a second sample
    // and is about one core's worth for a busy loop (bounded by the machine's cores).
    let first = stats(&mut env, &burner).await.cpu.unwrap();
    assert!(first.timestamp > 0);
    let used = first.usage_core_nano_seconds.unwrap().value;
    let file = cgroup_file(&mut env, &burner, "cpuacct/cpuacct.usage", "cpu.stat").await;
    assert!(
        used > 0 && used <= file,
        "reported {used}, file then {file}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = stats(&mut env, &burner).await.cpu.unwrap();
    let later = second.usage_core_nano_seconds.unwrap().value;
    let elapsed = (second.timestamp - first.timestamp) as u64;
    assert!(later > used, "{used} then {later}");
    let cores = second
        .usage_nano_cores
        .expect("a rate from the second sample")
        .value;
    let ncpu = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(cores, (later - used) * 1_000_000_000 / elapsed);
    assert!(
        cores > 100_000_000 && cores <= ncpu * 1_000_000_000 + 50_000_000,
        "{cores} nanocores"
    );

    // Filters: by id (a prefix will do), pod, labels.
    let mut both = vec![burner.clone(), holder.clone()];
    both.sort();
    assert_eq!(list(&mut env, Default::default()).await, both);
    let by_id = cri::ContainerStatsFilter {
        id: burner[..12].into(),
        ..Default::default()
    };
    assert_eq!(list(&mut env, by_id).await, vec![burner.clone()]);
    let by_label = cri::ContainerStatsFilter {
        label_selector: [("role".to_string(), "hold".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(list(&mut env, by_label).await, vec![holder.clone()]);
    let other_pod = cri::ContainerStatsFilter {
        pod_sandbox_id: "ffffffff".into(),
        ..Default::default()
    };
    assert_eq!(list(&mut env, other_pod).await, Vec::<String>::new());

    // The pod: its cgroup holds both containers and the supervisor.
    let pod_stats = env
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(pod_stats.attributes.unwrap().id, pod_id);
    let linux = pod_stats.linux.unwrap();
    assert!(linux.memory.unwrap().usage_bytes.unwrap().value >= usage);
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value >= later);
    // Supervisor, burner, holder's shell and its sleep.
    assert!(linux.process.unwrap().process_count.unwrap().value >= 3);
    let mut in_pod: Vec<String> = linux
        .containers
        .iter()
        .map(|c| c.attributes.as_ref().unwrap().id.clone())
        .collect();
    in_pod.sort();
    assert_eq!(in_pod, both);
    let listed = env
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);

    // The same figures as cAdvisor's metric families (kubelet's CRI metrics path): every
    // metric of a described family, with a value per label key, agreeing with the files.
    let descriptors = env
        .runtime
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
    ] {
        assert!(descriptors.iter().any(|d| d.name == name), "{name}");
    }
    let before = cgroup_file(&mut env, &burner, "cpuacct/cpuacct.usage", "cpu.stat").await;
    let pod_metrics = env
        .runtime
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let after = cgroup_file(&mut env, &burner, "cpuacct/cpuacct.usage", "cpu.stat").await;
    let file = cgroup_file(
        &mut env,
        &holder,
        "memory/memory.usage_in_bytes",
        "memory.current",
    )
    .await;
    assert_eq!(pod_metrics.len(), 1);
    assert_eq!(pod_metrics[0].pod_sandbox_id, pod_id);
    let of = |id: &str, name: &str| -> cri::Metric {
        let m = pod_metrics[0]
            .container_metrics
            .iter()
            .find(|c| c.container_id == id)
            .unwrap_or_else(|| panic!("no metrics of {id}"));
        m.metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} of {id}: {m:?}"))
            .clone()
    };
    for c in pod_metrics[0].container_metrics.iter() {
        for m in &c.metrics {
            let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{m:?}");
            assert_eq!(m.label_values[0], c.container_id);
        }
    }
    let cpu = of(&burner, "container_cpu_usage_seconds_total");
    let seconds = cpu.value.unwrap().value;
    assert!(
        seconds >= before / 1_000_000_000 && seconds <= after / 1_000_000_000,
        "{seconds} s, the file said {before} then {after} ns"
    );
    assert_eq!(cpu.label_values[1], "burner");
    let memory = of(&holder, "container_memory_usage_bytes")
        .value
        .unwrap()
        .value;
    assert!(
        memory.abs_diff(file) < 4 * MIB,
        "reported {memory}, file {file}"
    );

    // crictl shows them as a user reads them: the busy loop's cpu share in the table
    // (crictl samples twice, a second apart), and the pod's figures.
    let out = env.crictl(&["stats"], b"").await;
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let row = table
        .lines()
        .find(|l| l.contains(" burner "))
        .unwrap_or_else(|| panic!("no burner in\n{table}"));
    let share: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(share > 10.0, "{row}");
    let out = env
        .crictl(&["stats", "-o", "json", "--label", "role=hold"], b"")
        .await;
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = json["stats"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{json}");
    assert_eq!(listed[0]["attributes"]["id"], holder.as_str());
    let shown: u64 = listed[0]["memory"]["workingSetBytes"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(shown >= 48 * MIB, "{json}");
    let out = env.crictl(&["statsp", "-o", "json"], b"").await;
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["stats"][0]["attributes"]["id"],
        pod_id.as_str(),
        "{json}"
    );
    assert_eq!(
        json["stats"][0]["linux"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let err = env
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: "nosuchcontainer".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    env.stop_remove_pod(&pod_id).await;
}

/// A daemon measuring disks every second and enforcing quotas, busybox pulled, and a pod.
async fn quota_env(pod_name: &str) -> (Env, String, cri::PodSandboxConfig, String) {
    let mut env = Env::start(&[
        "--container_disk_watch_interval=1secs",
        "--enforce_container_disk_quota",
    ])
    .await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config(pod_name);
    let pod_id = env.run_pod(&pod).await;
    (env, image, pod, pod_id)
}

#[tokio::test]
#[ignore = "needs root"]
async fn disk_use_is_measured_and_a_quota_is_enforced() {
    let (mut env, image, pod, pod_id) = quota_env("disk").await;

    // 8 MiB written into the rootfs land in the writable layer.
    let writer = env
        .run(
            &pod_id,
            &pod,
            container(
                "writer",
                &image,
                &[
                    "sh",
                    "-c",
                    "head -c 8388608 /dev/zero > /data && sleep 1000",
                ],
            ),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let used = loop {
        let s = stats(&mut env, &writer).await;
        if let Some(layer) = s.writable_layer.clone()
            && layer.used_bytes.as_ref().unwrap().value >= 8 * MIB
        {
            assert!(layer.inodes_used.unwrap().value >= 1);
            assert!(!layer.fs_id.unwrap().mountpoint.is_empty());
            break layer.used_bytes.unwrap().value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 8 MiB measured: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(used < 16 * MIB, "{used}");

    // The container filesystem ImageFsInfo names is where the writable layers are, and
    // holds at least this one's bytes.
    let fs = env
        .image
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let containers = &fs.container_filesystems;
    assert_eq!(containers.len(), 1, "{fs:?}");
    let layer = stats(&mut env, &writer).await.writable_layer.unwrap();
    assert_eq!(containers[0].fs_id, layer.fs_id);
    assert!(containers[0].used_bytes.as_ref().unwrap().value >= 8 * MIB);
    assert_ne!(containers[0].fs_id, fs.image_filesystems[0].fs_id);
    // And kubelet's CRI metrics path sees the same measure.
    let metrics = env
        .runtime
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let fs_usage = metrics[0]
        .container_metrics
        .iter()
        .find(|c| c.container_id == writer)
        .and_then(|c| {
            c.metrics
                .iter()
                .find(|m| m.name == "container_fs_usage_bytes")
        })
        .expect("container_fs_usage_bytes of the writer");
    assert!(fs_usage.value.as_ref().unwrap().value >= 8 * MIB);
    assert!(fs_usage.timestamp > 0, "a measure says when it was taken");

    // Past its quota: killed, and the status names the quota.
    let mut hog = container(
        "hog",
        &image,
        &[
            "sh",
            "-c",
            "head -c 20971520 /dev/zero > /data && sleep 1000",
        ],
    );
    hog.annotations
        .insert("cri-mesos.io/disk-limit".into(), "10Mi".into());
    let hog = env.run(&pod_id, &pod, hog).await;
    let status = env.wait_exited(&hog, Duration::from_secs(30)).await;
    assert_eq!(status.reason, "DiskQuotaExceeded", "{status:?}");
    assert!(
        status.message.contains("10485760") && status.message.contains("disk-limit"),
        "{}",
        status.message
    );
    assert_eq!(status.exit_code, 137);
    // The one within its means runs on.
    assert_eq!(
        env.status(&writer).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    let mut bad = container("bad", &image, &["true"]);
    bad.annotations
        .insert("cri-mesos.io/disk-limit".into(), "lots".into());
    let err = env.create(&pod_id, &pod, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .starts_with("config.annotations[cri-mesos.io/disk-limit]"),
        "{}",
        err.message()
    );
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_disk_limit_without_enforcement_is_refused() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("no-enforce");
    let pod_id = env.run_pod(&pod).await;
    let mut c = container("c", &image, &["true"]);
    c.annotations
        .insert("cri-mesos.io/disk-limit".into(), "1Gi".into());
    let err = env.create(&pod_id, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("--enforce_container_disk_quota"),
        "{}",
        err.message()
    );
    assert!(env.containers().await.is_empty());
    env.stop_remove_pod(&pod_id).await;
}

/// `disk/du` after a daemon crash: a container that ran on is measured again and held to
/// its quota, as before (its state is rebuilt from the checkpoints at recovery).
#[tokio::test]
#[ignore = "needs root"]
async fn disk_measures_and_quotas_survive_a_daemon_crash() {
    let (mut env, image, pod, pod_id) = quota_env("disk-recovery").await;
    // Within its quota until told (a file in its rootfs), then past it.
    let mut hog = container(
        "hog",
        &image,
        &[
            "sh",
            "-c",
            "head -c 4194304 /dev/zero > /small; \
             while [ ! -e /go ]; do sleep 0.2; done; \
             head -c 20971520 /dev/zero > /data; sleep 1000",
        ],
    );
    hog.annotations
        .insert("cri-mesos.io/disk-limit".into(), "10Mi".into());
    let hog = env.run(&pod_id, &pod, hog).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stats(&mut env, &hog)
        .await
        .writable_layer
        .is_none_or(|l| l.used_bytes.unwrap().value < 4 * MIB)
    {
        assert!(std::time::Instant::now() < deadline, "no first measure");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    env.daemon.kill9().unwrap();
    env.daemon.restart().await.unwrap();
    env.runtime = env.daemon.runtime_client().await.unwrap();
    env.image = env.daemon.image_client().await.unwrap();
    // Measured again after the restart, without being created again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let layer = loop {
        if let Some(layer) = stats(&mut env, &hog).await.writable_layer {
            break layer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not measured after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(layer.used_bytes.unwrap().value >= 4 * MIB);
    assert_eq!(
        env.status(&hog).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // Past the quota now: killed, with the quota named, as before the crash.
    let touched = env.exec(&hog, &["touch", "/go"], 10).await.unwrap();
    assert_eq!(touched.exit_code, 0, "{touched:?}");
    let status = env.wait_exited(&hog, Duration::from_secs(30)).await;
    assert_eq!(status.reason, "DiskQuotaExceeded", "{status:?}");
    env.stop_remove_pod(&pod_id).await;
}
