//! `cgroups/cpuset`: the CPUs and memory nodes a container may use (`cpuset.cpus`,
//! `cpuset.mems`, the same files on v1 and v2). The kernel refuses a CPU its parent does
//! not have; that refusal is answered naming the field.

use k8s_cri::v1 as cri;

use super::plan::Plan;
use super::{field, invalid};
use crate::cgroups::ControllerDir;
use crate::isolators::chain::IsolatorError;

/// Checks the kernel's list syntax: `0-3,8,10-11`.
pub fn check_list(list: &str) -> Result<(), String> {
    for item in list.split(',') {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let parse = |s: &str| s.trim().parse::<u32>().map_err(|_| ());
        match (parse(a), parse(b)) {
            (Ok(a), Ok(b)) if a <= b => {}
            _ => {
                return Err(format!(
                    "{} is not a list like 0-3,8",
                    crate::quote::quote(list)
                ));
            }
        }
    }
    Ok(())
}

pub fn validate(r: &cri::LinuxContainerResources, prefix: &str) -> Result<(), IsolatorError> {
    for (name, value) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !value.is_empty() {
            check_list(value).map_err(|reason| invalid(field(prefix, name), reason))?;
        }
    }
    Ok(())
}

pub fn plan(r: &cri::LinuxContainerResources, dir: &ControllerDir, prefix: &str, plan: &mut Plan) {
    // mems first: a task's allowed memory must be set before CPUs pin it (runc's order).
    if !r.cpuset_mems.is_empty() {
        plan.push(
            dir,
            "cpuset.mems",
            r.cpuset_mems.clone(),
            &field(prefix, "cpuset_mems"),
        );
    }
    if !r.cpuset_cpus.is_empty() {
        plan.push(
            dir,
            "cpuset.cpus",
            r.cpuset_cpus.clone(),
            &field(prefix, "cpuset_cpus"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        for ok in ["0", "0-1", "0,2-3", "1-1"] {
            check_list(ok).unwrap();
        }
        for bad in ["", "a", "3-1", "0-", "-1", "0,,1", "0 1"] {
            assert!(check_list(bad).is_err(), "{bad}");
        }
    }
}
