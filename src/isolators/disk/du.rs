//! `disk/du`: each running container's writable layer (where the provisioner's backend
//! puts its writes) and its log, measured every `--container_disk_watch_interval` on a
//! task of its own, off every request path, as Mesos's `du` isolator does. A limit (the
//! `cri-mesos.io/disk-limit` annotation: the CRI has no disk field) is enforced when
//! `--enforce_container_disk_quota` is set: a container past it is killed through the
//! `watch` hook, with a reason that names the quota.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cri_mesos_supervisor::protocol::LaunchInfo;
use tokio::sync::watch;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{
    ContainerPrep, Isolator, IsolatorError, Limitation, PodInfo, RecoveredContainer,
    ResourceStatistics,
};

/// The annotation that carries a container's (or its pod's) disk limit.
pub const LIMIT_ANNOTATION: &str = "cri-mesos.io/disk-limit";

/// What a killed container's status says.
pub const REASON: &str = "DiskQuotaExceeded";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// A measure and when it was taken: the writable layer, and it with the log (what the
/// quota counts, as Mesos counts the whole sandbox).
#[derive(Debug, Clone, Copy)]
struct Measure {
    writable: Usage,
    with_log: u64,
    at_ns: i64,
}

#[derive(Debug)]
struct Watched {
    writable: Option<PathBuf>,
    log: Option<PathBuf>,
    limit: Option<u64>,
    used: Option<Measure>,
    limitation: watch::Sender<Option<Limitation>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
pub struct DiskDu {
    interval: Duration,
    enforce: bool,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
}

impl DiskDu {
    pub fn new(interval: Duration, enforce: bool) -> DiskDu {
        DiskDu {
            interval,
            enforce,
            watched: Arc::default(),
        }
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Measures the container every interval on a task of its own until it goes.
    fn start_measuring(&self, container_id: &str) {
        let (interval, enforce, watched) = (self.interval, self.enforce, self.watched.clone());
        let id = container_id.to_string();
        let task = tokio::spawn(async move {
            loop {
                let paths = {
                    let w = watched.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(entry) = w.get(&id) else { return };
                    (entry.writable.clone(), entry.log.clone())
                };
                let (writable, log) = tokio::task::spawn_blocking(move || {
                    let writable = paths.0.as_deref().map(measure).unwrap_or_default();
                    let log = paths.1.as_deref().map(measure).unwrap_or_default();
                    (writable, log.bytes)
                })
                .await
                .unwrap_or_default();
                let used = writable.bytes + log;
                {
                    let mut w = watched.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(entry) = w.get_mut(&id) else { return };
                    entry.used = Some(Measure {
                        writable,
                        with_log: used,
                        at_ns: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_nanos() as i64)
                            .unwrap_or_default(),
                    });
                    if let Some(limit) = entry.limit.filter(|l| enforce && used > *l) {
                        let _ = entry.limitation.send(Some(Limitation {
                            reason: REASON.into(),
                            message: format!(
                                "the container used {used} bytes of disk, past its quota of {limit} bytes ({LIMIT_ANNOTATION})"
                            ),
                        }));
                        return;
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        if let Some(entry) = self.watched().get_mut(container_id) {
            entry.task = Some(task);
        } else {
            task.abort();
        }
    }
}

/// Bytes, or a Kubernetes quantity (`500Mi`, `2G`, `1Gi`).
pub fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "T" => 1000_u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor).filter(|n| *n > 0)
}

/// What `path` holds: the apparent bytes of every file (hard links counted once) and the
/// inodes, without following symlinks or crossing into other filesystems (a volume
/// mounted under a copy rootfs is not the container's).
pub fn measure(path: &Path) -> Usage {
    let mut usage = Usage::default();
    let Ok(root) = std::fs::symlink_metadata(path) else {
        return usage;
    };
    let mut seen = std::collections::HashSet::new();
    let dev = root.dev();
    let mut stack = vec![(path.to_path_buf(), root)];
    while let Some((p, meta)) = stack.pop() {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.inodes += 1;
        usage.bytes += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if let Ok(m) = entry.metadata()
                    && m.dev() == dev
                {
                    stack.push((entry.path(), m));
                }
            }
        }
    }
    usage
}

fn limit_of(
    config: &k8s_cri::v1::ContainerConfig,
    pod: &PodInfo,
) -> Result<Option<u64>, IsolatorError> {
    let found = config
        .annotations
        .get(LIMIT_ANNOTATION)
        .map(|v| (format!("config.annotations[{LIMIT_ANNOTATION}]"), v))
        .or_else(|| {
            pod.config
                .annotations
                .get(LIMIT_ANNOTATION)
                .map(|v| (format!("sandbox_config.annotations[{LIMIT_ANNOTATION}]"), v))
        });
    let Some((field, text)) = found else {
        return Ok(None);
    };
    parse_limit(text)
        .map(Some)
        .ok_or_else(|| IsolatorError::InvalidArgument {
            field,
            reason: format!(
                "{} is not a size (bytes, or a quantity such as 500Mi)",
                crate::quote::quote(text)
            ),
        })
}

#[tonic::async_trait]
impl Isolator for DiskDu {
    fn name(&self) -> IsolatorName {
        IsolatorName("disk/du")
    }

    /// A limit that would not be enforced is refused rather than ignored.
    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let limit = limit_of(container.config, container.pod)?;
        if limit.is_some() && !self.enforce {
            return Err(IsolatorError::FailedPrecondition {
                field: format!("config.annotations[{LIMIT_ANNOTATION}]"),
                reason: "a disk limit needs --enforce_container_disk_quota, which is off".into(),
            });
        }
        self.watched().insert(
            container.id.to_string(),
            Watched {
                writable: container.writable.map(Path::to_path_buf),
                log: launch.log_path.clone(),
                limit,
                used: None,
                limitation: watch::channel(None).0,
                task: None,
            },
        );
        Ok(())
    }

    /// The containers that ran on while the daemon was away are measured again and held
    /// to their limits, as when they started.
    async fn recover(&self, known: &[RecoveredContainer<'_>]) -> Result<(), IsolatorError> {
        for c in known.iter().filter(|c| c.running) {
            // A limit that was accepted at creation; one that no longer parses measures
            // the container without holding it to anything rather than failing recovery.
            let limit = limit_of(c.config, c.pod).unwrap_or_else(|e| {
                tracing::warn!(container_id = c.id, error = %e, "disk limit not recovered");
                None
            });
            self.watched().insert(
                c.id.to_string(),
                Watched {
                    writable: c.writable.clone(),
                    log: c.log.map(Path::to_path_buf),
                    limit,
                    used: None,
                    limitation: watch::channel(None).0,
                    task: None,
                },
            );
            self.start_measuring(c.id);
        }
        Ok(())
    }

    /// The container runs: measure it from now on.
    async fn isolate(&self, container_id: &str, _pid: i32) -> Result<(), IsolatorError> {
        self.start_measuring(container_id);
        Ok(())
    }
    async fn watch(&self, container_id: &str) -> Option<Limitation> {
        let mut rx = self.watched().get(container_id)?.limitation.subscribe();
        loop {
            if let Some(limitation) = rx.borrow_and_update().clone() {
                return Some(limitation);
            }
            // The sender goes with the container: nothing was reached.
            rx.changed().await.ok()?;
        }
    }

    async fn usage(
        &self,
        container_id: &str,
        _cgroup: &crate::cgroups::Cgroup,
        statistics: &mut ResourceStatistics,
    ) -> Result<(), IsolatorError> {
        if let Some(entry) = self.watched().get(container_id) {
            statistics.disk_used_bytes = entry.used.map(|m| m.with_log);
            statistics.disk_writable_bytes = entry.used.map(|m| m.writable.bytes);
            statistics.disk_inodes_used = entry.used.map(|m| m.writable.inodes);
            statistics.disk_measured_ns = entry.used.map(|m| m.at_ns);
            statistics.disk_limit_bytes = entry.limit;
        }
        Ok(())
    }

    fn writable_usage(&self) -> Option<(u64, u64)> {
        Some(
            self.watched()
                .values()
                .filter_map(|w| w.used)
                .fold((0, 0), |(b, i), m| {
                    (b + m.writable.bytes, i + m.writable.inodes)
                }),
        )
    }

    async fn cleanup(&self, container_id: &str) -> Result<(), IsolatorError> {
        if let Some(entry) = self.watched().remove(container_id)
            && let Some(task) = entry.task
        {
            task.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bytes_or_quantities() {
        assert_eq!(parse_limit("1024"), Some(1024));
        assert_eq!(parse_limit("500Mi"), Some(500 << 20));
        assert_eq!(parse_limit("2G"), Some(2_000_000_000));
        for bad in [
            "",
            "0",
            "-1",
            "1.5Gi",
            "lots",
            "10XB",
            "99999999999999999999",
        ] {
            assert_eq!(parse_limit(bad), None, "{bad}");
        }
    }

    #[test]
    fn measure_counts_blocks_and_inodes_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("d/l")).unwrap();
        let u = measure(dir.path());
        // The dir, a (b is a), d, l.
        assert_eq!(u.inodes, 4);
        assert!(u.bytes >= 64 * 1024 && u.bytes < 128 * 1024, "{u:?}");
        assert_eq!(measure(&dir.path().join("missing")), Usage::default());
    }
}
