//! Cgroup hierarchies, v1, v2 and hybrid: where they are mounted, how a cgroup is made
//! in each, and how every process of one is killed. The launcher tracks a container's
//! processes through its cgroup, as Mesos's linux launcher does with its freezer cgroup.
//!
//! Limits are plain file writes; which file a controller's value goes to, v1 or v2, is
//! the cgroups isolator's business (`isolators::cgroups`). This module says where each
//! controller is mounted, enables cgroup2 controllers down a path, reads the OOM-kill
//! count, and (`systemd`) turns slice names into the paths systemd gives them.

pub mod systemd;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_mesos_supervisor::mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup path '{0}' is not a clean relative path")]
    BadPath(String),
    #[error("cgroup {path}: processes {pids:?} still alive after kill")]
    Unkillable { path: PathBuf, pids: Vec<i32> },
    #[error("{0}")]
    BadSlice(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The mounted hierarchies this machine has.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hierarchies {
    /// v1 controller hierarchies: (controllers, mount point). Named hierarchies
    /// (`name=systemd`) are left alone: they are systemd's.
    pub v1: Vec<(Vec<String>, PathBuf)>,
    /// The cgroup2 mount, if any (the only one on a pure v2 host; `unified` on hybrid).
    pub v2: Option<PathBuf>,
    /// True when cgroup2 is the whole hierarchy (no v1 controllers at all).
    pub pure_v2: bool,
    /// The controllers the cgroup2 root offers (its `cgroup.controllers`): on a hybrid
    /// host those no v1 hierarchy has bound (here: `hugetlb`).
    pub v2_controllers: Vec<String>,
}

/// Which cgroup interface a controller speaks on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// One controller's directory of one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerDir {
    pub path: PathBuf,
    pub version: Version,
}

impl Hierarchies {
    /// Reads the mounts below `root` (`--cgroups_hierarchy`) from /proc/self/mountinfo.
    pub fn detect(root: &Path) -> Result<Hierarchies, CgroupError> {
        let table = mountinfo::read().map_err(io_err(Path::new("/proc/self/mountinfo")))?;
        let mut v1 = Vec::new();
        let mut v2 = None;
        for entry in table
            .into_iter()
            .filter(|e| e.mount_point.starts_with(root))
        {
            match entry.fstype.as_str() {
                "cgroup2" => v2 = Some(entry.mount_point),
                "cgroup" => {
                    let controllers: Vec<String> = entry
                        .super_options
                        .split(',')
                        .filter(|o| CONTROLLERS.contains(o))
                        .map(str::to_string)
                        .collect();
                    if !controllers.is_empty() {
                        v1.push((controllers, entry.mount_point));
                    }
                }
                _ => {}
            }
        }
        let pure_v2 = v1.is_empty() && v2.is_some();
        let v2_controllers = match &v2 {
            Some(mount) => fs::read_to_string(mount.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        };
        Ok(Hierarchies {
            v1,
            v2,
            pure_v2,
            v2_controllers,
        })
    }

    /// Where `controller` is mounted and how it speaks: a v1 hierarchy that binds it
    /// wins (the kernel gives a controller to one hierarchy only), else the cgroup2 root
    /// if it offers it; `None` when this host has it nowhere.
    pub fn controller(&self, controller: &str) -> Option<(PathBuf, Version)> {
        if let Some((_, mount)) = self
            .v1
            .iter()
            .find(|(cs, _)| cs.iter().any(|c| c == controller))
        {
            return Some((mount.clone(), Version::V1));
        }
        match &self.v2 {
            Some(mount) if self.v2_controllers.iter().any(|c| c == controller) => {
                Some((mount.clone(), Version::V2))
            }
            _ => None,
        }
    }

    /// Every directory a cgroup at `relative` lives in, one per hierarchy.
    fn dirs(&self, relative: &Path) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.v1.iter().map(|(_, m)| m.join(relative)).collect();
        if let Some(v2) = &self.v2 {
            dirs.push(v2.join(relative));
        }
        dirs
    }
}

const CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// One cgroup, present in every hierarchy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Cgroup {
    /// Path relative to each hierarchy's root, e.g. `kubepods/besteffort/pod1/abc`.
    pub relative: PathBuf,
    /// Its directory in each hierarchy.
    pub dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Describes (does not create) the cgroup at `relative` (leading `/` allowed, as
    /// kubelet writes cgroup parents).
    pub fn at(hierarchies: &Hierarchies, relative: &str) -> Result<Cgroup, CgroupError> {
        let trimmed = relative.trim_start_matches('/');
        let clean = !trimmed.is_empty()
            && trimmed
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !clean {
            return Err(CgroupError::BadPath(relative.to_string()));
        }
        let relative = PathBuf::from(trimmed);
        Ok(Cgroup {
            dirs: hierarchies.dirs(&relative),
            relative,
        })
    }

    /// A child cgroup of this one.
    pub fn child(&self, name: &str) -> Result<Cgroup, CgroupError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CgroupError::BadPath(name.to_string()));
        }
        Ok(Cgroup {
            relative: self.relative.join(name),
            dirs: self.dirs.iter().map(|d| d.join(name)).collect(),
        })
    }

    /// Creates the cgroup in every hierarchy (and missing parents). v1 cpuset needs
    /// its cpus/mems copied down before any process may join.
    pub fn create(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            if dir.join("cpuset.cpus").exists() && !dir.join("cgroup.controllers").exists() {
                inherit_cpuset(dir)?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid into to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Moves `pid` into this cgroup in every hierarchy.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for file in self.procs_files() {
            fs::write(&file, pid.to_string()).map_err(io_err(&file))?;
        }
        Ok(())
    }

    /// Every pid in this cgroup and its descendants (the union over hierarchies).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            collect_pids(dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process of the cgroup (and its descendants) and waits until it is
    /// empty. With the v1 freezer the cgroup is frozen first so nothing forks away.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let freezer = self
            .dirs
            .iter()
            .find(|d| d.join("freezer.state").exists())
            .cloned();
        let cgroup_kill = self
            .dirs
            .iter()
            .map(|d| d.join("cgroup.kill"))
            .find(|p| p.exists());
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Unkillable {
                    path: self.relative.clone(),
                    pids,
                });
            }
            if let Some(kill) = &cgroup_kill {
                // Atomic in the kernel: no fork can escape it.
                let _ = fs::write(kill, "1");
            } else {
                if let Some(f) = &freezer {
                    let _ = fs::write(f.join("freezer.state"), "FROZEN");
                }
                for pid in &pids {
                    // SIGKILL is delivered even to frozen tasks once they thaw.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if let Some(f) = &freezer {
                    let _ = fs::write(f.join("freezer.state"), "THAWED");
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the cgroup (and empty descendants) from every hierarchy. Idempotent.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            remove_cgroup_dir(dir)?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }

    /// This cgroup's directory of `controller`, if the host has it.
    pub fn controller_dir(&self, h: &Hierarchies, controller: &str) -> Option<ControllerDir> {
        h.controller(controller)
            .map(|(mount, version)| ControllerDir {
                path: mount.join(&self.relative),
                version,
            })
    }

    /// Makes cgroup2 `controllers` available in this cgroup: a v2 controller's files
    /// appear in a cgroup only once every ancestor lists it in `cgroup.subtree_control`,
    /// which nothing does by default (on this hybrid host `hugetlb` lives only there).
    /// Ancestors that already enable it are left alone, so this is a few reads usually.
    pub fn enable_v2(&self, h: &Hierarchies, controllers: &[&str]) -> Result<(), CgroupError> {
        let Some(mount) = &h.v2 else {
            return Ok(());
        };
        let wanted: Vec<&str> = controllers
            .iter()
            .copied()
            .filter(|c| h.v2_controllers.iter().any(|v| v == c))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut dir = mount.clone();
        let components: Vec<_> = self.relative.components().collect();
        // The root and every ancestor down to the parent: the cgroup's own
        // subtree_control is for its children.
        for i in 0..components.len() {
            if i > 0 {
                dir.push(components[i - 1]);
            }
            let file = dir.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&file).map_err(io_err(&file))?;
            for c in &wanted {
                if !enabled.split_whitespace().any(|e| e == *c) {
                    fs::write(&file, format!("+{c}")).map_err(io_err(&file))?;
                }
            }
        }
        Ok(())
    }

    /// How many processes of this cgroup the OOM killer took (`oom_kill` of v1
    /// `memory.oom_control` or v2 `memory.events`; not `failcnt`, which counts how often
    /// the limit was hit). `None` when there is no memory controller or no counter.
    pub fn oom_kills(&self, h: &Hierarchies) -> Option<u64> {
        let dir = self.controller_dir(h, "memory")?;
        let file = match dir.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = fs::read_to_string(dir.path.join(file)).ok()?;
        flat_keyed(&text, "oom_kill")
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&entry.path(), pids);
            }
        }
    }
}

fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CgroupError::Io {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_dir(&entry.path())?;
        }
    }
    // A cgroup whose last process just died may stay busy for a moment.
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(CgroupError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        }
    }
}

/// v1 cpuset cgroups start with empty cpus/mems; copy the nearest non-empty ancestor's.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = dir.join(file);
        let current = fs::read_to_string(&path).map_err(io_err(&path))?;
        if !current.trim().is_empty() {
            continue;
        }
        let mut ancestor = dir.parent();
        let mut value = String::new();
        while let Some(a) = ancestor {
            if let Ok(v) = fs::read_to_string(a.join(file)) {
                if !v.trim().is_empty() {
                    value = v;
                    break;
                }
            } else {
                break;
            }
            ancestor = a.parent();
        }
        // Parents between the ancestor and this dir must be filled first, top down.
        if let Some(parent) = dir.parent()
            && parent.join(file).exists()
            && fs::read_to_string(parent.join(file))
                .map(|v| v.trim().is_empty())
                .unwrap_or(false)
        {
            inherit_cpuset(parent)?;
        }
        fs::write(&path, value.trim()).map_err(io_err(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        let h = Hierarchies {
            v1: vec![],
            v2: Some(PathBuf::from("/sys/fs/cgroup")),
            pure_v2: true,
            v2_controllers: vec!["memory".into()],
        };
        assert!(Cgroup::at(&h, "/kubepods/pod1").is_ok());
        assert!(Cgroup::at(&h, "../escape").is_err());
        assert!(Cgroup::at(&h, "").is_err());
        let c = Cgroup::at(&h, "a/b").unwrap();
        assert_eq!(c.dirs, vec![PathBuf::from("/sys/fs/cgroup/a/b")]);
        assert!(c.child("..").is_err());
        assert_eq!(
            c.controller_dir(&h, "memory"),
            Some(ControllerDir {
                path: PathBuf::from("/sys/fs/cgroup/a/b"),
                version: Version::V2
            })
        );
        assert_eq!(c.controller_dir(&h, "hugetlb"), None);
    }

    #[test]
    fn hybrid_controllers_are_found_where_mounted() {
        let h = Hierarchies {
            v1: vec![
                (vec!["memory".into()], PathBuf::from("/cg/memory")),
                (vec!["cpu".into()], PathBuf::from("/cg/cpu")),
            ],
            v2: Some(PathBuf::from("/cg/unified")),
            pure_v2: false,
            v2_controllers: vec!["hugetlb".into()],
        };
        assert_eq!(
            h.controller("memory"),
            Some((PathBuf::from("/cg/memory"), Version::V1))
        );
        assert_eq!(
            h.controller("hugetlb"),
            Some((PathBuf::from("/cg/unified"), Version::V2))
        );
        assert_eq!(h.controller("pids"), None);
    }

    #[test]
    fn oom_kill_counts_are_read_from_flat_keyed_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(flat_keyed(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_keyed(v2, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(v2, "oom_kill_disable"), None);
    }

    #[test]
    #[ignore = "needs root"]
    fn create_kill_destroy_on_this_machine() {
        let h = Hierarchies::detect(Path::new("/sys/fs/cgroup")).unwrap();
        let cg = Cgroup::at(&h, &format!("cri-mesos-test/unit-{}", std::process::id())).unwrap();
        cg.create().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        cg.add(child.id() as i32).unwrap();
        assert_eq!(cg.pids(), vec![child.id() as i32]);
        cg.kill_all(Duration::from_secs(5)).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("{e}")
        });
        let _ = child.wait();
        assert!(cg.pids().is_empty());
        cg.destroy().unwrap();
        assert!(!cg.exists());
        let parent = Cgroup::at(&h, "cri-mesos-test").unwrap();
        let _ = parent.destroy();
    }
}
