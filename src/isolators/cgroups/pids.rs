//! `cgroups/pids`: how many tasks a container may have (`pids.max`, v1 and v2). The CRI
//! has no field for it: the limit is the node's, `--cgroups_pids_limit`.

use super::plan::Plan;
use crate::cgroups::ControllerDir;

pub const FIELD: &str = "--cgroups_pids_limit";

pub fn plan(limit: u64, dir: &ControllerDir, plan: &mut Plan) {
    if limit > 0 {
        plan.push(dir, "pids.max", limit.to_string(), FIELD);
    }
}
