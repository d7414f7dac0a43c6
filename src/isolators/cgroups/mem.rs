//! `cgroups/mem`: the memory limit and swap. v1 `memory.limit_in_bytes` and
//! `memory.memsw.limit_in_bytes` (memory + swap, the CRI's meaning of
//! `memory_swap_limit_in_bytes`); v2 `memory.max` and `memory.swap.max` (swap alone, so
//! the CRI value less the memory limit, as runc converts it).

use std::fs;

use k8s_cri::v1 as cri;

use super::plan::Plan;
use super::{field, invalid};
use crate::cgroups::{ControllerDir, Version};
use crate::isolators::chain::IsolatorError;

pub fn validate(
    r: &cri::LinuxContainerResources,
    version: Option<Version>,
    prefix: &str,
) -> Result<(), IsolatorError> {
    if r.memory_limit_in_bytes < 0 {
        return Err(invalid(
            field(prefix, "memory_limit_in_bytes"),
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    let swap = r.memory_swap_limit_in_bytes;
    // -1: unlimited swap.
    if swap < -1 {
        return Err(invalid(
            field(prefix, "memory_swap_limit_in_bytes"),
            format!("{swap} is negative (-1: unlimited)"),
        ));
    }
    if swap > 0 && r.memory_limit_in_bytes > 0 && swap < r.memory_limit_in_bytes {
        return Err(invalid(
            field(prefix, "memory_swap_limit_in_bytes"),
            format!(
                "{swap} is below memory_limit_in_bytes {}: it is memory plus swap",
                r.memory_limit_in_bytes
            ),
        ));
    }
    if version == Some(Version::V2) && swap != 0 && r.memory_limit_in_bytes == 0 {
        return Err(invalid(
            field(prefix, "memory_swap_limit_in_bytes"),
            "a swap limit needs a memory limit on cgroup v2 (memory.swap.max is swap alone)",
        ));
    }
    Ok(())
}

/// The swap file of this host, if swap accounting is there.
fn swap_file(dir: &ControllerDir) -> Option<&'static str> {
    let name = match dir.version {
        Version::V1 => "memory.memsw.limit_in_bytes",
        Version::V2 => "memory.swap.max",
    };
    dir.path.join(name).exists().then_some(name)
}

pub fn plan(
    r: &cri::LinuxContainerResources,
    dir: &ControllerDir,
    prefix: &str,
    plan: &mut Plan,
) -> Result<(), IsolatorError> {
    let memory_field = field(prefix, "memory_limit_in_bytes");
    let swap_field = field(prefix, "memory_swap_limit_in_bytes");
    let swap = r.memory_swap_limit_in_bytes;
    let swap_file = if swap != 0 {
        Some(swap_file(dir).ok_or_else(|| IsolatorError::FailedPrecondition {
            field: swap_field.clone(),
            reason: format!(
                "this host has no swap accounting (neither memory.memsw.limit_in_bytes nor memory.swap.max in {})",
                dir.path.display()
            ),
        })?)
    } else {
        None
    };
    match dir.version {
        Version::V1 => {
            let memory = (r.memory_limit_in_bytes > 0)
                .then(|| (r.memory_limit_in_bytes.to_string(), memory_field));
            let memsw = swap_file.map(|f| (f, swap.to_string(), swap_field));
            // The kernel keeps memsw ≥ memory at every step: a memory limit above the
            // memsw limit in force must wait for the new memsw limit.
            let memsw_first = match (&memory, &memsw) {
                (Some(_), Some((file, _, _))) => {
                    let current = fs::read_to_string(dir.path.join(file))
                        .ok()
                        .and_then(|t| t.trim().parse::<i64>().ok())
                        .unwrap_or(i64::MAX);
                    r.memory_limit_in_bytes > current
                }
                _ => false,
            };
            let push_memory = |plan: &mut Plan| {
                if let Some((value, f)) = &memory {
                    plan.push(dir, "memory.limit_in_bytes", value.clone(), f);
                }
            };
            let push_memsw = |plan: &mut Plan| {
                if let Some((file, value, f)) = &memsw {
                    plan.push(dir, file, value.clone(), f);
                }
            };
            if memsw_first {
                push_memsw(plan);
                push_memory(plan);
            } else {
                push_memory(plan);
                push_memsw(plan);
            }
        }
        Version::V2 => {
            if r.memory_limit_in_bytes > 0 {
                plan.push(
                    dir,
                    "memory.max",
                    r.memory_limit_in_bytes.to_string(),
                    &memory_field,
                );
            }
            if let Some(file) = swap_file {
                plan.push(
                    dir,
                    file,
                    v2_swap(swap, r.memory_limit_in_bytes),
                    &swap_field,
                );
            }
        }
    }
    Ok(())
}

/// `memory.swap.max` from the CRI's memory + swap total.
pub fn v2_swap(total: i64, memory: i64) -> String {
    if total == -1 {
        "max".to_string()
    } else {
        (total - memory).max(0).to_string()
    }
}

/// What the cgroup uses now (v1 `memory.usage_in_bytes`, v2 `memory.current`).
pub fn usage(dir: &ControllerDir) -> Option<u64> {
    let name = match dir.version {
        Version::V1 => "memory.usage_in_bytes",
        Version::V2 => "memory.current",
    };
    fs::read_to_string(dir.path.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(memory: i64, swap: i64) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            memory_limit_in_bytes: memory,
            memory_swap_limit_in_bytes: swap,
            ..Default::default()
        }
    }

    fn dir_with(version: Version, files: &[(&str, &str)]) -> (tempfile::TempDir, ControllerDir) {
        let t = tempfile::tempdir().unwrap();
        for (name, value) in files {
            fs::write(t.path().join(name), value).unwrap();
        }
        let d = ControllerDir {
            path: t.path().to_path_buf(),
            version,
        };
        (t, d)
    }

    #[test]
    fn v1_writes_memsw_after_memory_unless_it_must_grow_first() {
        let (_t, d) = dir_with(
            Version::V1,
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
            ],
        );
        let mut p = Plan::default();
        plan(&res(100 << 20, 100 << 20), &d, "c", &mut p).unwrap();
        let order: Vec<_> = p.writes.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            order,
            ["c.memory_limit_in_bytes", "c.memory_swap_limit_in_bytes"]
        );
        // Raising past the memsw limit in force: memsw first.
        fs::write(d.path.join("memory.memsw.limit_in_bytes"), "104857600\n").unwrap();
        let mut p = Plan::default();
        plan(&res(200 << 20, 200 << 20), &d, "c", &mut p).unwrap();
        let order: Vec<_> = p.writes.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            order,
            ["c.memory_swap_limit_in_bytes", "c.memory_limit_in_bytes"]
        );
    }

    #[test]
    fn v2_swap_is_swap_alone() {
        let (_t, d) = dir_with(
            Version::V2,
            &[("memory.max", "max\n"), ("memory.swap.max", "max\n")],
        );
        let mut p = Plan::default();
        plan(&res(100, 100), &d, "c", &mut p).unwrap();
        assert_eq!(p.value_of("memory.max"), Some("100"));
        assert_eq!(p.value_of("memory.swap.max"), Some("0"));
        assert_eq!(v2_swap(300, 100), "200");
        assert_eq!(v2_swap(-1, 100), "max");
    }

    #[test]
    fn swap_without_accounting_is_a_failed_precondition() {
        for version in [Version::V1, Version::V2] {
            let (_t, d) = dir_with(version, &[]);
            let e = plan(&res(100, 100), &d, "c", &mut Plan::default()).unwrap_err();
            assert!(
                matches!(e, IsolatorError::FailedPrecondition { ref field, .. } if field == "c.memory_swap_limit_in_bytes"),
                "{e}"
            );
            // No swap asked: no swap file needed.
            plan(&res(100, 0), &d, "c", &mut Plan::default()).unwrap();
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        for (r, v, name) in [
            (res(-1, 0), None, "c.memory_limit_in_bytes"),
            (res(100, 50), None, "c.memory_swap_limit_in_bytes"),
            (
                res(0, 100),
                Some(Version::V2),
                "c.memory_swap_limit_in_bytes",
            ),
            (res(100, -2), None, "c.memory_swap_limit_in_bytes"),
        ] {
            let e = validate(&r, v, "c").unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
        }
        validate(&res(0, 100), Some(Version::V1), "c").unwrap();
        validate(&res(100, -1), Some(Version::V2), "c").unwrap();
    }
}
