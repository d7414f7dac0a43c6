//! Pod lifecycle latency, memory and processes per pod, through the CRI socket, for
//! cri-mesos and, side by side, containerd (Debian's, when installed) with the same
//! workload, images, registry and CNI network configuration.
//!
//! For each runtime: the time to pull the busybox image (cold store), the median of
//! RunPodSandbox+CreateContainer+StartContainer and of StopPodSandbox+RemovePodSandbox over
//! 25 pods, then, with 20 pods running, what the runtime adds per pod:
//! - cri-mesos: (PSS of every `cri-mesos-supervisor` + the daemon's PSS growth over idle) / 20,
//!   processes = supervisors;
//! - containerd: (PSS of every `containerd-shim-runc-v2` of our containerd + every sandbox's
//!   pause process + containerd's PSS growth over idle) / 20, processes = shims + pauses.
//!
//! The workload's own processes (`sleep`) are not counted for either. Each runtime gets its
//! own bridge (unique name, private /16 not routed on the host) from the same conflist
//! template: bridge + host-local + portmap + loopback. If cri-mesos cannot run a pod with a
//! CNI config, it is measured without one, and the table says so. cri-mesos is measured a
//! second time without any CNI config (comparable with the figures from before the
//! network/cni isolator), and a third time so, with every container under seccomp's
//! RuntimeDefault (`--seccomp_default_when_empty`) beside that Unconfined row; containerd's
//! CRI cannot run pods without CNI.
//!
//! A containerd failure is printed in the table (with the reason and its log's tail) and
//! does not fail the bench; a cri-mesos failure does.
//!
//! Run with `hack/bench.sh pods` (builds both release binaries and installs containerd).
//! `CRI_BENCH_ONLY=cri-mesos|cri-mesos-nocni|containerd` measures a subset (a prefix of the
//! row names: `cri-mesos-nocni` gives Unconfined and RuntimeDefault side by side);
//! `CRI_BENCH_RUNC=/path` gives containerd another runc.

#[path = "pods/containerd.rs"]
mod containerd;
#[path = "pods/procfs.rs"]
mod procfs;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use test_support::images::{TAG, busybox_entries, busybox_image};
use test_support::{Compression, Daemon, ImageBuilder, Layer, ManifestFormat, Registry, TarEntry};
use tonic::transport::Channel;

const ROUNDS: usize = 25;
const RUNNING: usize = 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CNI_BIN_DIR: &str = "/usr/lib/cni";

type Rt = RuntimeServiceClient<Channel>;
type Img = ImageServiceClient<Channel>;

/// The processes a runtime adds for each pod.
enum PerPod {
    /// cri-mesos: supervisors (their executable, with a `--socket` under the daemon's dir).
    Supervisors { exe: PathBuf, dir: PathBuf },
    /// containerd: the shims of our containerd, plus each sandbox's pause process.
    ShimsAndPause { shim: PathBuf, socket: PathBuf },
}

/// A CRI endpoint to measure.
struct Target {
    rt: Rt,
    img: Img,
    daemon_pid: i32,
    per_pod: PerPod,
}

struct Figures {
    pull: Duration,
    start: Duration,
    stop: Duration,
    kb_per_pod: f64,
    procs_per_pod: f64,
    notes: Vec<String>,
}

struct Row {
    runtime: String,
    network: String,
    result: Result<Figures, String>,
    notes: Vec<String>,
}

/// One CNI network, written as `<base>/<tag>/net.d/10-<name>.conflist`.
struct Network {
    conf_dir: PathBuf,
    name: String,
    bridge: String,
    subnet: String,
}

impl Network {
    fn write(base: &Path, tag: &str, subnet: &str) -> Result<Self> {
        let dir = base.join(tag);
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&conf_dir)?;
        let pid = std::process::id();
        // IFNAMSIZ: at most 15 characters.
        let bridge = format!("cb{pid}-{}", &tag[..tag.len().min(4)]);
        let name = format!("cri-bench-{tag}-{pid}");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": subnet }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": dir.join("ipam"),
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" },
            ],
        });
        std::fs::write(
            conf_dir.join(format!("10-{name}.conflist")),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(Self {
            conf_dir,
            name,
            bridge,
            subnet: subnet.into(),
        })
    }

    fn describe(&self) -> String {
        format!("CNI bridge {}", self.subnet)
    }

    /// The bridge and libcni's cache entries: the bridge plugin never deletes its bridge.
    fn clean_up(&self, notes: &mut Vec<String>) {
        if let Err(e) = containerd::delete_link(&self.bridge) {
            notes.push(e);
        }
        containerd::remove_cni_cache(&self.name, &[]);
    }
}

/// Private /16s of 10.222-10.250 that no address or route on the host touches.
fn free_subnets(n: usize) -> Vec<String> {
    let mut seen = String::new();
    for args in [
        &["-4", "route", "show", "table", "all"][..],
        &["-4", "-o", "addr", "show"],
    ] {
        if let Ok(out) = Command::new("ip").args(args).output() {
            seen.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    (222..=250)
        .filter(|b| !seen.contains(&format!(" 10.{b}.")) && !seen.contains(&format!("\n10.{b}.")))
        .filter(|b| !seen.starts_with(&format!("10.{b}.")))
        .map(|b| format!("10.{b}.0.0/16"))
        .take(n)
        .collect()
}

/// The sandbox image for containerd: a static pause (like Kubernetes' pause.c: sleeps in
/// pause(2), reaps children, exits on SIGINT/SIGTERM) when `cc -static` works, else busybox
/// `sleep`. Returns the image and what it runs.
fn pause_image(work: &Path) -> (test_support::BuiltImage, &'static str) {
    const PAUSE_C: &str = r#"#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = quit;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
}
"#;
    let src = work.join("pause.c");
    let bin = work.join("pause");
    let built = std::fs::write(&src, PAUSE_C).is_ok()
        && Command::new("cc")
            .args(["-static", "-Os", "-s", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
    match std::fs::read(&bin) {
        Ok(pause) if built => (
            ImageBuilder::oci()
                .layer(
                    Layer::new([TarEntry::file("pause", pause).mode(0o755)]),
                    Compression::Gzip,
                )
                .config("Entrypoint", json!(["/pause"]))
                .build(),
            "static pause (built with cc -static)",
        ),
        _ => (
            ImageBuilder::oci()
                .layer(Layer::new(busybox_entries()), Compression::Gzip)
                .config("Entrypoint", json!(["/bin/sleep", "2147483647"]))
                .build(),
            "busybox sleep (cc -static failed)",
        ),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One CRI call with a deadline; errors carry the status.
async fn call<T>(
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Err(_) => bail!("{what}: no answer within {CALL_TIMEOUT:?}"),
        Ok(Err(s)) => bail!("{what}: {:?}: {}", s.code(), s.message()),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

fn pod(name: &str, logs: &Path) -> cri::PodSandboxConfig {
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

/// RunPodSandbox + CreateContainer + StartContainer; the pod id goes into `pods` as soon as
/// it exists, so a failure later still gets it removed.
async fn start_pod(
    rt: &mut Rt,
    name: &str,
    image: &str,
    logs: &Path,
    pods: &mut Vec<String>,
) -> Result<String> {
    let config = pod(name, logs);
    let id = call(
        "RunPodSandbox",
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }),
    )
    .await?
    .pod_sandbox_id;
    pods.push(id.clone());
    let cid = call(
        "CreateContainer",
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container(image)),
            sandbox_config: Some(config),
        }),
    )
    .await?
    .container_id;
    call(
        "StartContainer",
        rt.start_container(cri::StartContainerRequest { container_id: cid }),
    )
    .await?;
    Ok(id)
}

/// StopPodSandbox + RemovePodSandbox.
async fn stop_pod(rt: &mut Rt, id: &str, pods: &mut Vec<String>) -> Result<()> {
    call(
        "StopPodSandbox",
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        }),
    )
    .await?;
    call(
        "RemovePodSandbox",
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        }),
    )
    .await?;
    pods.retain(|p| p != id);
    Ok(())
}

/// The same measurement against any CRI endpoint; pods it made are removed, also on error.
async fn measure(t: &Target, image: &str, logs: &Path) -> Result<Figures> {
    let mut pods = Vec::new();
    let result = measure_pods(t, image, logs, &mut pods).await;
    let mut rt = t.rt.clone();
    for id in pods.clone() {
        if let Err(e) = stop_pod(&mut rt, &id, &mut pods).await {
            eprintln!("pods bench: removing pod {id}: {e:#}");
        }
    }
    result
}

async fn measure_pods(
    t: &Target,
    image: &str,
    logs: &Path,
    pods: &mut Vec<String>,
) -> Result<Figures> {
    let mut rt = t.rt.clone();
    let mut img = t.img.clone();
    let started = Instant::now();
    call(
        "PullImage",
        img.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await?;
    let pull = started.elapsed();

    // Warm-up so one-off costs (first exec, page cache, containerd pulling the sandbox
    // image) stay out of the figures.
    let id = start_pod(&mut rt, "warmup", image, logs, pods)
        .await
        .context("warm-up pod")?;
    stop_pod(&mut rt, &id, pods).await.context("warm-up pod")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_pss = procfs::pss_kb(t.daemon_pid);

    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for i in 0..ROUNDS {
        let started = Instant::now();
        let id = start_pod(&mut rt, &format!("lat-{i}"), image, logs, pods).await?;
        starts.push(started.elapsed());
        let started = Instant::now();
        stop_pod(&mut rt, &id, pods).await?;
        stops.push(started.elapsed());
    }

    let mut running = Vec::new();
    for i in 0..RUNNING {
        running.push(start_pod(&mut rt, &format!("mem-{i}"), image, logs, pods).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (procs, mut notes) = per_pod_processes(t, &mut rt, &running).await?;
    let pss: Vec<(&str, u64)> = procs
        .iter()
        .map(|(kind, p)| (*kind, procfs::pss_kb(p.pid)))
        .collect();
    let daemon_pss = procfs::pss_kb(t.daemon_pid);
    let growth = daemon_pss.saturating_sub(idle_pss);
    let mut kinds: Vec<&str> = pss.iter().map(|(k, _)| *k).collect();
    kinds.dedup();
    for kind in kinds {
        let of_kind: Vec<u64> = pss
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, v)| *v)
            .collect();
        let total: u64 = of_kind.iter().sum();
        notes.push(format!(
            "{} x {kind}: PSS {total} kB in all, {} kB each",
            of_kind.len(),
            total / of_kind.len().max(1) as u64
        ));
    }
    notes.push(format!(
        "daemon PSS {idle_pss} kB idle, {daemon_pss} kB with {RUNNING} pods (+{growth} kB)"
    ));
    let procs_pss: u64 = pss.iter().map(|(_, v)| v).sum();
    for id in running {
        stop_pod(&mut rt, &id, pods).await?;
    }
    Ok(Figures {
        pull,
        start: median(starts),
        stop: median(stops),
        kb_per_pod: (procs_pss + growth) as f64 / RUNNING as f64,
        procs_per_pod: procs.len() as f64 / RUNNING as f64,
        notes,
    })
}

/// The runtime's own processes for the running pods, each with what it is, and notes on
/// anything unexpected.
async fn per_pod_processes(
    t: &Target,
    rt: &mut Rt,
    running: &[String],
) -> Result<(Vec<(&'static str, procfs::Proc)>, Vec<String>)> {
    let mut notes = Vec::new();
    let procs = match &t.per_pod {
        PerPod::Supervisors { exe, dir } => procfs::processes()
            .into_iter()
            .filter(|p| &p.exe == exe && p.has_arg_under(dir))
            .map(|p| ("cri-mesos-supervisor", p))
            .collect(),
        PerPod::ShimsAndPause { shim, socket } => {
            let shims = containerd::shims_of(shim, socket);
            let mut pauses = Vec::new();
            for id in running {
                let status = call(
                    "PodSandboxStatus",
                    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: id.clone(),
                        verbose: true,
                    }),
                )
                .await?;
                let info: serde_json::Value =
                    serde_json::from_str(status.info.get("info").map_or("{}", String::as_str))?;
                let pid = info["pid"]
                    .as_i64()
                    .with_context(|| format!("no sandbox pid in the verbose status of {id}"))?;
                let pause = procfs::process(pid as i32)
                    .with_context(|| format!("pause process {pid} of {id} is gone"))?;
                if !shims.iter().any(|s| s.pid == pause.ppid) {
                    notes.push(format!(
                        "pause {pid} has parent {}, not a shim of ours",
                        pause.ppid
                    ));
                }
                pauses.push(pause);
            }
            let shims = shims.into_iter().map(|p| ("containerd-shim-runc-v2", p));
            shims
                .chain(pauses.into_iter().map(|p| ("pause", p)))
                .collect()
        }
    };
    Ok((procs, notes))
}

async fn runtime_version(rt: &mut Rt) -> Result<String> {
    let v = call(
        "Version",
        rt.version(cri::VersionRequest {
            version: "v1".into(),
        }),
    )
    .await?;
    Ok(format!("{} {}", v.runtime_name, v.runtime_version))
}

/// Starts cri-mesos with `net` and checks that it can run a pod with it.
async fn start_cri_mesos_with_cni(
    builder: test_support::DaemonBuilder,
    net: &Network,
) -> Result<Daemon> {
    let daemon = builder
        .arg(format!(
            "--network_cni_config_dir={}",
            net.conf_dir.display()
        ))
        .arg(format!("--network_cni_plugins_dir={CNI_BIN_DIR}"))
        .start()
        .await?;
    let mut rt = daemon.runtime_client().await?;
    let mut pods = Vec::new();
    let probe = async {
        let id = call(
            "RunPodSandbox",
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod("cni-probe", &daemon.dir().join("logs"))),
                runtime_handler: String::new(),
            }),
        )
        .await?
        .pod_sandbox_id;
        pods.push(id.clone());
        stop_pod(&mut rt.clone(), &id, &mut pods).await
    };
    probe.await?;
    Ok(daemon)
}

/// How cri-mesos is networked.
enum MesosNet<'a> {
    /// With a CNI conflist on this subnet (or, without one, a note saying why not).
    Cni(Option<&'a String>),
    /// Without any CNI config, as the figures before the network/cni isolator.
    Off,
}

async fn run_cri_mesos(
    bin: &str,
    supervisor: &Path,
    registry: &str,
    image: &str,
    work: &Path,
    cni: MesosNet<'_>,
    seccomp: bool,
) -> Row {
    let mut notes = Vec::new();
    let mut builder = Daemon::builder(bin)
        .arg(format!("--insecure_registries={registry}"))
        .env("RUST_LOG", "warn");
    // The bench's containers name no profile: the flag makes that RuntimeDefault.
    if seccomp {
        builder = builder.arg("--seccomp_default_when_empty");
    }
    let net = match cni {
        MesosNet::Off => None,
        MesosNet::Cni(Some(s)) => Some(
            Network::write(work, "mesos", s).map_err(|e| format!("writing the conflist: {e:#}")),
        ),
        MesosNet::Cni(None) => Some(Err("no free private /16 for the CNI bridge".to_string())),
    };
    let mut network = "no CNI config".to_string();
    if seccomp {
        network.push_str(", seccomp RuntimeDefault");
    }
    let daemon = match &net {
        None => builder.start().await,
        Some(Ok(net)) => match start_cri_mesos_with_cni(builder.clone(), net).await {
            Ok(daemon) => {
                network = net.describe();
                Ok(daemon)
            }
            Err(e) => {
                net.clean_up(&mut notes);
                notes.push(format!(
                    "ran WITHOUT CNI: RunPodSandbox with --network_cni_config_dir failed: {e:#}"
                ));
                builder.start().await
            }
        },
        Some(Err(reason)) => {
            notes.push(format!("ran WITHOUT CNI: {reason}"));
            builder.start().await
        }
    };
    let mut daemon = match daemon {
        Ok(d) => d,
        Err(e) => {
            return Row {
                runtime: "cri-mesos".into(),
                network,
                result: Err(format!("{e:#}")),
                notes,
            };
        }
    };
    let result = async {
        let mut rt = daemon.runtime_client().await?;
        let version = runtime_version(&mut rt).await?;
        let target = Target {
            img: daemon.image_client().await?,
            rt,
            daemon_pid: daemon.pid().context("daemon pid")? as i32,
            per_pod: PerPod::Supervisors {
                exe: supervisor.to_owned(),
                dir: daemon.dir().to_owned(),
            },
        };
        let logs = work.join("logs-cri-mesos");
        anyhow::Ok((version, measure(&target, image, &logs).await?))
    }
    .await;
    if let Err(e) = daemon.stop().await {
        notes.push(format!("stopping cri-mesos: {e:#}"));
    }
    if result.is_err() {
        let log = daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "cri-mesos log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    drop(daemon);
    if let Some(Ok(net)) = &net {
        net.clean_up(&mut notes);
    }
    match result {
        Ok((version, figures)) => Row {
            runtime: version,
            network,
            result: Ok(figures),
            notes,
        },
        Err(e) => Row {
            runtime: "cri-mesos".into(),
            network,
            result: Err(format!("{e:#}")),
            notes,
        },
    }
}

async fn run_containerd(
    registry: &Registry,
    sandbox_image: &str,
    image: &str,
    work: &Path,
    subnet: Option<&String>,
) -> Row {
    let mut notes = Vec::new();
    let failed = |network: String, reason: String, notes: Vec<String>| Row {
        runtime: "containerd".into(),
        network,
        result: Err(reason),
        notes,
    };
    let bins = match containerd::Binaries::find() {
        Ok(b) => b,
        Err(e) => return failed("-".into(), e, notes),
    };
    let Some(subnet) = subnet else {
        return failed(
            "-".into(),
            "no free private /16 for the CNI bridge (containerd's CRI needs CNI)".into(),
            notes,
        );
    };
    let net = match Network::write(work, "ctrd", subnet) {
        Ok(n) => n,
        Err(e) => return failed("-".into(), format!("writing the conflist: {e:#}"), notes),
    };
    let ctrd = containerd::Containerd::start(containerd::Setup {
        bins: &bins,
        registry: &registry.addr(),
        sandbox_image,
        cni_conf_dir: &net.conf_dir,
        cni_bin_dir: Path::new(CNI_BIN_DIR),
        cni_network: &net.name,
        bridge: &net.bridge,
    })
    .await;
    let ctrd = match ctrd {
        Ok(c) => c,
        Err(e) => {
            net.clean_up(&mut notes);
            return failed(net.describe(), format!("{e:#}"), notes);
        }
    };
    if containerd::restrict_oom_score_adj() {
        notes.push(
            "restrict_oom_score_adj = true (no CAP_SYS_RESOURCE here: sandboxes cannot get -998)"
                .into(),
        );
    }
    let result = async {
        let mut rt = ctrd.runtime_client().await?;
        let version = runtime_version(&mut rt).await?;
        let target = Target {
            img: ctrd.image_client().await?,
            rt,
            daemon_pid: ctrd.pid().context("containerd pid")?,
            per_pod: PerPod::ShimsAndPause {
                shim: bins.shim.clone(),
                socket: ctrd.socket().to_owned(),
            },
        };
        let logs = work.join("logs-containerd");
        anyhow::Ok((version, measure(&target, image, &logs).await?))
    }
    .await;
    if result.is_err() {
        eprintln!("containerd log (last lines):\n{}", ctrd.log_tail());
    }
    if let Err(e) = ctrd.shutdown().await {
        notes.push(format!("{e:#}"));
    }
    net.clean_up(&mut notes);
    match result {
        Ok((version, figures)) => Row {
            runtime: version,
            network: net.describe(),
            result: Ok(figures),
            notes,
        },
        Err(e) => failed(net.describe(), format!("{e:#}"), notes),
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "runtime",
        "network",
        "pull busybox",
        "start median",
        "stop median",
        "kB per pod",
        "processes per pod",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| match &r.result {
            Ok(f) => vec![
                r.runtime.clone(),
                r.network.clone(),
                ms(f.pull),
                ms(f.start),
                ms(f.stop),
                format!("{:.0}", f.kb_per_pod),
                format!("{:.2}", f.procs_per_pod),
            ],
            Err(_) => vec![
                r.runtime.clone(),
                r.network.clone(),
                "FAILED".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: Vec<String>| {
        cols.iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 2 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for c in cells {
        println!("{}", line(c));
    }
    for r in rows {
        println!("{} ({}):", r.runtime, r.network);
        if let Err(e) = &r.result {
            println!("  FAILED: {e}");
        }
        if let Ok(f) = &r.result {
            for n in &f.notes {
                println!("  {n}");
            }
        }
        for n in &r.notes {
            println!("  {n}");
        }
    }
}

#[tokio::main]
async fn main() {
    if !test_support::is_root() {
        eprintln!("pods bench: needs root; skipped");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_cri-mesos");
    let supervisor = Path::new(bin).with_file_name("cri-mesos-supervisor");
    assert!(
        supervisor.exists(),
        "build {} first (hack/bench.sh does)",
        supervisor.display()
    );
    let supervisor = supervisor.canonicalize().unwrap();
    let work = tempfile::Builder::new()
        .prefix("cri-bench-pods-")
        .tempdir()
        .expect("temp dir");
    let registry = Registry::start().await.expect("registry");
    let busybox = registry
        .push(
            "busybox",
            TAG,
            &busybox_image(ManifestFormat::Oci, Compression::Gzip),
        )
        .await
        .expect("push busybox");
    // One read of everything first, so the first runtime's pull does not pay for a cold
    // registry (its first requests, its page cache).
    let client = registry.client();
    client
        .get_manifest("busybox", TAG)
        .await
        .expect("get manifest");
    for digest in busybox.layer_digests.iter().chain([&busybox.config_digest]) {
        client.get_blob("busybox", digest).await.expect("get blob");
    }
    let busybox = busybox.reference();
    let (pause, pause_kind) = pause_image(work.path());
    let pause = registry
        .push("pause", "3.9", &pause)
        .await
        .expect("push pause")
        .reference();
    let subnets = free_subnets(2);
    let load_before = loadavg();

    // CRI_BENCH_ONLY=cri-mesos (its three rows), cri-mesos-nocni (Unconfined beside
    // RuntimeDefault) or containerd.
    let only = std::env::var("CRI_BENCH_ONLY").unwrap_or_default();
    let wanted = |row: &str| only.is_empty() || row.starts_with(only.as_str());
    let mut rows = Vec::new();
    for (row, cni, seccomp) in [
        ("cri-mesos", MesosNet::Cni(subnets.first()), false),
        ("cri-mesos-nocni", MesosNet::Off, false),
        ("cri-mesos-nocni-seccomp", MesosNet::Off, true),
    ] {
        if wanted(row) {
            let addr = registry.addr();
            rows.push(
                run_cri_mesos(bin, &supervisor, &addr, &busybox, work.path(), cni, seccomp).await,
            );
        }
    }
    if wanted("containerd") {
        rows.push(run_containerd(&registry, &pause, &busybox, work.path(), subnets.get(1)).await);
    }

    println!();
    println!(
        "pods bench: release build, one busybox `sleep` container per pod; start = \
         RunPodSandbox+CreateContainer+StartContainer, stop = StopPodSandbox+RemovePodSandbox \
         (medians of {ROUNDS}); memory and processes per pod with {RUNNING} pods running \
         (the containers' own `sleep` not counted); pull = PullImage of busybox into an empty store"
    );
    println!("containerd's sandbox image: {pause_kind}");
    println!(
        "load average (1/5/15 min) before: {load_before}, after: {} (2 cores here: other \
         work on the machine shows in the latencies)",
        loadavg()
    );
    println!();
    print_table(&rows);
    // containerd is the yardstick: its failure is reported above, but ours fails the bench.
    if rows
        .iter()
        .any(|r| r.runtime.starts_with("cri-mesos") && r.result.is_err())
    {
        drop(registry);
        drop(work);
        std::process::exit(1);
    }
}
