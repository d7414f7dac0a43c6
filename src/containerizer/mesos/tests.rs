//! The containerizer's undo paths, without root: a fake launcher (no supervisor, no
//! signals), fake pinned namespaces (plain files), a fake isolator that fails where told,
//! cgroups as plain directories of a temp dir standing for the hierarchy.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::cgroups::CgroupError;
use crate::containerizer::{ContainerId, Containerizer, LaunchConfig};
use crate::isolators::IsolatorName;
use crate::isolators::chain::IsolatorError;
use crate::launcher::namespaces::{NamespaceError, Pinned};
use crate::launcher::sysctls::{Sysctl, SysctlNs};

/// Every call the fakes saw, in order.
#[derive(Debug, Default)]
struct Journal(Mutex<Vec<String>>);

impl Journal {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn has(&self, prefix: &str) -> bool {
        self.entries().iter().any(|e| e.starts_with(prefix))
    }
}

/// Stands for the pod supervisor: forks nothing, and writes a container's exit record
/// when it is killed, as the supervisor does once it reaped the init.
#[derive(Debug, Default)]
struct FakeLauncher {
    journal: Arc<Journal>,
    fail_spawn: AtomicBool,
    fail_fork: AtomicBool,
    fail_start: AtomicBool,
    exit_files: Mutex<HashMap<String, PathBuf>>,
}

fn refused(what: &str) -> SupervisorError {
    SupervisorError::Refused(format!("{what} failed (fake)"))
}

#[tonic::async_trait]
impl Launcher for FakeLauncher {
    async fn spawn_supervisor(&self, spec: &SupervisorSpec<'_>) -> Result<i32, SupervisorError> {
        self.journal.push(format!("spawn {}", spec.pod_id));
        if self.fail_spawn.load(Ordering::SeqCst) {
            return Err(SupervisorError::Spawn {
                bin: "fake".into(),
                reason: "told to fail".into(),
            });
        }
        Ok(4242)
    }
    fn charge(&self, _cgroup: &Cgroup, pid: i32) -> Result<(), CgroupError> {
        self.journal.push(format!("charge {pid}"));
        Ok(())
    }
    async fn shutdown(&self, _socket: &Path) -> Result<(), SupervisorError> {
        self.journal.push("shutdown");
        Ok(())
    }
    async fn fork(
        &self,
        _socket: &Path,
        launch: LaunchInfo,
        _timeout: Duration,
    ) -> Result<i32, SupervisorError> {
        self.journal.push(format!("fork {}", launch.container_id));
        if self.fail_fork.load(Ordering::SeqCst) {
            return Err(refused("fork"));
        }
        self.exit_files
            .lock()
            .unwrap()
            .insert(launch.container_id, launch.exit_file);
        Ok(4343)
    }
    async fn start(
        &self,
        _socket: &Path,
        container_id: &str,
        _timeout: Duration,
    ) -> Result<i32, SupervisorError> {
        self.journal.push(format!("start {container_id}"));
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(refused("start"));
        }
        Ok(4343)
    }
    async fn signal(
        &self,
        _socket: &Path,
        container_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), SupervisorError> {
        self.journal
            .push(format!("signal {container_id} {signal} {all}"));
        let exit_file = self.exit_files.lock().unwrap().remove(container_id);
        if let Some(path) = exit_file.filter(|_| signal == libc::SIGKILL) {
            let exit = cri_mesos_supervisor::protocol::ExitRecord {
                exit_code: 128 + signal,
                signal: Some(signal),
                finished_at_ns: now_ns(),
                started_at_ns: 0,
                oom_killed: false,
                error: None,
            };
            state::checkpoint(&path, &exit).unwrap();
        }
        Ok(())
    }
    async fn kill_all(&self, cgroup: &Cgroup, _timeout: Duration) -> Result<(), CgroupError> {
        self.journal
            .push(format!("kill_all {}", cgroup.relative.display()));
        Ok(())
    }
    async fn forget(&self, _socket: &Path, container_id: &str) -> Result<(), SupervisorError> {
        self.journal.push(format!("forget {container_id}"));
        Ok(())
    }
    async fn exec(
        &self,
        _socket: &Path,
        _exec: ExecInfo,
        _timeout: Duration,
    ) -> Result<ExecResult, SupervisorError> {
        Err(refused("exec"))
    }
    async fn reopen_log(&self, _socket: &Path, _container_id: &str) -> Result<(), SupervisorError> {
        Ok(())
    }
}

/// Namespaces "pinned" as plain files; what is pinned and mounted is tracked.
#[derive(Debug, Default)]
struct FakePodHost {
    pinned: Mutex<BTreeSet<PathBuf>>,
    shm: Mutex<BTreeSet<PathBuf>>,
    /// "name=value in <ns file>" for each sysctl written.
    sysctls: Mutex<Vec<String>>,
    fail_sysctls: AtomicBool,
}

impl PodHost for FakePodHost {
    fn pin(&self, targets: &Pinned, _hostname: &str) -> Result<Pinned, NamespaceError> {
        for path in [&targets.net, &targets.uts, &targets.ipc]
            .into_iter()
            .flatten()
        {
            let io = |source| NamespaceError::Io {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(path.parent().unwrap()).map_err(io)?;
            std::fs::write(path, b"").map_err(io)?;
            self.pinned.lock().unwrap().insert(path.clone());
        }
        Ok(targets.clone())
    }
    fn unpin(&self, pinned: &Pinned) {
        for path in [&pinned.net, &pinned.uts, &pinned.ipc]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(path);
            self.pinned.lock().unwrap().remove(path);
        }
    }
    fn mount_shm(&self, path: &Path, _size: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(path)?;
        self.shm.lock().unwrap().insert(path.to_path_buf());
        Ok(())
    }
    fn unmount_shm(&self, path: &Path) {
        self.shm.lock().unwrap().remove(path);
    }
    fn write_sysctls(
        &self,
        net: Option<&Path>,
        ipc: Option<&Path>,
        sysctls: &[Sysctl],
    ) -> Result<(), SysctlError> {
        for s in sysctls {
            if self.fail_sysctls.load(Ordering::SeqCst) {
                return Err(SysctlError::Write {
                    name: s.name.clone(),
                    path: s.path.clone(),
                    value: s.value.clone(),
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            let ns = match s.ns {
                SysctlNs::Net => net,
                SysctlNs::Ipc => ipc,
            };
            let ns = ns.expect("the pod has the namespace");
            assert!(
                self.pinned.lock().unwrap().contains(ns),
                "written in a pinned namespace"
            );
            self.sysctls.lock().unwrap().push(format!(
                "{}={} in {}",
                s.name,
                s.value,
                ns.display()
            ));
        }
        Ok(())
    }
}

/// Stands for `network/cni`: asks for a network namespace, "attaches" it in
/// `isolate_pod` and "detaches" it in `cleanup_pod`, failing where told.
#[derive(Debug)]
struct FakeNetwork {
    name: IsolatorName,
    journal: Arc<Journal>,
    pod_host: Arc<FakePodHost>,
    fail_add: AtomicBool,
    fail_del: AtomicBool,
    fail_isolate: AtomicBool,
}

fn failure(step: &str) -> IsolatorError {
    IsolatorError::Other {
        isolator: "network/cni",
        reason: format!("{step} failed (fake)"),
    }
}

#[tonic::async_trait]
impl Isolator for FakeNetwork {
    fn name(&self) -> IsolatorName {
        self.name
    }
    async fn prepare_pod(
        &self,
        pod: &PodPrep<'_>,
        namespaces: &mut PodNamespaces,
    ) -> Result<(), IsolatorError> {
        namespaces.net = Some(pod.dir.join("ns").join("net"));
        namespaces.uts = Some(pod.dir.join("ns").join("uts"));
        Ok(())
    }
    async fn isolate_pod(
        &self,
        pod: &PodInfo,
        _isolation: &mut PodIsolation,
    ) -> Result<(), IsolatorError> {
        self.journal.push(format!("add {}", pod.id));
        // The namespaces exist by the time a pod is isolated.
        assert!(pod.net_ns.as_ref().is_some_and(|p| p.exists()));
        if self.fail_add.load(Ordering::SeqCst) {
            return Err(failure("ADD"));
        }
        Ok(())
    }
    async fn isolate(&self, container_id: &str, _pid: i32) -> Result<(), IsolatorError> {
        self.journal.push(format!("isolate {container_id}"));
        if self.fail_isolate.load(Ordering::SeqCst) {
            return Err(failure("isolate"));
        }
        Ok(())
    }
    async fn cleanup(&self, container_id: &str) -> Result<(), IsolatorError> {
        self.journal.push(format!("cleanup {container_id}"));
        Ok(())
    }
    async fn cleanup_pod(&self, pod: &PodInfo) -> Result<(), IsolatorError> {
        self.journal.push(format!("del {}", pod.id));
        if self.fail_del.load(Ordering::SeqCst) {
            return Err(failure("DEL"));
        }
        // As network/cni: it unpins its own namespace once DEL succeeded.
        if let Some(net) = &pod.net_ns {
            self.pod_host.unpin(&Pinned {
                net: Some(net.clone()),
                ..Default::default()
            });
        }
        Ok(())
    }
}

struct Env {
    dir: tempfile::TempDir,
    journal: Arc<Journal>,
    launcher: Arc<FakeLauncher>,
    pod_host: Arc<FakePodHost>,
    network: Arc<FakeNetwork>,
    containerizer: Arc<MesosContainerizer>,
}

/// Forwards to a shared fake, so a test keeps a handle on it.
#[derive(Debug)]
struct Shared<I>(Arc<I>);

#[tonic::async_trait]
impl<I: Isolator> Isolator for Shared<I> {
    fn name(&self) -> IsolatorName {
        self.0.name()
    }
    async fn prepare_pod(
        &self,
        pod: &PodPrep<'_>,
        namespaces: &mut PodNamespaces,
    ) -> Result<(), IsolatorError> {
        self.0.prepare_pod(pod, namespaces).await
    }
    async fn isolate_pod(
        &self,
        pod: &PodInfo,
        isolation: &mut PodIsolation,
    ) -> Result<(), IsolatorError> {
        self.0.isolate_pod(pod, isolation).await
    }
    async fn cleanup_pod(&self, pod: &PodInfo) -> Result<(), IsolatorError> {
        self.0.cleanup_pod(pod).await
    }
    async fn isolate(&self, container_id: &str, pid: i32) -> Result<(), IsolatorError> {
        self.0.isolate(container_id, pid).await
    }
    async fn cleanup(&self, container_id: &str) -> Result<(), IsolatorError> {
        self.0.cleanup(container_id).await
    }
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = |p: &str| dir.path().join(p).display().to_string();
        let flags = Arc::new(
            Flags::from_args([
                "cri-mesos".to_string(),
                format!("--work_dir={}", path("work")),
                format!("--runtime_dir={}", path("run")),
                format!("--docker_store_dir={}", path("store")),
                format!("--launcher_dir={}", path("bin")),
                format!("--docker_registry={}", path("images")),
                "--image_provisioner_backend=copy".to_string(),
            ])
            .unwrap(),
        );
        // One tiny image, as a `docker save` archive for the local provider.
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        test_support::ImageBuilder::oci()
            .layer(
                test_support::Layer::new([test_support::TarEntry::file("/hello.txt", "hi")]),
                test_support::Compression::Gzip,
            )
            .config("Cmd", serde_json::json!(["/hello"]))
            .build()
            .write_docker_archive(&dir.path().join("images/tiny:latest.tar"), &["tiny:latest"])
            .unwrap();
        let provisioner =
            Provisioner::create(&crate::provisioner::ProvisionerConfig::from_flags(&flags))
                .unwrap();
        let journal = Arc::new(Journal::default());
        let launcher = Arc::new(FakeLauncher {
            journal: journal.clone(),
            ..Default::default()
        });
        let pod_host = Arc::new(FakePodHost::default());
        let network = Arc::new(FakeNetwork {
            name: crate::isolators::select("network/cni")
                .unwrap()
                .into_iter()
                .find(|n| n.as_str() == "network/cni")
                .unwrap(),
            journal: journal.clone(),
            pod_host: pod_host.clone(),
            fail_add: AtomicBool::new(false),
            fail_del: AtomicBool::new(false),
            fail_isolate: AtomicBool::new(false),
        });
        // The hierarchy is a plain directory: cgroups are made and removed as directories,
        // and nothing is ever killed through them (the launcher is fake).
        let hierarchies = Hierarchies {
            v1: vec![],
            v2: Some(dir.path().join("cgroup")),
            pure_v2: true,
            v2_controllers: Vec::new(),
        };
        let fetcher = Arc::new(
            crate::fetcher::Fetcher::new(crate::fetcher::FetcherConfig::from_flags(&flags))
                .unwrap(),
        );
        let containerizer = MesosContainerizer::with_parts(Parts {
            flags,
            provisioner,
            // namespaces/ipc as it is (it asks for the pod's IPC namespace and so its shm).
            isolators: vec![
                Box::new(crate::isolators::namespaces::ipc::IpcNamespace),
                Box::new(Shared(network.clone())),
            ],
            hierarchies,
            launcher: launcher.clone(),
            pod_host: pod_host.clone(),
            fetcher,
        })
        .unwrap();
        Env {
            dir,
            journal,
            launcher,
            pod_host,
            network,
            containerizer,
        }
    }

    async fn run_pod(&self, name: &str) -> Result<String> {
        self.run_pod_with_sysctls(name, &[]).await
    }

    async fn run_pod_with_sysctls(&self, name: &str, sysctls: &[(&str, &str)]) -> Result<String> {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                sysctls: sysctls
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let launch = LaunchConfig::Sandbox {
            config,
            runtime_handler: String::new(),
        };
        self.containerizer
            .clone()
            .launch(launch)
            .await
            .map(|id| id.value)
    }

    /// CreateContainer of the tiny image in `pod_id`.
    async fn create_container(&self, pod_id: &str, name: &str) -> Result<ContainerId> {
        self.containerizer
            .provisioner
            .pull("tiny:latest", None)
            .await
            .unwrap();
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "tiny:latest".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let launch = LaunchConfig::Nested {
            sandbox_id: pod_id.into(),
            config,
        };
        self.containerizer.clone().launch(launch).await
    }

    /// Container rootfses the provisioner still holds.
    fn rootfses_left(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("work/provisioner/containers"))
            .unwrap()
            .count()
    }

    /// The container that the launcher was last asked to fork.
    fn forked(&self) -> String {
        let entries = self.journal.entries();
        let fork = entries
            .iter()
            .rev()
            .find(|e| e.starts_with("fork "))
            .unwrap();
        fork["fork ".len()..].to_string()
    }

    /// Nothing of any container is left: rootfs, cgroup, checkpoint, record.
    fn assert_no_container_held(&self, pod_id: &str) {
        assert_eq!(self.rootfses_left(), 0);
        let pod = self.containerizer.pod(pod_id).unwrap();
        let containers = pod.info.cgroup.dirs[0].clone();
        let children: Vec<_> = std::fs::read_dir(&containers)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy() != pod_id)
            .collect();
        assert!(children.is_empty(), "{children:?}");
        let checkpoints = std::fs::read_dir(self.dir.path().join("work/meta/containers"))
            .unwrap()
            .count();
        assert_eq!(checkpoints, 0);
        assert!(self.containerizer.containers().is_empty());
    }

    /// Pod cgroup directories left under the fake hierarchy.
    fn cgroups_left(&self) -> Vec<PathBuf> {
        let root = self.dir.path().join("cgroup");
        let mut left = vec![];
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    left.push(entry.path());
                    stack.push(entry.path());
                }
            }
        }
        left.retain(|p| p.file_name().is_some_and(|n| n.len() == 64));
        left
    }

    fn pod_checkpoints(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("work/meta/pods"))
            .unwrap()
            .count()
    }

    fn assert_nothing_held(&self) {
        assert!(self.pod_host.pinned.lock().unwrap().is_empty());
        assert!(self.pod_host.shm.lock().unwrap().is_empty());
        assert_eq!(self.cgroups_left(), Vec::<PathBuf>::new());
        assert_eq!(self.pod_checkpoints(), 0);
        assert!(self.containerizer.pods().is_empty());
    }
}

#[tokio::test]
async fn a_pod_launches_and_is_removed_with_fakes() {
    let env = Env::new();
    let id = env.run_pod("ok").await.unwrap();
    let pod = env.containerizer.pod(&id).unwrap();
    assert!(pod.ready);
    assert_eq!(
        env.pod_host.pinned.lock().unwrap().len(),
        3,
        "net, uts, ipc"
    );
    assert_eq!(env.pod_host.shm.lock().unwrap().len(), 1);
    assert_eq!(env.cgroups_left().len(), 2, "pod and supervisor cgroups");
    // The order pods need: namespaces, ADD, files, then the supervisor last.
    assert_eq!(
        env.journal.entries()[..2],
        [format!("add {id}"), format!("spawn {id}")]
    );
    assert!(pod.info.dir.join("hosts").exists());

    let sandbox = ContainerId {
        value: id.clone(),
        parent: None,
    };
    env.containerizer
        .destroy(&sandbox, Duration::ZERO)
        .await
        .unwrap();
    assert!(env.journal.has("shutdown"));
    assert!(env.journal.has(&format!("del {id}")));
    env.assert_nothing_held();
}

#[tokio::test]
async fn a_failed_cni_add_after_the_namespaces_undoes_the_pod() {
    let env = Env::new();
    env.network.fail_add.store(true, Ordering::SeqCst);
    let err = env.run_pod("add-fails").await.unwrap_err();
    assert!(err.to_string().contains("ADD failed"), "{err}");
    // Undone in reverse: DEL (network/cni unpins its namespace), the pod's own
    // namespaces, shm, cgroups, checkpoint; no supervisor was spawned.
    assert!(env.journal.has("del "));
    assert!(!env.journal.has("spawn "));
    env.assert_nothing_held();
    // The name is free again: a retry gets a pod.
    env.network.fail_add.store(false, Ordering::SeqCst);
    env.run_pod("add-fails").await.unwrap();
}

#[tokio::test]
async fn sysctls_are_written_in_the_pods_namespaces_after_the_add() {
    let env = Env::new();
    let id = env
        .run_pod_with_sysctls(
            "sysctls",
            &[
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("kernel/shm_rmid_forced", "1"),
            ],
        )
        .await
        .unwrap();
    let pod = env.containerizer.pod(&id).unwrap();
    let (net, ipc) = (pod.info.net_ns.unwrap(), pod.info.ipc_ns.unwrap());
    let mut written = env.pod_host.sysctls.lock().unwrap().clone();
    written.sort();
    assert_eq!(
        written,
        [
            format!("kernel.shm_rmid_forced=1 in {}", ipc.display()),
            format!("net.ipv4.ip_unprivileged_port_start=0 in {}", net.display()),
        ]
    );
}

#[tokio::test]
async fn a_refused_sysctl_write_undoes_the_pod() {
    let env = Env::new();
    env.pod_host.fail_sysctls.store(true, Ordering::SeqCst);
    let err = env
        .run_pod_with_sysctls("bad-sysctl", &[("net.core.somaxconn", "x")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ContainerizerError::InvalidArgument { field, reason }
            if field == "config.linux.sysctls" && reason.contains("net.core.somaxconn")),
        "{err}"
    );
    // Written after the ADD, before the supervisor: DEL ran, no supervisor was spawned.
    assert!(env.journal.has("del "));
    assert!(!env.journal.has("spawn "));
    env.assert_nothing_held();
}

#[tokio::test]
async fn a_failed_supervisor_spawn_undoes_the_pod() {
    let env = Env::new();
    env.launcher.fail_spawn.store(true, Ordering::SeqCst);
    let err = env.run_pod("spawn-fails").await.unwrap_err();
    assert!(err.to_string().contains("told to fail"), "{err}");
    assert!(env.journal.has("add "));
    assert!(env.journal.has("del "));
    // It never ran: nothing to shut down.
    assert!(!env.journal.has("shutdown"));
    env.assert_nothing_held();
}

#[tokio::test]
async fn a_failed_undo_keeps_the_pod_notready_for_a_retry() {
    let env = Env::new();
    env.network.fail_add.store(true, Ordering::SeqCst);
    env.network.fail_del.store(true, Ordering::SeqCst);
    env.run_pod("del-fails").await.unwrap_err();
    let pods = env.containerizer.pods();
    assert_eq!(pods.len(), 1);
    assert!(!pods[0].ready);
    assert_eq!(pods[0].mesos_state, MesosState::Destroying);
    // The network namespace stays pinned for the retried DEL; the others are gone.
    let pinned = env.pod_host.pinned.lock().unwrap().clone();
    assert_eq!(
        pinned.into_iter().collect::<Vec<_>>(),
        [pods[0].info.net_ns.clone().unwrap()]
    );
    // StopPodSandbox fails while DEL does, and succeeds once it works; removal then
    // releases everything.
    let sandbox = ContainerId {
        value: pods[0].info.id.clone(),
        parent: None,
    };
    assert!(
        env.containerizer
            .stop(&sandbox, Duration::ZERO)
            .await
            .is_err()
    );
    env.network.fail_del.store(false, Ordering::SeqCst);
    env.containerizer
        .stop(&sandbox, Duration::ZERO)
        .await
        .unwrap();
    env.containerizer
        .destroy(&sandbox, Duration::ZERO)
        .await
        .unwrap();
    env.assert_nothing_held();
}

#[tokio::test]
async fn a_failed_fork_after_the_rootfs_undoes_the_container() {
    let env = Env::new();
    let pod = env.run_pod("p").await.unwrap();
    env.launcher.fail_fork.store(true, Ordering::SeqCst);
    let err = env.create_container(&pod, "c").await.unwrap_err();
    assert!(err.to_string().contains("fork failed"), "{err}");
    let id = env.forked();
    // Undone: its processes (none) killed, isolators cleaned up, cgroup and rootfs gone.
    assert!(env.journal.has(&format!("cleanup {id}")));
    env.assert_no_container_held(&pod);
    // The name is free again.
    env.launcher.fail_fork.store(false, Ordering::SeqCst);
    env.create_container(&pod, "c").await.unwrap();
}

#[tokio::test]
async fn a_failed_isolate_after_the_fork_leaves_it_created_and_removable() {
    let env = Env::new();
    let pod = env.run_pod("p").await.unwrap();
    let id = env.create_container(&pod, "c").await.unwrap();
    assert_eq!(env.rootfses_left(), 1);
    env.network.fail_isolate.store(true, Ordering::SeqCst);
    let err = env.containerizer.start(&id).await.unwrap_err();
    assert!(err.to_string().contains("isolate failed"), "{err}");
    // Never released from its pipe; RemoveContainer kills it and undoes everything.
    assert!(!env.journal.has(&format!("start {}", id.value)));
    env.containerizer
        .destroy(&id, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        env.journal
            .has(&format!("signal {} {} true", id.value, libc::SIGKILL))
    );
    assert!(env.journal.has(&format!("cleanup {}", id.value)));
    env.assert_no_container_held(&pod);
}

#[tokio::test]
async fn a_failed_start_after_the_mounts_is_recorded_and_removable() {
    let env = Env::new();
    let pod = env.run_pod("p").await.unwrap();
    let id = env.create_container(&pod, "c").await.unwrap();
    env.launcher.fail_start.store(true, Ordering::SeqCst);
    let err = env.containerizer.start(&id).await.unwrap_err();
    assert!(err.to_string().contains("start failed"), "{err}");
    let record = env.containerizer.container(&id.value).unwrap();
    assert!(record.start_error.is_some());
    assert_eq!(
        record.cri_state(&record.exit()),
        cri::ContainerState::ContainerExited
    );
    env.containerizer
        .destroy(&id, Duration::ZERO)
        .await
        .unwrap();
    env.assert_no_container_held(&pod);
    // The pod goes last, with nothing of the container left behind.
    let sandbox = ContainerId {
        value: pod.clone(),
        parent: None,
    };
    env.containerizer
        .destroy(&sandbox, Duration::ZERO)
        .await
        .unwrap();
    env.assert_nothing_held();
}
