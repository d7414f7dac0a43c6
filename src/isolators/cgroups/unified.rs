//! `unified`: cgroup v2 files by name (`memory.high: 1G`), written after everything
//! else so they have the last word, as runc does. Each key must be a v2 interface file of
//! a controller whose isolator is selected, and that controller must be on cgroup v2 on
//! this host: a v1 controller has other files, and guessing a translation would be
//! accepting without effect.

use std::collections::BTreeMap;

use super::plan::Plan;
use super::{Selected, field, invalid};
use crate::cgroups::{Cgroup, ControllerDir, Hierarchies, Version};
use crate::isolators::chain::IsolatorError;

/// The isolator that owns a v2 controller's files.
pub fn isolator_of(controller: &str) -> Option<&'static str> {
    Some(match controller {
        "cpu" => "cgroups/cpu",
        "memory" => "cgroups/mem",
        "pids" => "cgroups/pids",
        "cpuset" => "cgroups/cpuset",
        "hugetlb" => "cgroups/hugetlb",
        "io" => "cgroups/blkio",
        _ => return None,
    })
}

pub fn plan(
    unified: &std::collections::HashMap<String, String>,
    selected: &Selected,
    h: &Hierarchies,
    cgroup: &Cgroup,
    prefix: &str,
    plan: &mut Plan,
) -> Result<(), IsolatorError> {
    // Sorted: the same request writes in the same order.
    let sorted: BTreeMap<&String, &String> = unified.iter().collect();
    for (key, value) in sorted {
        let name = field(prefix, &format!("unified[{key}]"));
        let controller = key.split_once('.').map(|(c, _)| c).unwrap_or_default();
        let file_ok = !key.contains('/') && !key.starts_with('.') && key.split('.').count() >= 2;
        let Some(isolator) = isolator_of(controller).filter(|_| file_ok) else {
            return Err(invalid(
                name,
                "not a cgroup v2 interface file of cpu, memory, pids, cpuset, hugetlb or io",
            ));
        };
        if !selected.has(isolator) {
            return Err(IsolatorError::FailedPrecondition {
                field: name,
                reason: format!("needs the {isolator} isolator, which --isolation does not name"),
            });
        }
        match cgroup.controller_dir(h, controller) {
            Some(ControllerDir {
                version: Version::V2,
                path,
            }) => {
                if value.contains('\n') {
                    return Err(invalid(name, "a value is one line"));
                }
                if !path.join(key).exists() {
                    return Err(invalid(
                        name,
                        format!("{} has no file {key}", path.display()),
                    ));
                }
                let dir = ControllerDir {
                    path,
                    version: Version::V2,
                };
                plan.push(&dir, key, value.clone(), &name);
            }
            Some(ControllerDir {
                version: Version::V1,
                ..
            }) => {
                return Err(invalid(
                    name,
                    format!(
                        "{controller} is a cgroup v1 controller on this host; unified keys are cgroup v2 files"
                    ),
                ));
            }
            None => {
                return Err(IsolatorError::FailedPrecondition {
                    field: name,
                    reason: format!("this host has no {controller} controller"),
                });
            }
        }
    }
    Ok(())
}
