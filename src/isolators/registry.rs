//! From the `--isolation` chain to isolator objects, as Mesos's
//! `MesosContainerizer::create` instantiates each named isolator through its creator.

use std::sync::Arc;

use cri_mesos_supervisor::protocol::{LaunchInfo, RlimitSpec};

use super::cgroups::Cgroups;
use super::chain::{ContainerPrep, Isolator, IsolatorError};
use super::disk::du::DiskDu;
use super::docker::runtime::DockerRuntime;
use super::filesystem::linux::LinuxFilesystem;
use super::linux::capabilities::LinuxCapabilities;
use super::linux::nnp::LinuxNnp;
use super::linux::seccomp::LinuxSeccomp;
use super::namespaces::ipc::IpcNamespace;
use super::namespaces::pid::PidNamespace;
use super::network::cni::{Cni, CniConfig};
use super::posix::rlimits::PosixRlimits;
use super::volume::host_path::HostPathVolume;
use super::{IsolatorName, SelectionError};
use crate::flags::{FlagError, Flags};

/// Why the flags select no usable chain; the daemon exits 2 on it.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error(transparent)]
    Flag(#[from] FlagError),
}

/// The isolator chain the flags select, as Mesos's `MesosContainerizer::create` reads
/// `--isolation`: [`super::select`]'s chain, plus `posix/rlimits` when the config file
/// sets `rlimits` (the key implies it), checked against what other flags need:
/// image providers need `filesystem/linux` (Mesos's rule; a CRI container always has an
/// image), the docker provider `docker/runtime`, `--cgroups_pids_limit` `cgroups/pids`.
pub fn chain(flags: &Flags) -> Result<Vec<IsolatorName>, ChainError> {
    let mut chain = super::select(&flags.isolation)?;
    if !flags.rlimits.is_empty() {
        chain = super::with("posix/rlimits", chain);
    }
    let has = |name: &str| chain.iter().any(|i| i.as_str() == name);
    let named = || {
        chain
            .iter()
            .map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    if !flags.image_providers.is_empty() && !has("filesystem/linux") {
        return Err(FlagError::Invalid {
            flag: "isolation",
            value: named(),
            reason: format!(
                "image providers (--image_providers={}) need the 'filesystem/linux' isolator, as in Mesos",
                flags.image_providers.join(",")
            ),
        }
        .into());
    }
    if flags.image_providers.iter().any(|p| p == "docker") && !has("docker/runtime") {
        return Err(FlagError::Invalid {
            flag: "isolation",
            value: named(),
            reason: "the docker image provider needs the 'docker/runtime' isolator".into(),
        }
        .into());
    }
    if flags.cgroups_pids_limit > 0 && !has("cgroups/pids") {
        return Err(FlagError::Invalid {
            flag: "cgroups_pids_limit",
            value: flags.cgroups_pids_limit.to_string(),
            reason: "needs the cgroups/pids isolator in --isolation".into(),
        }
        .into());
    }
    Ok(chain)
}

/// What isolators may need from the agent to be created: its flags (`--runtime_dir` for
/// volatile state, `--work_dir` for what survives a reboot, `--network_cni_*`) and the
/// cgroup hierarchies of this host.
#[derive(Debug, Clone)]
pub struct IsolatorContext {
    pub flags: Arc<crate::flags::Flags>,
    pub hierarchies: crate::cgroups::Hierarchies,
}

/// The isolators of `chain`, in its order (the order of [`super::select`], which is
/// Mesos's). Every `cgroups/*` name is one isolator, as in Mesos, placed at the first.
pub fn build(chain: &[IsolatorName], ctx: &IsolatorContext) -> Vec<Box<dyn Isolator>> {
    let mut cgroups_built = false;
    chain
        .iter()
        .filter(|name| {
            let cgroups = name.as_str().starts_with("cgroups/");
            let skip = cgroups && cgroups_built;
            cgroups_built |= cgroups;
            !skip
        })
        .map(|name| -> Box<dyn Isolator> {
            match name.as_str() {
                "filesystem/linux" => Box::new(LinuxFilesystem),
                "docker/runtime" => Box::new(DockerRuntime),
                "volume/host_path" => Box::new(HostPathVolume),
                "namespaces/pid" => Box::new(PidNamespace::default()),
                "namespaces/ipc" => Box::new(IpcNamespace),
                "network/cni" => Box::new(Cni::new(&CniConfig::from_flags(&ctx.flags))),
                "linux/capabilities" => Box::new(LinuxCapabilities),
                n if n.starts_with("cgroups/") => Box::new(Cgroups::new(
                    chain,
                    ctx.hierarchies.clone(),
                    ctx.flags.cgroups_pids_limit,
                )),
                "linux/nnp" => Box::new(LinuxNnp),
                "disk/du" => Box::new(DiskDu::new(
                    ctx.flags.container_disk_watch_interval,
                    ctx.flags.enforce_container_disk_quota,
                )),
                "linux/seccomp" => {
                    Box::new(LinuxSeccomp::new(ctx.flags.seccomp_default_when_empty))
                }
                "posix/rlimits" => Box::new(PosixRlimits {
                    limits: ctx
                        .flags
                        .rlimits
                        .iter()
                        .map(|r| RlimitSpec {
                            resource: r.resource,
                            soft: r.soft,
                            hard: r.hard,
                        })
                        .collect(),
                }),
                _ => Box::new(NotBuilt(*name)),
            }
        })
        .collect()
}

/// Stands for a chain member this module has no implementation of (the catalog calls it
/// built, e.g. `filesystem/posix`). Refusing containers is safer than silently launching
/// them without what the operator asked for.
#[derive(Debug)]
struct NotBuilt(IsolatorName);

#[tonic::async_trait]
impl Isolator for NotBuilt {
    fn name(&self) -> IsolatorName {
        self.0
    }

    async fn prepare(
        &self,
        _container: &ContainerPrep<'_>,
        _launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        Err(IsolatorError::Other {
            isolator: self.0.as_str(),
            reason: "this isolator has no implementation in cri-mesos yet".into(),
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A container ready for `prepare`: a fake rootfs, pod, image and CRI config.

    use std::fs;
    use std::path::PathBuf;

    use cri_mesos_supervisor::protocol::LaunchInfo;
    use k8s_cri::v1 as cri;

    use crate::cgroups::Cgroup;
    use crate::isolators::chain::{
        ContainerPeer, ContainerPrep, Isolator, IsolatorError, NsMode, PodInfo,
    };
    use crate::provisioner::store::ImageRecord;

    pub const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

    pub const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1000:app
audio:x:29:app
docker:x:999:other, app
staff:x:50:
nogroup:x:65534:
";

    pub struct Fixture {
        pub dir: tempfile::TempDir,
        pub pod: PodInfo,
        pub config: cri::ContainerConfig,
        pub image: ImageRecord,
        pub cgroup: Cgroup,
        /// The other containers `prepare` sees (none unless a test adds some).
        pub peers: Vec<ContainerPeer>,
    }

    impl Fixture {
        pub fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let rootfs = dir.path().join("rootfs");
            fs::create_dir_all(rootfs.join("etc")).unwrap();
            fs::write(rootfs.join("etc/passwd"), PASSWD).unwrap();
            fs::write(rootfs.join("etc/group"), GROUP).unwrap();
            let pod_dir = dir.path().join("pod");
            fs::create_dir_all(pod_dir.join("shm")).unwrap();
            let cgroup = Cgroup {
                relative: "test/pod1".into(),
                dirs: Vec::new(),
            };
            let pod = PodInfo {
                id: "pod1".into(),
                config: cri::PodSandboxConfig {
                    hostname: "mypod".into(),
                    ..Default::default()
                },
                dir: pod_dir,
                net_ns: Some(dir.path().join("ns/net")),
                uts_ns: Some(dir.path().join("ns/uts")),
                ipc_ns: Some(dir.path().join("ns/ipc")),
                pid_mode: NsMode::Container,
                cgroup: cgroup.clone(),
            };
            let image = ImageRecord {
                id: "sha256:0123".into(),
                repo_tags: vec!["example.com/app:1".into()],
                repo_digests: Vec::new(),
                layers: Vec::new(),
                size: 0,
                config: serde_json::json!({
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {
                        "Entrypoint": ["/entry"],
                        "Cmd": ["serve", "--port=80"],
                        "Env": ["PATH=/usr/bin:/bin", "LANG=C"],
                        "WorkingDir": "/app",
                    }
                }),
                manifest_digest: "sha256:4567".into(),
            };
            Fixture {
                dir,
                pod,
                config: cri::ContainerConfig::default(),
                image,
                cgroup,
                peers: Vec::new(),
            }
        }

        pub fn rootfs(&self) -> PathBuf {
            self.dir.path().join("rootfs")
        }

        /// The image config's `config` object, to edit.
        pub fn image_config(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
            self.image.config["config"].as_object_mut().unwrap()
        }

        /// The container's security context, created on first use.
        pub fn security_context(&mut self) -> &mut cri::LinuxContainerSecurityContext {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        pub async fn prepare(&self, isolator: &dyn Isolator) -> Result<LaunchInfo, IsolatorError> {
            let mut launch = LaunchInfo::default();
            self.prepare_onto(isolator, &mut launch).await?;
            Ok(launch)
        }

        pub async fn prepare_onto(
            &self,
            isolator: &dyn Isolator,
            launch: &mut LaunchInfo,
        ) -> Result<(), IsolatorError> {
            let rootfs = self.rootfs();
            let prep = ContainerPrep {
                id: "c1",
                pod: &self.pod,
                config: &self.config,
                image: &self.image,
                rootfs: &rootfs,
                writable: Some(&rootfs),
                cgroup: &self.cgroup,
                peers: &self.peers,
                sandbox: None,
            };
            isolator.prepare(&prep, launch).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::Fixture;
    use super::*;
    use crate::isolators::select;

    fn chain_of(args: &[&str]) -> Result<Vec<IsolatorName>, ChainError> {
        let flags = crate::flags::Flags::from_args(
            std::iter::once("cri-mesos").chain(args.iter().copied()),
        )
        .unwrap();
        chain(&flags)
    }

    #[test]
    fn the_chain_follows_mesos_rules_between_flags() {
        let names = |c: Vec<IsolatorName>| c.iter().map(|i| i.as_str()).collect::<Vec<_>>();
        assert!(names(chain_of(&[]).unwrap()).contains(&"disk/du"));
        // Image providers need filesystem/linux; with none named, Mesos implies
        // filesystem/posix, which cannot serve an image.
        let err = chain_of(&["--isolation=docker/runtime"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("need the 'filesystem/linux' isolator"),
            "{err}"
        );
        let err = chain_of(&["--isolation=filesystem/linux"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("docker/runtime"), "{err}");
        let err = chain_of(&[
            "--cgroups_pids_limit=100",
            "--isolation=filesystem/linux,docker/runtime",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("cgroups/pids"), "{err}");
        let err = chain_of(&["--isolation=bogus/thing"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus/thing"), "{err}");
    }

    fn ctx() -> IsolatorContext {
        IsolatorContext {
            flags: Arc::new(crate::flags::Flags::from_args(["cri-mesos"]).unwrap()),
            hierarchies: crate::cgroups::Hierarchies {
                v1: vec![],
                v2: None,
                pure_v2: false,
                v2_controllers: vec![],
            },
        }
    }

    #[test]
    fn builds_the_chain_in_order() {
        let chain = select(crate::flags::DEFAULT_ISOLATION).unwrap();
        let built = build(&chain, &ctx());
        let names: Vec<IsolatorName> = built.iter().map(|i| i.name()).collect();
        // The cgroups/* names are one isolator, listed under the first of them.
        let mut expected = chain.clone();
        let first = expected
            .iter()
            .position(|n| n.as_str().starts_with("cgroups/"));
        let mut i = 0;
        expected.retain(|n| {
            i += 1;
            !n.as_str().starts_with("cgroups/") || Some(i - 1) == first
        });
        assert_eq!(names, expected);
        assert_eq!(names[1].as_str(), "cgroups/cpu");
    }

    #[tokio::test]
    async fn the_default_chain_prepares_a_container() {
        let chain = select(crate::flags::DEFAULT_ISOLATION).unwrap();
        let f = Fixture::new();
        let mut launch = LaunchInfo::default();
        for isolator in build(&chain, &ctx()) {
            f.prepare_onto(isolator.as_ref(), &mut launch)
                .await
                .unwrap();
        }
        assert_eq!(launch.rootfs, f.rootfs());
        assert_eq!(launch.process.args, ["/entry", "serve", "--port=80"]);
        assert!(launch.namespaces.new_pid);
        assert_eq!(launch.namespaces.join.len(), 3);
        assert_eq!(launch.mounts.len(), 4);
    }

    #[tokio::test]
    async fn an_isolator_without_implementation_refuses() {
        // Implied when no filesystem isolator is named; it is not built.
        let chain = select("namespaces/pid").unwrap();
        let built = build(&chain, &ctx());
        assert_eq!(built[0].name().as_str(), "filesystem/posix");
        let err = Fixture::new().prepare(built[0].as_ref()).await.unwrap_err();
        assert!(err.to_string().starts_with("filesystem/posix: "), "{err}");
    }
}
