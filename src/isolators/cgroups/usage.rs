//! What a cgroup used, read from the files its controllers keep (Mesos's `usage()` of the
//! cgroups isolators): cpu time and throttling, memory, processes. v1 and v2 name the same
//! figures differently; each is read where the host mounts its controller.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::cgroups::{Cgroup, Hierarchies, Version};
use crate::isolators::chain::ResourceStatistics;

/// v1's "unlimited" memory limit is the largest page-aligned i64; anything this large is
/// no limit.
const NO_LIMIT: u64 = 1 << 62;

/// v1 `cpuacct.stat` counts in USER_HZ ticks, 100 a second on every Linux ABI.
const USER_HZ: f64 = 100.0;

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `cpuacct.stat`).
fn read_keyed(path: &Path) -> HashMap<String, u64> {
    fs::read_to_string(path)
        .map(|text| parse_keyed(&text))
        .unwrap_or_default()
}

fn parse_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Fills `stats` with what `cgroup` used. Figures a host cannot give stay `None`.
pub fn read(h: &Hierarchies, cgroup: &Cgroup, stats: &mut ResourceStatistics) {
    cpu(h, cgroup, stats);
    memory(h, cgroup, stats);
    if let Some(dir) = cgroup.controller_dir(h, "pids") {
        stats.processes = read_u64(&dir.path.join("pids.current"));
        // Every thread is a task: v1 lists them in `tasks`, v2 in `cgroup.threads`.
        let threads = match dir.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.threads",
        };
        stats.threads = fs::read_to_string(dir.path.join(threads))
            .ok()
            .map(|t| t.lines().count() as u64);
    }
}

fn cpu(h: &Hierarchies, cgroup: &Cgroup, stats: &mut ResourceStatistics) {
    match cgroup.controller_dir(h, "cpuacct") {
        Some(dir) if dir.version == Version::V1 => {
            stats.cpu_usage_ns = read_u64(&dir.path.join("cpuacct.usage"));
            let ticks = read_keyed(&dir.path.join("cpuacct.stat"));
            stats.cpus_user_time_secs = ticks.get("user").map(|t| *t as f64 / USER_HZ);
            stats.cpus_system_time_secs = ticks.get("system").map(|t| *t as f64 / USER_HZ);
        }
        // cgroup2 keeps cpu.stat in every cgroup, cpu controller enabled or not.
        _ => {
            if let Some(v2) = &h.v2 {
                let stat = read_keyed(&v2.join(&cgroup.relative).join("cpu.stat"));
                stats.cpu_usage_ns = stat.get("usage_usec").map(|u| u * 1000);
                stats.cpus_user_time_secs = stat.get("user_usec").map(|u| *u as f64 / 1e6);
                stats.cpus_system_time_secs = stat.get("system_usec").map(|u| *u as f64 / 1e6);
            }
        }
    }
    if let Some(dir) = cgroup.controller_dir(h, "cpu") {
        let stat = read_keyed(&dir.path.join("cpu.stat"));
        stats.cpus_nr_periods = stat.get("nr_periods").copied();
        stats.cpus_nr_throttled = stat.get("nr_throttled").copied();
        stats.cpus_throttled_time_secs = match dir.version {
            Version::V1 => stat.get("throttled_time").map(|ns| *ns as f64 / 1e9),
            Version::V2 => stat.get("throttled_usec").map(|us| *us as f64 / 1e6),
        };
    }
}

fn memory(h: &Hierarchies, cgroup: &Cgroup, stats: &mut ResourceStatistics) {
    let Some(dir) = cgroup.controller_dir(h, "memory") else {
        return;
    };
    let (usage, limit, stat) = match dir.version {
        Version::V1 => (
            "memory.usage_in_bytes",
            "memory.limit_in_bytes",
            "memory.stat",
        ),
        Version::V2 => ("memory.current", "memory.max", "memory.stat"),
    };
    let usage = read_u64(&dir.path.join(usage));
    let limit = read_u64(&dir.path.join(limit)).filter(|l| *l < NO_LIMIT);
    let stat = read_keyed(&dir.path.join(stat));
    // v1 counts the whole subtree under total_*; the plain names are this cgroup alone.
    let get = |v1: &str, v2: &str| match dir.version {
        Version::V1 => stat.get(v1).copied(),
        Version::V2 => stat.get(v2).copied(),
    };
    stats.mem_total_bytes = usage;
    stats.mem_limit_bytes = limit;
    stats.mem_rss_bytes = get("total_rss", "anon");
    stats.mem_anon_bytes = get("total_rss", "anon");
    stats.mem_cache_bytes = get("total_cache", "file");
    stats.mem_file_bytes = get("total_cache", "file");
    stats.mem_mapped_file_bytes = get("total_mapped_file", "file_mapped");
    stats.mem_page_faults = get("total_pgfault", "pgfault");
    stats.mem_major_page_faults = get("total_pgmajfault", "pgmajfault");
    // What kubelet evicts on and cAdvisor reports: usage less what can be dropped at once.
    let inactive = get("total_inactive_file", "inactive_file").unwrap_or(0);
    stats.mem_working_set_bytes = usage.map(|u| u.saturating_sub(inactive));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse_and_skip_what_is_not_a_number() {
        let stat = parse_keyed("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nweird x\n");
        assert_eq!(stat.get("usage_usec"), Some(&1500));
        assert_eq!(stat.get("weird"), None);
    }

    #[test]
    fn v1_and_v2_memory_files_give_the_same_figures() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
        let cg = dir.path().join("v1/memory/pod/c");
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("memory.usage_in_bytes"), "1000\n").unwrap();
        fs::write(cg.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(
            cg.join("memory.stat"),
            "rss 1\ntotal_rss 600\ntotal_cache 400\ntotal_inactive_file 300\ntotal_pgfault 7\ntotal_pgmajfault 2\ntotal_mapped_file 50\n",
        )
        .unwrap();
        let cg2 = dir.path().join("v2/pod/c");
        fs::create_dir_all(&cg2).unwrap();
        fs::write(cg2.join("memory.current"), "1000\n").unwrap();
        fs::write(cg2.join("memory.max"), "4096\n").unwrap();
        fs::write(
            cg2.join("memory.stat"),
            "anon 600\nfile 400\ninactive_file 300\npgfault 7\npgmajfault 2\nfile_mapped 50\n",
        )
        .unwrap();
        let one = |h: Hierarchies| {
            let cgroup = Cgroup::at(&h, "pod/c").unwrap();
            let mut s = ResourceStatistics::default();
            memory(&h, &cgroup, &mut s);
            s
        };
        let s1 = one(Hierarchies {
            v1: vec![(vec!["memory".into()], v1.join("memory"))],
            v2: None,
            pure_v2: false,
            v2_controllers: vec![],
        });
        let s2 = one(Hierarchies {
            v1: vec![],
            v2: Some(v2),
            pure_v2: true,
            v2_controllers: vec!["memory".into()],
        });
        for s in [&s1, &s2] {
            assert_eq!(s.mem_total_bytes, Some(1000));
            assert_eq!(s.mem_working_set_bytes, Some(700));
            assert_eq!(s.mem_rss_bytes, Some(600));
            assert_eq!(s.mem_page_faults, Some(7));
            assert_eq!(s.mem_major_page_faults, Some(2));
            assert_eq!(s.mem_mapped_file_bytes, Some(50));
        }
        assert_eq!(s1.mem_limit_bytes, None, "v1's unlimited is no limit");
        assert_eq!(s2.mem_limit_bytes, Some(4096));
    }
}
