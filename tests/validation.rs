//! Bad input through the CRI socket: each is refused before anything is created, with
//! `InvalidArgument` naming the field, a message that quotes little of it, nothing
//! written outside the pod's log directory and nothing left behind.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{Env, container};
use k8s_cri::v1 as cri;
use tonic::Code;

/// No pod, no container, no pod dir, no checkpoint and no mount is left by refused calls.
async fn assert_nothing_left(env: &mut Env, expected_pods: usize) {
    let pods = env.pods().await;
    assert_eq!(pods.len(), expected_pods, "{pods:?}");
    let containers = env.containers().await;
    assert!(containers.is_empty(), "{containers:?}");
    let count = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    assert_eq!(
        count(&env.daemon.runtime_dir().join("pods")),
        expected_pods,
        "pod dirs"
    );
    assert_eq!(
        count(&env.daemon.work_dir().join("meta").join("pods")),
        expected_pods,
        "pod checkpoints"
    );
    assert_eq!(
        count(&env.daemon.work_dir().join("meta").join("containers")),
        0,
        "container checkpoints"
    );
}

async fn try_run_pod(
    env: &mut Env,
    config: &cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    try_run_pod_with(env, config, "").await
}

async fn try_run_pod_with(
    env: &mut Env,
    config: &cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    env.runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

#[track_caller]
fn assert_invalid(result: Result<String, tonic::Status>, field: &str) {
    let err = result.expect_err(field);
    assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
    assert!(
        err.message().starts_with(&format!("{field}: ")),
        "names {field}: {}",
        err.message()
    );
    assert!(err.message().len() < 600, "short: {}", err.message().len());
}

#[tokio::test]
#[ignore = "needs root"]
async fn an_empty_hostname_is_the_nodes_and_a_long_pod_name_is_fine() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    // critest's pods: no hostname and a name past sethostname's 64 bytes.
    let name = format!(
        "pod-with-a-name-longer-than-any-hostname-may-be-{}",
        "x".repeat(40)
    );
    let mut pod = env.pod_config(&name);
    pod.hostname = String::new();
    let pod_id = env.run_pod(&pod).await;
    let c = env
        .run(&pod_id, &pod, container("c", &image, &["sleep", "1000"]))
        .await;
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    for cmd in [&["hostname"][..], &["cat", "/etc/hostname"]] {
        let out = env.exec(&c, cmd, 10).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), node, "{cmd:?}");
    }
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn bad_pod_configs_are_refused_naming_the_field() {
    let mut env = Env::start(&[]).await;
    let base = env.pod_config("bad");

    for hostname in [
        "two\nlines".to_string(),
        "a".repeat(100),
        "Upper".into(),
        "under_score".into(),
        "a..b".into(),
        format!("{}.b", "a".repeat(64)),
    ] {
        let mut pod = base.clone();
        pod.hostname = hostname;
        assert_invalid(try_run_pod(&mut env, &pod).await, "config.hostname");
    }

    let mut pod = base.clone();
    pod.log_directory = "relative/logs".into();
    assert_invalid(try_run_pod(&mut env, &pod).await, "config.log_directory");

    let mut pod = base.clone();
    pod.annotations = HashMap::from([("big".to_string(), "v".repeat(300 * 1024))]);
    assert_invalid(try_run_pod(&mut env, &pod).await, "config.annotations");
    let mut pod = base.clone();
    pod.labels = (0..2000)
        .map(|i| (format!("example.com/label-{i}"), "v".repeat(40)))
        .collect();
    assert_invalid(try_run_pod(&mut env, &pod).await, "config.labels");

    let dns = |servers: &[&str], searches: &[&str], options: &[&str]| {
        let mut pod = base.clone();
        pod.dns_config = Some(cri::DnsConfig {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            searches: searches.iter().map(|s| s.to_string()).collect(),
            options: options.iter().map(|s| s.to_string()).collect(),
        });
        pod
    };
    let pod = dns(&["10.0.0.10\nnameserver 6.6.6.6"], &[], &[]);
    assert_invalid(
        try_run_pod(&mut env, &pod).await,
        "config.dns_config.servers[0]",
    );
    let pod = dns(&["10.0.0.10"], &["svc.local\noptions debug"], &[]);
    assert_invalid(
        try_run_pod(&mut env, &pod).await,
        "config.dns_config.searches[0]",
    );
    let pod = dns(
        &["10.0.0.10"],
        &["svc.local"],
        &["ndots:5", "rotate attempts:9"],
    );
    assert_invalid(
        try_run_pod(&mut env, &pod).await,
        "config.dns_config.options[1]",
    );

    let mut pod = base.clone();
    pod.port_mappings = vec![cri::PortMapping {
        container_port: 70000,
        ..Default::default()
    }];
    assert_invalid(
        try_run_pod(&mut env, &pod).await,
        "config.port_mappings[0].container_port",
    );
    let mut pod = base.clone();
    pod.port_mappings = vec![cri::PortMapping {
        container_port: 80,
        host_port: 8080,
        host_ip: "not-an-ip".into(),
        ..Default::default()
    }];
    assert_invalid(
        try_run_pod(&mut env, &pod).await,
        "config.port_mappings[0].host_ip",
    );

    // Sysctls a pod must not set: not namespaced, or in a namespace it shares with the
    // host; and one the kernel refuses (after the namespaces were made: undone).
    for (sysctl, value, namespaces, says) in [
        ("kernel.pid_max", "4096", None, "not a namespaced sysctl"),
        ("vm/overcommit_memory", "1", None, "not a namespaced sysctl"),
        (
            "net.ipv4.ip_unprivileged_port_start",
            "0",
            Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            "host's network namespace",
        ),
        (
            "kernel.shm_rmid_forced",
            "1",
            Some(cri::NamespaceOption {
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            "host's IPC namespace",
        ),
        ("kernel.shm_rmid_forced", "banana", None, "Invalid argument"),
        ("net.ipv4.conf.eth9.forwarding", "1", None, "No such file"),
    ] {
        let mut pod = base.clone();
        pod.linux.get_or_insert_with(Default::default).sysctls =
            HashMap::from([(sysctl.to_string(), value.to_string())]);
        if let Some(options) = namespaces {
            common::pod_security(&mut pod).namespace_options = Some(options);
        }
        let result = try_run_pod(&mut env, &pod).await;
        let message = result.as_ref().err().map(|e| e.message().to_string());
        assert_invalid(result, "config.linux.sysctls");
        let message = message.unwrap();
        assert!(
            message.contains(sysctl) && message.contains(says),
            "{sysctl}: {message}"
        );
    }
    // The host's own values are untouched by all of that.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim(),
        "4096"
    );

    // Security fields that are not built are refused, never ignored.
    let mut pod = base.clone();
    common::pod_security(&mut pod).namespace_options = Some(cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_invalid(
        try_run_pod(&mut env, &pod).await,
        "config.linux.security_context.namespace_options.userns_options.mode",
    );
    let mut pod = base.clone();
    common::pod_security(&mut pod).apparmor = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "my-profile".into(),
    });
    let err = try_run_pod(&mut env, &pod).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.message(),
        "config.linux.security_context.apparmor: apparmor is not supported on this host"
    );

    // A 10k-character input is quoted short, wherever it lands in a message.
    let huge = "h".repeat(10_000);
    let err = try_run_pod_with(&mut env, &base, &huge).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().len() < 600, "{}", err.message().len());
    let err = env
        .image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: format!("127.0.0.1:1/{huge}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().len() <= 1100, "{}", err.message().len());

    assert_nothing_left(&mut env, 0).await;
    // The same config, once valid, runs: nothing of the refusals stands in its way.
    let pod_id = env.run_pod(&base).await;
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn log_paths_stay_inside_the_log_directory() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("logs");
    let pod_id = env.run_pod(&pod).await;
    let log_dir = Path::new(&pod.log_directory).to_path_buf();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.log");
    std::fs::write(&victim, "untouched\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), log_dir.join("escape")).unwrap();
    std::os::unix::fs::symlink(&victim, log_dir.join("file.log")).unwrap();
    std::fs::create_dir(log_dir.join("a-directory")).unwrap();
    let depth = log_dir.components().count();
    let dotdot = format!("{}{}", "../".repeat(depth), victim.display());

    for log_path in [
        dotdot.as_str(),
        "c/../../x.log",
        victim.to_str().unwrap(),
        "escape/x.log",
        "file.log",
        "a-directory",
        "c/",
    ] {
        let mut config = container("c", &image, &["sh", "-c", "echo written; sleep 1000"]);
        config.log_path = log_path.into();
        let result = env.create(&pod_id, &pod, config).await;
        assert_invalid(result, "config.log_path");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing created outside the log directory"
    );
    assert_nothing_left(&mut env, 1).await;

    // A log path with parents inside the directory is created beneath it.
    let mut config = container("c", &image, &["sh", "-c", "echo written; sleep 1000"]);
    config.log_path = "c/nested/0.log".into();
    let id = env.run(&pod_id, &pod, config).await;
    let log = log_dir.join("c/nested/0.log");
    common::wait_for_log(&log, std::time::Duration::from_secs(20), |t| {
        t.contains("written")
    })
    .await;
    assert_eq!(common::log_path(&env.status(&id).await), log);
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn bad_container_configs_are_refused_before_anything_is_made() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("mounts");
    let pod_id = env.run_pod(&pod).await;
    let host = tempfile::tempdir().unwrap();

    for container_path in ["/sys/..", "/", "/a/b/../..", "", "relative/path"] {
        let mut config = container("c", &image, &["sleep", "1000"]);
        config.mounts = vec![cri::Mount {
            container_path: container_path.into(),
            host_path: host.path().display().to_string(),
            ..Default::default()
        }];
        assert_invalid(
            env.create(&pod_id, &pod, config).await,
            "config.mounts[0].container_path",
        );
    }
    assert_eq!(
        std::fs::read_dir(host.path()).unwrap().count(),
        0,
        "the runtime wrote nothing into the mount's source"
    );
    let mut config = container("c", &image, &["sleep", "1000"]);
    config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: format!("{}\0/etc", host.path().display()),
        ..Default::default()
    }];
    assert_invalid(
        env.create(&pod_id, &pod, config).await,
        "config.mounts[0].host_path",
    );

    let mut config = container("c", &image, &["sleep", "1000"]);
    config.annotations = HashMap::from([("big".to_string(), "v".repeat(300 * 1024))]);
    assert_invalid(
        env.create(&pod_id, &pod, config).await,
        "config.annotations",
    );
    let mut config = container("c", &image, &["sleep", "1000"]);
    config.labels = (0..2000)
        .map(|i| (format!("example.com/label-{i}"), "v".repeat(40)))
        .collect();
    assert_invalid(env.create(&pod_id, &pod, config).await, "config.labels");

    let mut config = container("c", &image, &["sleep", "1000"]);
    config.cdi_devices = vec![cri::CdiDevice {
        name: "vendor.com/gpu=0".into(),
    }];
    assert_invalid(
        env.create(&pod_id, &pod, config).await,
        "config.CDI_devices",
    );
    let mut config = container("c", &image, &["sleep", "1000"]);
    common::container_security(&mut config).apparmor = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "my-profile".into(),
    });
    let err = env.create(&pod_id, &pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Annotations within Kubernetes' own 256 KiB limit are taken and given back.
    let mut config = container("c", &image, &["sleep", "1000"]);
    config.annotations = HashMap::from([("big".to_string(), "v".repeat(250 * 1024))]);
    assert_nothing_left(&mut env, 1).await;
    let id = env.create(&pod_id, &pod, config).await.unwrap();
    let status = env.status(&id).await;
    assert_eq!(status.annotations["big"].len(), 250 * 1024);
    env.stop_remove_pod(&pod_id).await;
}
