//! Cgroup hierarchies, v1, v2 and hybrid: where they are mounted, how a cgroup is made
//! in each, and how every process of one is killed. The launcher tracks a container's
//! processes through its cgroup, as Mesos's linux launcher does with its freezer cgroup.

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
        Ok(Hierarchies { v1, v2, pure_v2 })
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
        };
        assert!(Cgroup::at(&h, "/kubepods/pod1").is_ok());
        assert!(Cgroup::at(&h, "../escape").is_err());
        assert!(Cgroup::at(&h, "").is_err());
        let c = Cgroup::at(&h, "a/b").unwrap();
        assert_eq!(c.dirs, vec![PathBuf::from("/sys/fs/cgroup/a/b")]);
        assert!(c.child("..").is_err());
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
