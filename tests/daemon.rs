//! The daemon through its CRI socket: handshake RPCs, configuration sources and their
//! precedence, refusal of bad flags, socket ownership and shutdown.

use std::os::unix::fs::PermissionsExt;

use k8s_cri::v1 as cri;
use test_support::{Daemon, run_once};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_cri-mesos");

async fn verbose_config(daemon: &Daemon) -> serde_json::Value {
    let mut client = daemon.runtime_client().await.unwrap();
    let status = client
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(
        status
            .info
            .get("config")
            .expect("verbose status has config"),
    )
    .unwrap()
}

#[tokio::test]
async fn version_status_and_runtime_config() {
    // An empty CNI config dir of its own: NetworkReady must not depend on the host's.
    let cni = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder(BIN)
        .arg(format!("--network_cni_config_dir={}", cni.path().display()))
        .start()
        .await
        .unwrap();
    let mut client = daemon.runtime_client().await.unwrap();

    let version = client
        .version(cri::VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "cri-mesos");
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.version, "0.1.0");
    assert!(!version.runtime_version.is_empty());

    let status = client
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(status.info.is_empty(), "info only when verbose");
    let handlers: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(handlers, ["", "mesos"]);
    let conditions = status.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(runtime.status);
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(!network.message.is_empty());

    let config = client
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        config.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );

    let verbose = verbose_config(&daemon).await;
    assert_eq!(verbose["listen"], daemon.socket().display().to_string());
    assert_eq!(
        verbose["isolation"],
        serde_json::json!([
            "filesystem/linux",
            "cgroups/cpu",
            "cgroups/cpuset",
            "cgroups/devices",
            "cgroups/hugetlb",
            "cgroups/mem",
            "cgroups/pids",
            "docker/runtime",
            "volume/host_path",
            "disk/du",
            "namespaces/ipc",
            "namespaces/pid",
            "network/cni",
            "linux/capabilities",
            "linux/seccomp"
        ])
    );
}

#[tokio::test]
async fn update_runtime_config_stores_the_pod_cidr() {
    let mut daemon = Daemon::start(BIN).await.unwrap();
    let mut client = daemon.runtime_client().await.unwrap();
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    client
        .update_runtime_config(update("10.244.3.0/24"))
        .await
        .unwrap();
    let status = client
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.info["podCIDR"], "\"10.244.3.0/24\"");
    // kubelet does not send it again after a runtime restart: it was checkpointed.
    daemon.kill9().unwrap();
    daemon.restart().await.unwrap();
    let mut client = daemon.runtime_client().await.unwrap();
    let status = client
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.info["podCIDR"], "\"10.244.3.0/24\"");

    let err = client
        .update_runtime_config(update("10.244.3.0/99"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());
}

#[tokio::test]
async fn rpcs_of_later_issues_answer_unimplemented() {
    let daemon = Daemon::start(BIN).await.unwrap();
    let mut client = daemon.runtime_client().await.unwrap();
    let err = client
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: "any".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message().contains("CheckpointContainer"),
        "{}",
        err.message()
    );
}

/// Each step is shown by a flag the daemon acts on, set in every source down to the one
/// that must lose, so the value in effect can only have come from the winner.
#[tokio::test]
async fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let cni_dir = |name: &str, conflist: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("10-net.conflist"), conflist).unwrap();
        path
    };
    let usable = r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"}]}"#;
    let flag_cni = cni_dir("flag-cni", "not a network config");
    let env_cni = cni_dir("env-cni", usable);
    let file_cni = cni_dir("file-cni", usable);
    let file_store = dir.path().join("file-store");
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "network_cni_config_dir: {}\n\
             logging_level: INFO\n\
             docker-store-dir: {}\n",
            file_cni.display(),
            file_store.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::builder(BIN)
        .arg("--config")
        .arg(&file)
        .arg(format!("--network-cni-config-dir={}", flag_cni.display()))
        .env("CRI_MESOS_NETWORK_CNI_CONFIG_DIR", &env_cni)
        .env("CRI_MESOS_LOGGING_LEVEL", "WARNING")
        // It would override --logging_level.
        .env_remove("RUST_LOG")
        .start()
        .await
        .unwrap();

    // Flag beats env and file: the flag's directory, whose only file is unusable, is the
    // one NetworkReady reports on; either other directory would make the node ready.
    let status = daemon
        .runtime_client()
        .await
        .unwrap()
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let network = status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status, "{network:?}");
    let broken = flag_cni.join("10-net.conflist").display().to_string();
    assert!(network.message.contains(&broken), "{}", network.message);

    // Env beats file: WARNING, not the file's INFO. The unusable config just read logged
    // a warning; the INFO line of the start-up did not make it.
    let log = daemon.log();
    assert!(log.contains("CNI config ignored"), "{log}");
    assert!(!log.contains("serving CRI v1"), "{log}");

    // File beats default: the image store is the file's, not <work_dir>/store/docker.
    let fs_info = daemon
        .image_client()
        .await
        .unwrap()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let mountpoints: Vec<String> = fs_info
        .image_filesystems
        .iter()
        .filter_map(|f| f.fs_id.as_ref().map(|id| id.mountpoint.clone()))
        .collect();
    assert_eq!(mountpoints, [file_store.display().to_string()]);
    assert!(file_store.join("layers").is_dir());
    assert!(!daemon.work_dir().join("store/docker").exists());
}

/// Each bad value exits 2 before the socket exists, with a message naming the value.
#[test]
fn bad_flags_exit_2_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("never.sock");
    let bad_file = dir.path().join("bad.yaml");
    std::fs::write(&bad_file, "wrok_dir: /tmp/x\n").unwrap();
    let bad_file_arg = format!("--config={}", bad_file.display());
    let rlimit_file = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("rlimits:\n  {body}\n")).unwrap();
        format!("--config={}", path.display())
    };
    // A hard limit above the daemon's own could only be given with CAP_SYS_RESOURCE.
    let rlimit_high = rlimit_file(
        "high.yaml",
        "NOFILE: {soft: 1024, hard: 18446744073709551615}",
    );
    let rlimit_soft = rlimit_file("soft.yaml", "NOFILE: {soft: 2048, hard: 1024}");
    let rlimit_name = rlimit_file("name.yaml", "NOFILES: {soft: 1, hard: 1}");
    // A port someone else holds: exit 2 naming it, before the CRI socket is opened.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_arg = format!("--http_address={}", taken.local_addr().unwrap());
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let tls_cert = format!("--streaming_tls_cert_file={}", not_pem.display());
    let tls_key = format!("--streaming_tls_key_file={}", not_pem.display());
    let cases: &[(&[&str], &str)] = &[
        (&[taken_arg.as_str()], taken_arg.as_str()),
        (&["--isolation=bogus/thing"], "bogus/thing"),
        (
            &["--isolation=namespaces/pid,namespaces/pid"],
            "namespaces/pid",
        ),
        (
            &["--isolation=filesystem/linux,filesystem/posix"],
            "filesystem/posix",
        ),
        (&["--isolation=gpu/nvidia"], "gpu/nvidia"),
        (&["--isolation=cgroups/blkio"], "not support"),
        (&["--isolation=cgroups,cgroups/cpu"], "more than once"),
        (&["--containerizers=mesos,kubernetes"], "kubernetes"),
        (&["--containerizers=docker"], "not supported yet"),
        (&["--launcher=magic"], "magic"),
        (&["--image_providers=appc"], "appc"),
        (&["--fetcher_cache_size=2XB"], "2XB"),
        (&["--fetcher_stall_timeout=soon"], "fetcher_stall_timeout"),
        (&["--fetcher_stall_timeout=0secs"], "more than 0"),
        (&["--fetcher_file_allowlist=srv/artifacts"], "srv/artifacts"),
        (&["--sandbox_directory=mnt/sandbox"], "mnt/sandbox"),
        (&["--sandbox_directory=/"], "sandbox_directory"),
        (&["--fetcher_cache_dir=/"], "is emptied"),
        (&["--container_disk_watch_interval=soon"], "soon"),
        (&["--http_address=localhost"], "localhost"),
        (&["--work_dir=relative/dir"], "relative/dir"),
        (&["--cgroup_driver=sysv"], "sysv"),
        (&["--network_cni_root_dir_persist=maybe"], "maybe"),
        (&["--recover=reattach"], "reattach"),
        (&["--cgroups_pids_limit=-1"], "-1"),
        (
            &[
                "--cgroups_pids_limit=10",
                "--isolation=filesystem/linux,docker/runtime",
            ],
            "cgroups/pids",
        ),
        (&["--logging_level=LOUD"], "LOUD"),
        // Mesos's agent resources mean nothing to a CRI runtime (kubelet has the node's
        // allocatable): the flag is gone, and clap refuses it.
        (&["--resources=cpus:2"], "--resources"),
        (&["--registry_mirrors=registry.k8s.io"], "registry.k8s.io"),
        (&["--image_provisioner_backend=zfs"], "zfs"),
        (&[bad_file_arg.as_str()], "wrok_dir"),
        (&[rlimit_high.as_str()], "above the daemon's own hard limit"),
        (&[rlimit_soft.as_str()], "soft 2048 is above hard 1024"),
        (&[rlimit_name.as_str()], "NOFILES"),
        (&["--streaming_address=nowhere"], "nowhere"),
        (&["--streaming_idle_timeout=never"], "never"),
        (&[tls_cert.as_str()], "go together"),
        (
            &[tls_cert.as_str(), tls_key.as_str()],
            "streaming_tls_cert_file",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec![format!("--listen={}", socket.display())];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = run_once(BIN, &all).unwrap();
        assert_eq!(
            out.code,
            Some(2),
            "{args:?} should exit 2; stderr: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(needle),
            "{args:?}: stderr should name {needle:?}: {}",
            out.stderr
        );
        assert!(!socket.exists(), "{args:?} opened the socket");
    }
}

/// A flag whose feature is not built is refused at start, naming it, rather than
/// accepted and ignored; so is a chain that breaks Mesos's rule for image providers.
#[test]
fn unbuilt_features_exit_2_not_supported_yet() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("never.sock");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--launcher=posix"],
            &["--launcher=posix", "not supported yet"],
        ),
        (
            &["--image_providers="],
            &["--image_providers=", "not supported yet"],
        ),
        (
            &["--image_providers=appc"],
            &["--image_providers=appc", "not supported yet"],
        ),
        (
            &["--containerizers=docker"],
            &["--containerizers=docker", "not supported yet"],
        ),
        (
            &["--isolation=docker/runtime,namespaces/pid"],
            &[
                "--isolation",
                "image providers",
                "need the 'filesystem/linux' isolator",
            ],
        ),
        // Named, filesystem/posix is refused as unbuilt; implied (no filesystem isolator
        // named), the rule above refuses the chain.
        (
            &["--isolation=filesystem/posix,docker/runtime"],
            &["--isolation", "'filesystem/posix'", "not support yet"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec![format!("--listen={}", socket.display())];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = run_once(BIN, &all).unwrap();
        assert_eq!(
            out.code,
            Some(2),
            "{args:?} should exit 2; stderr: {}",
            out.stderr
        );
        for needle in *needles {
            assert!(
                out.stderr.contains(needle),
                "{args:?}: stderr should name {needle:?}: {}",
                out.stderr
            );
        }
        assert!(!socket.exists(), "{args:?} opened the socket");
    }
}

#[test]
fn bad_environment_value_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg(format!("--listen={}", dir.path().join("s.sock").display()))
        .env("CRI_MESOS_LAUNCHER", "weird")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("weird"));
}

#[tokio::test]
async fn a_second_daemon_on_a_live_socket_refuses_to_start() {
    let daemon = Daemon::start(BIN).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = run_once(
        BIN,
        [
            format!("--listen={}", daemon.socket().display()),
            format!("--work_dir={}", other.path().join("work").display()),
            format!("--runtime_dir={}", other.path().join("run").display()),
            "--http_address=127.0.0.1:0".to_string(),
        ],
    )
    .unwrap();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("already serving"), "{}", out.stderr);
    // The first one still answers on its socket.
    let mut client = daemon.runtime_client().await.unwrap();
    client
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn socket_is_root_only_and_sigterm_removes_it() {
    let mut daemon = Daemon::start(BIN).await.unwrap();
    let mode = std::fs::metadata(daemon.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let status = daemon.stop().await.unwrap();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    assert!(!daemon.socket().exists(), "socket removed on SIGTERM");
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let mut daemon = Daemon::start(BIN).await.unwrap();
    daemon.kill9().unwrap();
    assert!(
        daemon.socket().exists(),
        "SIGKILL leaves the socket file behind"
    );
    daemon.restart().await.unwrap();
    let mut client = daemon.runtime_client().await.unwrap();
    client
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

/// Two daemons on one work dir would each recover (and roll back) the other's work: the
/// second is refused, naming the lock.
#[tokio::test]
async fn a_second_daemon_on_the_same_work_dir_refuses_to_start() {
    let daemon = Daemon::start(BIN).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = run_once(
        BIN,
        [
            format!("--listen={}", other.path().join("cri.sock").display()),
            format!("--work_dir={}", daemon.work_dir().display()),
            format!("--runtime_dir={}", other.path().join("run").display()),
            "--http_address=127.0.0.1:0".to_string(),
        ],
    )
    .unwrap();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("another daemon uses this work dir"),
        "{}",
        out.stderr
    );
}
