//! `linux/seccomp`: the CRI's seccomp profile, always applied (implied, like
//! `linux/capabilities`). The daemon reads the profile, keeps the rules that apply to the
//! container's capabilities and compiles them to a BPF program once per (profile,
//! capability set, architecture); the container's child (and each exec session) loads
//! the ready program.

pub mod compile;
pub mod default_profile;
pub mod profile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use cri_mesos_supervisor::protocol::{LaunchInfo, SeccompProgram};
use k8s_cri::v1 as cri;
use k8s_cri::v1::security_profile::ProfileType;
use sha2::{Digest, Sha256};

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};
use crate::isolators::linux::capabilities;
use crate::quote::quote;

/// The architecture compiled for, part of the cache key.
const ARCH: &str = "x86_64";

/// Compiled programs kept; a node sees a few profiles and capability sets.
const CACHE_MAX: usize = 256;

/// What a security context's seccomp fields ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

/// The CRI's meaning of `seccomp` and the deprecated `seccomp_profile_path` (read only
/// when `seccomp` is absent): no message and an empty path mean Unconfined, or
/// RuntimeDefault with `--seccomp_default_when_empty`; a message means what its type says
/// (`SecurityProfile{}` is RuntimeDefault). `prefix` names the security context.
pub fn choice(
    prefix: &str,
    seccomp: Option<&cri::SecurityProfile>,
    deprecated_path: &str,
    default_when_empty: bool,
) -> Result<Choice, IsolatorError> {
    let invalid = |field: &str, reason: String| IsolatorError::InvalidArgument {
        field: format!("{prefix}.{field}"),
        reason,
    };
    let localhost = |field: &str, path: &str| {
        if path.starts_with('/') && !path.contains('\0') {
            Ok(Choice::Localhost(PathBuf::from(path)))
        } else {
            Err(invalid(
                field,
                format!("{} is not an absolute path", quote(path)),
            ))
        }
    };
    if let Some(p) = seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Localhost) => localhost("seccomp.localhost_ref", &p.localhost_ref),
            Ok(_) if !p.localhost_ref.is_empty() => Err(invalid(
                "seccomp.localhost_ref",
                "must be empty unless profile_type is Localhost".into(),
            )),
            Ok(ProfileType::RuntimeDefault) => Ok(Choice::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Choice::Unconfined),
            Err(_) => Err(invalid(
                "seccomp.profile_type",
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    match deprecated_path {
        "" if default_when_empty => Ok(Choice::RuntimeDefault),
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        path => match path.strip_prefix("localhost/") {
            Some(file) => localhost("seccomp_profile_path", file),
            None => Err(invalid(
                "seccomp_profile_path",
                format!(
                    "{}: expected runtime/default, docker/default, unconfined or \
                     localhost/<absolute path>",
                    quote(path)
                ),
            )),
        },
    }
}

/// The container's choice (its security context's fields).
pub fn container_choice(
    config: &cri::ContainerConfig,
    default_when_empty: bool,
) -> Result<Choice, IsolatorError> {
    let sc = super::security_context(config);
    #[allow(deprecated)]
    let deprecated = sc.map_or("", |s| s.seccomp_profile_path.as_str());
    choice(
        "config.linux.security_context",
        sc.and_then(|s| s.seccomp.as_ref()),
        deprecated,
        default_when_empty,
    )
}

/// moby's default profile and its digest, made once.
static RUNTIME_DEFAULT: LazyLock<(profile::Profile, [u8; 32])> = LazyLock::new(|| {
    let p = default_profile::profile();
    let d = digest(&p);
    (p, d)
});

/// This kernel's `major.minor` (moby's `minKernel` compares with it).
static KERNEL: LazyLock<(u32, u32)> = LazyLock::new(|| {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| profile::kernel_version(r.trim()))
        .unwrap_or((0, 0))
});

fn digest(p: &profile::Profile) -> [u8; 32] {
    let text = serde_json::to_vec(p).expect("a profile serializes");
    Sha256::digest(&text).into()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    profile: [u8; 32],
    /// The bounding set: what moby's `includes.caps` are read against.
    caps: u64,
    arch: &'static str,
}

#[derive(Debug, Default)]
pub struct LinuxSeccomp {
    /// `--seccomp_default_when_empty`.
    pub default_when_empty: bool,
    cache: Mutex<HashMap<Key, Arc<SeccompProgram>>>,
    compilations: AtomicU64,
    hits: AtomicU64,
}

impl LinuxSeccomp {
    pub fn new(default_when_empty: bool) -> LinuxSeccomp {
        LinuxSeccomp {
            default_when_empty,
            ..Default::default()
        }
    }

    /// How many programs were compiled (the rest came from the cache).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// The program of `profile` for the bounding set `caps`, compiled on first use.
    fn program(
        &self,
        profile: &profile::Profile,
        digest: [u8; 32],
        caps: u64,
        origin: &str,
    ) -> Result<Arc<SeccompProgram>, IsolatorError> {
        let key = Key {
            profile: digest,
            caps,
            arch: ARCH,
        };
        if let Some(p) = self.cache.lock().expect("seccomp cache").get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(p.clone());
        }
        let resolved = profile::resolve(profile, caps, *KERNEL);
        let compiled = compile::compile(&resolved).map_err(|e| IsolatorError::InvalidArgument {
            field: "config.linux.security_context.seccomp".into(),
            reason: format!("{origin}: {e}"),
        })?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        if !compiled.unknown.is_empty() {
            tracing::info!(
                profile = origin,
                skipped = ?compiled.unknown,
                "seccomp: system calls libseccomp does not know are skipped, as runc skips them"
            );
        }
        let program = Arc::new(SeccompProgram::new(&compiled.bpf, resolved.flags));
        let mut cache = self.cache.lock().expect("seccomp cache");
        if cache.len() >= CACHE_MAX
            && let Some(k) = cache.keys().next().cloned()
        {
            cache.remove(&k);
        }
        cache.insert(key, program.clone());
        Ok(program)
    }
}

#[tonic::async_trait]
impl Isolator for LinuxSeccomp {
    fn name(&self) -> IsolatorName {
        IsolatorName("linux/seccomp")
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let choice = container_choice(container.config, self.default_when_empty)?;
        // A privileged container ignores any profile, as containerd and CRI-O do.
        if super::privileged(container.config) {
            return Ok(());
        }
        let caps = launch
            .process
            .capabilities
            .map_or(capabilities::ALL, |c| c.bounding);
        let program = match choice {
            Choice::Unconfined => return Ok(()),
            Choice::RuntimeDefault => {
                let (p, d) = &*RUNTIME_DEFAULT;
                self.program(p, *d, caps, "RuntimeDefault")?
            }
            Choice::Localhost(path) => {
                let p = profile::load(&path).map_err(|e| IsolatorError::InvalidArgument {
                    field: localhost_field(container.config).into(),
                    reason: e.to_string(),
                })?;
                self.program(&p, digest(&p), caps, &path.display().to_string())?
            }
        };
        launch.process.seccomp = Some((*program).clone());
        Ok(())
    }

    fn node_status(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "compilations": self.compilations(),
            "cacheHits": self.hits.load(Ordering::Relaxed),
            "cached": self.cache.lock().expect("seccomp cache").len(),
        }))
    }
}

/// The field a Localhost profile came from.
fn localhost_field(config: &cri::ContainerConfig) -> &'static str {
    if super::security_context(config).is_some_and(|s| s.seccomp.is_some()) {
        "config.linux.security_context.seccomp.localhost_ref"
    } else {
        "config.linux.security_context.seccomp_profile_path"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::registry::test_support::Fixture;

    fn profile(t: ProfileType, path: &str) -> Option<cri::SecurityProfile> {
        Some(cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: path.into(),
        })
    }

    #[test]
    fn the_cri_fields_mean_what_the_cri_says() {
        let c = |p: Option<cri::SecurityProfile>, path: &str, flag: bool| {
            choice("sc", p.as_ref(), path, flag)
        };
        assert_eq!(c(None, "", false).unwrap(), Choice::Unconfined);
        assert_eq!(c(None, "", true).unwrap(), Choice::RuntimeDefault);
        assert_eq!(
            c(Some(Default::default()), "", false).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            c(
                profile(ProfileType::Unconfined, ""),
                "runtime/default",
                true
            )
            .unwrap(),
            Choice::Unconfined,
            "the message wins over the deprecated path"
        );
        assert_eq!(
            c(profile(ProfileType::Localhost, "/p.json"), "", false).unwrap(),
            Choice::Localhost("/p.json".into())
        );
        assert_eq!(
            c(None, "docker/default", false).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(c(None, "unconfined", true).unwrap(), Choice::Unconfined);
        assert_eq!(
            c(None, "localhost//etc/p.json", false).unwrap(),
            Choice::Localhost("/etc/p.json".into())
        );
        let e = c(profile(ProfileType::Localhost, "p.json"), "", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sc.seccomp.localhost_ref: \"p.json\" is not an absolute path"
        );
        let e = c(None, "localhost/rel", false).unwrap_err();
        assert!(
            e.to_string().starts_with("sc.seccomp_profile_path: "),
            "{e}"
        );
        let e = c(None, "bogus", false).unwrap_err();
        assert!(e.to_string().contains("\"bogus\""), "{e}");
        let e = c(profile(ProfileType::Unconfined, "/p.json"), "", false).unwrap_err();
        assert!(e.to_string().starts_with("sc.seccomp.localhost_ref"), "{e}");
    }

    #[tokio::test]
    async fn one_compilation_per_profile_and_capability_set() {
        let seccomp = LinuxSeccomp::new(true);
        let mut f = Fixture::new();
        let mut launch = LaunchInfo::default();
        launch.process.capabilities = Some(capabilities::capability_set(None, false, 0).unwrap());
        f.prepare_onto(&seccomp, &mut launch).await.unwrap();
        assert!(
            launch.process.seccomp.is_some(),
            "the flag makes absent RuntimeDefault"
        );
        f.prepare_onto(&seccomp, &mut launch).await.unwrap();
        assert_eq!(seccomp.compilations(), 1);
        launch.process.capabilities = Some(capabilities::capability_set(None, true, 0).unwrap());
        f.prepare_onto(&seccomp, &mut launch).await.unwrap();
        assert_eq!(seccomp.compilations(), 2, "another capability set");

        // Privileged: no filter, whatever the profile.
        f.security_context().privileged = true;
        f.security_context().seccomp = profile(ProfileType::Localhost, "/no/such.json");
        let launch = f.prepare(&seccomp).await.unwrap();
        assert!(launch.process.seccomp.is_none());
    }

    #[tokio::test]
    async fn bad_localhost_profiles_are_refused_naming_the_path() {
        let seccomp = LinuxSeccomp::new(false);
        let mut f = Fixture::new();
        let bad = f.dir.path().join("bad.json");
        std::fs::write(&bad, "{\"defaultAction\": ").unwrap();
        for (path, says) in [
            (bad.display().to_string(), "is not a seccomp profile: EOF"),
            ("/no/such.json".to_string(), "cannot read seccomp profile"),
        ] {
            f.security_context().seccomp = profile(ProfileType::Localhost, &path);
            let e = f.prepare(&seccomp).await.unwrap_err();
            assert!(matches!(e, IsolatorError::InvalidArgument { .. }), "{e:?}");
            let text = e.to_string();
            assert!(
                text.starts_with("config.linux.security_context.seccomp.localhost_ref: ")
                    && text.contains(&path)
                    && text.contains(says),
                "{text}"
            );
        }
    }
}
