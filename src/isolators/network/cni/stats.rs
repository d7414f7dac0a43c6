//! Interface counters of a pod, read inside its network namespace (Mesos's `usage()` of
//! network/cni: `net_{rx,tx}_{bytes,packets,errors,dropped}`).
//!
//! `/proc/<pid>/net/dev` would need a process in the namespace, and a pinned namespace
//! may have none; so a short-lived thread enters the namespace and reads its own
//! `/proc/thread-self/net/dev`, which shows the thread's namespace.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("network statistics: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network statistics: cannot enter {path}: {source}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error("network statistics: the reading thread died")]
    Thread,
}

/// Counters of one interface, as the kernel keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Counters of every interface in the network namespace pinned at `netns` (loopback
/// included; callers that report the pod's traffic usually skip `lo`).
pub fn read(netns: &Path) -> Result<Vec<InterfaceStats>, StatsError> {
    let file = std::fs::File::open(netns).map_err(|source| StatsError::Io {
        path: netns.to_path_buf(),
        source,
    })?;
    let path = netns.to_path_buf();
    std::thread::spawn(move || {
        // Only this thread changes namespace, and it ends right after.
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|source| StatsError::Setns { path, source })?;
        let dev = Path::new("/proc/thread-self/net/dev");
        std::fs::read_to_string(dev)
            .map(|text| parse_net_dev(&text))
            .map_err(|source| StatsError::Io {
                path: dev.to_path_buf(),
                source,
            })
    })
    .join()
    .map_err(|_| StatsError::Thread)?
}

/// Parses `/proc/net/dev`: two header lines, then `name: 8 rx counters 8 tx counters`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            if n.len() < 16 {
                return None;
            }
            Some(InterfaceStats {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0: 1146340     773    1    2    0     0          0         0    84270     701    3    4    0     0       0          0
";
        let stats = parse_net_dev(text);
        assert_eq!(stats.len(), 2);
        assert_eq!(
            stats[1],
            InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 1146340,
                rx_packets: 773,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 84270,
                tx_packets: 701,
                tx_errors: 3,
                tx_dropped: 4,
            }
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn reads_inside_a_pinned_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let targets = crate::launcher::namespaces::Pinned {
            net: Some(dir.path().join("ns")),
            ..Default::default()
        };
        let pinned = crate::launcher::namespaces::create(&targets, "").unwrap();
        let stats = read(dir.path().join("ns").as_path());
        crate::launcher::namespaces::remove(&pinned);
        let names: Vec<String> = stats.unwrap().into_iter().map(|s| s.name).collect();
        // A fresh namespace has loopback, and the fallback devices of loaded tunnel
        // modules; never the host's interfaces.
        let per_namespace = [
            "lo", "sit0", "tunl0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0",
            "ip6_vti0",
        ];
        assert!(names.contains(&"lo".to_string()), "{names:?}");
        assert!(
            names.iter().all(|n| per_namespace.contains(&n.as_str())),
            "{names:?}"
        );
        assert!(read(dir.path().join("ns").as_path()).is_err());
    }
}
