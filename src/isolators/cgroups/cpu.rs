//! `cgroups/cpu`: CFS shares, quota and period. v1 `cpu.shares`, `cpu.cfs_quota_us`,
//! `cpu.cfs_period_us`; v2 `cpu.weight` (from shares, runc's conversion) and `cpu.max`.

use k8s_cri::v1 as cri;

use super::plan::Plan;
use super::{field, invalid};
use crate::cgroups::{ControllerDir, Version};
use crate::isolators::chain::IsolatorError;

/// The kernel's bounds (kernel/sched: MIN_SHARES, MAX_SHARES; CFS period 1ms..1s; a
/// quota of at least 1ms).
const SHARES: std::ops::RangeInclusive<i64> = 2..=262_144;
const PERIOD_US: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
const MIN_QUOTA_US: i64 = 1_000;

pub fn validate(r: &cri::LinuxContainerResources, prefix: &str) -> Result<(), IsolatorError> {
    if r.cpu_shares != 0 && !SHARES.contains(&r.cpu_shares) {
        return Err(invalid(
            field(prefix, "cpu_shares"),
            format!("{} is not within [2, 262144]", r.cpu_shares),
        ));
    }
    if r.cpu_period != 0 && !PERIOD_US.contains(&r.cpu_period) {
        return Err(invalid(
            field(prefix, "cpu_period"),
            format!(
                "{} is not within [1000, 1000000] microseconds",
                r.cpu_period
            ),
        ));
    }
    // -1 is an explicit "no quota", as runc takes it.
    if r.cpu_quota != 0 && r.cpu_quota != -1 && r.cpu_quota < MIN_QUOTA_US {
        return Err(invalid(
            field(prefix, "cpu_quota"),
            format!(
                "{} is below the kernel's minimum of 1000 microseconds (or -1: none)",
                r.cpu_quota
            ),
        ));
    }
    Ok(())
}

/// runc's `ConvertCPUSharesToCgroupV2Value`: [2, 262144] onto [1, 10000], linearly.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.saturating_sub(2)) * 9999) / 262_142
}

pub fn plan(r: &cri::LinuxContainerResources, dir: &ControllerDir, prefix: &str, plan: &mut Plan) {
    match dir.version {
        Version::V1 => {
            // The period first: a quota is checked against the period in force.
            if r.cpu_period != 0 {
                plan.push(
                    dir,
                    "cpu.cfs_period_us",
                    r.cpu_period.to_string(),
                    &field(prefix, "cpu_period"),
                );
            }
            if r.cpu_quota != 0 {
                plan.push(
                    dir,
                    "cpu.cfs_quota_us",
                    r.cpu_quota.to_string(),
                    &field(prefix, "cpu_quota"),
                );
            }
            if r.cpu_shares != 0 {
                plan.push(
                    dir,
                    "cpu.shares",
                    r.cpu_shares.to_string(),
                    &field(prefix, "cpu_shares"),
                );
            }
        }
        Version::V2 => {
            if r.cpu_quota != 0 || r.cpu_period != 0 {
                let quota = match r.cpu_quota {
                    q if q > 0 => q.to_string(),
                    _ => "max".to_string(),
                };
                let value = match r.cpu_period {
                    0 => quota,
                    p => format!("{quota} {p}"),
                };
                let name = if r.cpu_quota != 0 {
                    "cpu_quota"
                } else {
                    "cpu_period"
                };
                plan.push(dir, "cpu.max", value, &field(prefix, name));
            }
            if r.cpu_shares != 0 {
                plan.push(
                    dir,
                    "cpu.weight",
                    shares_to_weight(r.cpu_shares as u64).to_string(),
                    &field(prefix, "cpu_shares"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(version: Version) -> ControllerDir {
        ControllerDir {
            path: "/cg".into(),
            version,
        }
    }

    #[test]
    fn shares_become_weights_as_runc_converts_them() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn v1_and_v2_files() {
        let r = cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let mut p = Plan::default();
        plan(&r, &dir(Version::V1), "c", &mut p);
        let files: Vec<_> = p
            .writes
            .iter()
            .map(|w| w.file.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/cg/cpu.cfs_period_us",
                "/cg/cpu.cfs_quota_us",
                "/cg/cpu.shares"
            ]
        );
        assert_eq!(p.value_of("cpu.shares"), Some("512"));

        let mut p = Plan::default();
        plan(&r, &dir(Version::V2), "c", &mut p);
        assert_eq!(p.value_of("cpu.max"), Some("50000 100000"));
        assert_eq!(p.value_of("cpu.weight"), Some("20"));
        // A period alone keeps no quota; a quota alone keeps the period in force.
        let mut p = Plan::default();
        let period_only = cri::LinuxContainerResources {
            cpu_period: 50_000,
            ..Default::default()
        };
        plan(&period_only, &dir(Version::V2), "c", &mut p);
        assert_eq!(p.value_of("cpu.max"), Some("max 50000"));
        let mut p = Plan::default();
        let quota_only = cri::LinuxContainerResources {
            cpu_quota: 20_000,
            ..Default::default()
        };
        plan(&quota_only, &dir(Version::V2), "c", &mut p);
        assert_eq!(p.value_of("cpu.max"), Some("20000"));
        // Zero is unset: nothing is written.
        let mut p = Plan::default();
        plan(&Default::default(), &dir(Version::V2), "c", &mut p);
        assert!(p.writes.is_empty());
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad = [
            (
                cri::LinuxContainerResources {
                    cpu_shares: 1,
                    ..Default::default()
                },
                "c.cpu_shares",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_period: 10,
                    ..Default::default()
                },
                "c.cpu_period",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: 999,
                    ..Default::default()
                },
                "c.cpu_quota",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: -5,
                    ..Default::default()
                },
                "c.cpu_quota",
            ),
        ];
        for (r, name) in bad {
            let e = validate(&r, "c").unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
        }
        validate(
            &cri::LinuxContainerResources {
                cpu_quota: -1,
                ..Default::default()
            },
            "c",
        )
        .unwrap();
    }
}
