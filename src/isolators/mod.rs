//! The isolator chain: which Mesos isolators exist, which ones this runtime builds, and
//! how `--isolation` becomes an ordered chain (the rules of Mesos's
//! `MesosContainerizer::create`).

pub mod cgroups;
pub mod chain;
pub mod disk;
pub mod docker;
pub mod filesystem;
pub mod linux;
pub mod namespaces;
pub mod network;
pub mod posix;
pub mod registry;
pub mod volume;

use std::fmt;

use serde::Serialize;

/// Where an isolator stands in Mesos's fixed order. Mesos prepares isolators serially in
/// this order (filesystem first, so later isolators see the rootfs) and cleans them up in
/// reverse, whatever order the operator wrote them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Filesystem,
    Runtime,
    Volume,
    Disk,
    Gpu,
    Network,
    Misc,
}

struct Known {
    name: &'static str,
    stage: Stage,
    /// Whether this runtime builds the isolator yet.
    built: bool,
}

/// Every built-in Mesos isolator, in Mesos's creation order.
const CATALOG: &[Known] = &[
    Known {
        name: "filesystem/posix",
        stage: Stage::Filesystem,
        built: false,
    },
    Known {
        name: "filesystem/linux",
        stage: Stage::Filesystem,
        built: true,
    },
    Known {
        name: "filesystem/shared",
        stage: Stage::Filesystem,
        built: false,
    },
    Known {
        name: "filesystem/windows",
        stage: Stage::Filesystem,
        built: false,
    },
    Known {
        name: "posix/cpu",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "posix/mem",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "posix/rlimits",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "windows/cpu",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "windows/mem",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "cgroups/all",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "cgroups/blkio",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "cgroups/cpu",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "cgroups/cpuset",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "cgroups/devices",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "cgroups/hugetlb",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "cgroups/mem",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "cgroups/net_cls",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "cgroups/net_prio",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "cgroups/perf_event",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "cgroups/pids",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "appc/runtime",
        stage: Stage::Runtime,
        built: false,
    },
    Known {
        name: "docker/runtime",
        stage: Stage::Runtime,
        built: true,
    },
    Known {
        name: "docker/volume",
        stage: Stage::Volume,
        built: false,
    },
    Known {
        name: "volume/csi",
        stage: Stage::Volume,
        built: false,
    },
    Known {
        name: "volume/image",
        stage: Stage::Volume,
        built: false,
    },
    Known {
        name: "volume/sandbox_path",
        stage: Stage::Volume,
        built: false,
    },
    Known {
        name: "volume/host_path",
        stage: Stage::Volume,
        built: true,
    },
    Known {
        name: "volume/secret",
        stage: Stage::Volume,
        built: false,
    },
    Known {
        name: "disk/du",
        stage: Stage::Disk,
        built: true,
    },
    Known {
        name: "disk/xfs",
        stage: Stage::Disk,
        built: false,
    },
    Known {
        name: "gpu/nvidia",
        stage: Stage::Gpu,
        built: false,
    },
    Known {
        name: "namespaces/ipc",
        stage: Stage::Network,
        built: true,
    },
    Known {
        name: "namespaces/pid",
        stage: Stage::Network,
        built: true,
    },
    Known {
        name: "network/cni",
        stage: Stage::Network,
        built: true,
    },
    Known {
        name: "network/port_mapping",
        stage: Stage::Network,
        built: false,
    },
    Known {
        name: "network/ports",
        stage: Stage::Network,
        built: false,
    },
    Known {
        name: "environment_secret",
        stage: Stage::Misc,
        built: false,
    },
    Known {
        name: "linux/capabilities",
        stage: Stage::Misc,
        built: true,
    },
    Known {
        name: "linux/devices",
        stage: Stage::Misc,
        built: false,
    },
    Known {
        name: "linux/nnp",
        stage: Stage::Misc,
        built: true,
    },
    Known {
        name: "linux/seccomp",
        stage: Stage::Misc,
        built: true,
    },
];

/// Deprecated names Mesos still accepts, rewritten as Mesos rewrites them.
const ALIASES: &[(&str, &[&str])] = &[
    ("process", &["posix/cpu", "posix/mem"]),
    ("cgroups", &["cgroups/cpu", "cgroups/mem"]),
    // Mesos: every controller the host has; here every one the cgroups isolator builds
    // (one the host lacks refuses the fields that need it).
    (
        "cgroups/all",
        &[
            "cgroups/cpu",
            "cgroups/cpuset",
            "cgroups/devices",
            "cgroups/hugetlb",
            "cgroups/mem",
            "cgroups/pids",
        ],
    ),
    ("posix/disk", &["disk/du"]),
];

/// Isolators `filesystem/linux` brings along in Mesos. Those this runtime does not build
/// are left out silently: they are implied, not asked for.
const IMPLIED_BY_FILESYSTEM_LINUX: &[&str] =
    &["volume/image", "volume/host_path", "volume/sandbox_path"];

/// Isolators every chain has, named or not: they apply CRI fields that must never be
/// silently ignored (devices, capabilities, privileged, seccomp).
const ALWAYS: &[&str] = &["cgroups/devices", "linux/capabilities", "linux/seccomp"];

/// A known Mesos isolator name (always one of [`CATALOG`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IsolatorName(&'static str);

impl IsolatorName {
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    pub fn stage(&self) -> Stage {
        catalog_entry(self.0)
            .map(|k| k.stage)
            .unwrap_or(Stage::Misc)
    }

    fn position(&self) -> usize {
        CATALOG
            .iter()
            .position(|k| k.name == self.0)
            .unwrap_or(usize::MAX)
    }
}

impl fmt::Display for IsolatorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("--isolation: '{0}' is not a Mesos isolator")]
    Unknown(String),
    #[error("--isolation: '{0}' is listed more than once")]
    Duplicate(String),
    #[error("--isolation: only one filesystem isolator may be used, got '{0}' and '{1}'")]
    TwoFilesystems(String, String),
    #[error(
        "--isolation: only one network isolator (besides network/ports) may be used, got '{0}' and '{1}'"
    )]
    TwoNetworks(String, String),
    #[error("--isolation: '{0}' is a Mesos isolator that cri-mesos does not support yet")]
    NotSupportedYet(String),
}

fn catalog_entry(name: &str) -> Option<&'static Known> {
    CATALOG.iter().find(|k| k.name == name)
}

/// `chain` with `name` (a catalog name) added unless already there, in Mesos's order.
pub fn with(name: &str, mut chain: Vec<IsolatorName>) -> Vec<IsolatorName> {
    if let Some(known) = catalog_entry(name)
        && !chain.iter().any(|i| i.as_str() == known.name)
    {
        chain.push(IsolatorName(known.name));
        chain.sort_by_key(IsolatorName::position);
    }
    chain
}

/// Turns an `--isolation` value into the isolator chain in Mesos's fixed order.
pub fn select(isolation: &str) -> Result<Vec<IsolatorName>, SelectionError> {
    let mut asked: Vec<&'static Known> = Vec::new();
    for raw in isolation
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let names: Vec<&str> = match ALIASES.iter().find(|(alias, _)| *alias == raw) {
            Some((_, expansion)) => expansion.to_vec(),
            None => vec![raw],
        };
        for name in names {
            let known =
                catalog_entry(name).ok_or_else(|| SelectionError::Unknown(name.to_string()))?;
            if asked.iter().any(|k| k.name == known.name) {
                return Err(SelectionError::Duplicate(name.to_string()));
            }
            asked.push(known);
        }
    }

    let filesystems: Vec<&str> = asked
        .iter()
        .map(|k| k.name)
        .filter(|n| n.starts_with("filesystem/"))
        .collect();
    if let [first, second, ..] = filesystems[..] {
        return Err(SelectionError::TwoFilesystems(first.into(), second.into()));
    }
    let networks: Vec<&str> = asked
        .iter()
        .map(|k| k.name)
        .filter(|n| n.starts_with("network/") && *n != "network/ports")
        .collect();
    if let [first, second, ..] = networks[..] {
        return Err(SelectionError::TwoNetworks(first.into(), second.into()));
    }

    if let Some(unbuilt) = asked.iter().find(|k| !k.built) {
        return Err(SelectionError::NotSupportedYet(unbuilt.name.into()));
    }

    if filesystems.is_empty() {
        asked.push(catalog_entry("filesystem/posix").expect("in catalog"));
    }
    if networks.is_empty() {
        asked.push(catalog_entry("network/cni").expect("in catalog"));
    }
    // The CRI's security fields always apply: what applies them cannot be left out.
    for implied in ALWAYS {
        if !asked.iter().any(|k| k.name == *implied) {
            asked.push(catalog_entry(implied).expect("in catalog"));
        }
    }
    if asked.iter().any(|k| k.name == "filesystem/linux") {
        for implied in IMPLIED_BY_FILESYSTEM_LINUX {
            let known = catalog_entry(implied).expect("in catalog");
            if known.built && !asked.iter().any(|k| k.name == known.name) {
                asked.push(known);
            }
        }
    }

    let mut chain: Vec<IsolatorName> = asked.iter().map(|k| IsolatorName(k.name)).collect();
    chain.sort_by_key(IsolatorName::position);
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(chain: &[IsolatorName]) -> Vec<&'static str> {
        chain.iter().map(IsolatorName::as_str).collect()
    }

    #[test]
    fn chain_is_in_mesos_order_whatever_the_flag_order() {
        let chain = select("network/cni,namespaces/pid,docker/runtime,filesystem/linux").unwrap();
        assert_eq!(
            names(&chain),
            [
                "filesystem/linux",
                "cgroups/devices",
                "docker/runtime",
                "volume/host_path",
                "namespaces/pid",
                "network/cni",
                "linux/capabilities",
                "linux/seccomp"
            ]
        );
    }

    #[test]
    fn defaults_are_added() {
        assert_eq!(
            names(&select("namespaces/pid").unwrap()),
            [
                "filesystem/posix",
                "cgroups/devices",
                "namespaces/pid",
                "network/cni",
                "linux/capabilities",
                "linux/seccomp"
            ]
        );
        // Naming an implied isolator is allowed; it is not there twice.
        assert_eq!(
            names(&select("namespaces/pid,linux/capabilities").unwrap()),
            [
                "filesystem/posix",
                "cgroups/devices",
                "namespaces/pid",
                "network/cni",
                "linux/capabilities",
                "linux/seccomp"
            ]
        );
    }

    #[test]
    fn errors_name_the_value() {
        assert_eq!(
            select("bogus/thing"),
            Err(SelectionError::Unknown("bogus/thing".into()))
        );
        assert_eq!(
            select("namespaces/pid,namespaces/pid"),
            Err(SelectionError::Duplicate("namespaces/pid".into()))
        );
        assert_eq!(
            select("filesystem/linux,filesystem/posix"),
            Err(SelectionError::TwoFilesystems(
                "filesystem/linux".into(),
                "filesystem/posix".into()
            ))
        );
        assert_eq!(
            select("gpu/nvidia"),
            Err(SelectionError::NotSupportedYet("gpu/nvidia".into()))
        );
        assert_eq!(
            select("cgroups/blkio"),
            Err(SelectionError::NotSupportedYet("cgroups/blkio".into()))
        );
    }

    #[test]
    fn cgroups_aliases() {
        assert_eq!(
            names(&select("cgroups").unwrap())[1..3],
            ["cgroups/cpu", "cgroups/devices"]
        );
        let all = select("cgroups/all").unwrap();
        for n in [
            "cgroups/cpu",
            "cgroups/cpuset",
            "cgroups/devices",
            "cgroups/hugetlb",
            "cgroups/mem",
            "cgroups/pids",
        ] {
            assert!(names(&all).contains(&n), "{n}");
        }
    }
}
