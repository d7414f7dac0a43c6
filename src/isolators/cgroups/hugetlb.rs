//! `cgroups/hugetlb`: a limit per huge page size. v1 `hugetlb.<size>.limit_in_bytes`, v2
//! `hugetlb.<size>.max`, and the reservation limit beside it where the kernel has one
//! (`.rsvd.`), as runc writes both. kubelet sends every page size of the node with 0 to
//! mean "no huge pages", so 0 is a value here, not "unset".

use k8s_cri::v1 as cri;

use super::plan::Plan;
use super::{field, invalid};
use crate::cgroups::{ControllerDir, Version};
use crate::isolators::chain::IsolatorError;

/// `2MB`, `1GB`, `64KB`: the kernel's names of page sizes.
fn check_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["KB", "MB", "GB"].contains(&unit)
}

pub fn validate(r: &cri::LinuxContainerResources, prefix: &str) -> Result<(), IsolatorError> {
    for (i, limit) in r.hugepage_limits.iter().enumerate() {
        if !check_page_size(&limit.page_size) {
            return Err(invalid(
                field(prefix, &format!("hugepage_limits[{i}].page_size")),
                format!(
                    "{} is not a page size like 2MB or 1GB",
                    crate::quote::quote(&limit.page_size)
                ),
            ));
        }
        if r.hugepage_limits[..i]
            .iter()
            .any(|l| l.page_size == limit.page_size)
        {
            return Err(invalid(
                field(prefix, &format!("hugepage_limits[{i}].page_size")),
                format!("{} is listed twice", limit.page_size),
            ));
        }
    }
    Ok(())
}

/// Whether any limit is more than "none", i.e. needs the controller to mean anything.
pub fn any_nonzero(r: &cri::LinuxContainerResources) -> bool {
    r.hugepage_limits.iter().any(|l| l.limit != 0)
}

pub fn plan(
    r: &cri::LinuxContainerResources,
    dir: &ControllerDir,
    prefix: &str,
    plan: &mut Plan,
) -> Result<(), IsolatorError> {
    for (i, limit) in r.hugepage_limits.iter().enumerate() {
        let (file, rsvd) = match dir.version {
            Version::V1 => (
                format!("hugetlb.{}.limit_in_bytes", limit.page_size),
                format!("hugetlb.{}.rsvd.limit_in_bytes", limit.page_size),
            ),
            Version::V2 => (
                format!("hugetlb.{}.max", limit.page_size),
                format!("hugetlb.{}.rsvd.max", limit.page_size),
            ),
        };
        let name = field(prefix, &format!("hugepage_limits[{i}]"));
        if !dir.path.join(&file).exists() {
            return Err(invalid(
                format!("{name}.page_size"),
                format!(
                    "this host has no {} huge pages ({} does not exist)",
                    limit.page_size, file
                ),
            ));
        }
        plan.push(
            dir,
            &file,
            limit.limit.to_string(),
            &format!("{name}.limit"),
        );
        if dir.path.join(&rsvd).exists() {
            plan.push(
                dir,
                &rsvd,
                limit.limit.to_string(),
                &format!("{name}.limit"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(sizes: &[(&str, u64)]) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            hugepage_limits: sizes
                .iter()
                .map(|(s, l)| cri::HugepageLimit {
                    page_size: s.to_string(),
                    limit: *l,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn files_per_version_and_zero_is_written() {
        let t = tempfile::tempdir().unwrap();
        for f in [
            "hugetlb.2MB.max",
            "hugetlb.2MB.rsvd.max",
            "hugetlb.1GB.limit_in_bytes",
        ] {
            std::fs::write(t.path().join(f), "max\n").unwrap();
        }
        let v2 = ControllerDir {
            path: t.path().into(),
            version: Version::V2,
        };
        let mut p = Plan::default();
        plan(&limits(&[("2MB", 0)]), &v2, "c", &mut p).unwrap();
        assert_eq!(p.value_of("hugetlb.2MB.max"), Some("0"));
        assert_eq!(p.value_of("hugetlb.2MB.rsvd.max"), Some("0"));
        let v1 = ControllerDir {
            path: t.path().into(),
            version: Version::V1,
        };
        let mut p = Plan::default();
        plan(&limits(&[("1GB", 1 << 30)]), &v1, "c", &mut p).unwrap();
        assert_eq!(p.value_of("hugetlb.1GB.limit_in_bytes"), Some("1073741824"));
        let e = plan(&limits(&[("16GB", 0)]), &v2, "c", &mut Plan::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("c.hugepage_limits[0].page_size"),
            "{e}"
        );
    }

    #[test]
    fn bad_page_sizes() {
        for bad in ["2M", "MB", "2 MB", "-2MB", "2mb"] {
            assert!(validate(&limits(&[(bad, 0)]), "c").is_err(), "{bad}");
        }
        assert!(validate(&limits(&[("2MB", 0), ("2MB", 1)]), "c").is_err());
        validate(&limits(&[("2MB", 0), ("1GB", 0)]), "c").unwrap();
    }
}
