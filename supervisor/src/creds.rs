//! The identity a container process ends with: user, groups and capability sets, set in
//! runc's order so that each step still has the privilege it needs.

use std::io;

use crate::protocol::CapabilitySet;
use crate::sys;

/// Cuts the bounding set (needs CAP_SETPCAP, so before anything is dropped), changes user
/// keeping the permitted set across setuid, then sets effective, permitted and
/// inheritable and raises the ambient capabilities. What the supervisor itself lacks (this
/// machine's bounding set may miss some) is left out rather than failing: it cannot be
/// given, and containerd's "all capabilities" means the runtime's own too.
pub fn become_user(
    uid: u32,
    gid: u32,
    groups: &[u32],
    caps: Option<&CapabilitySet>,
) -> Result<(), String> {
    let e = |what: &'static str| move |err: io::Error| format!("{what}: {err}");
    let Some(caps) = caps else {
        return sys::set_identity(uid, gid, groups).map_err(e("set user"));
    };
    for cap in 0..=sys::cap_last_cap().min(63) {
        if caps.bounding & (1 << cap) == 0 && sys::capbset_read(cap).map_err(e("capbset"))? {
            sys::capbset_drop(cap).map_err(e("drop from the bounding set"))?;
        }
    }
    sys::set_keepcaps(true).map_err(e("keepcaps"))?;
    sys::set_identity(uid, gid, groups).map_err(e("set user"))?;
    let (_, own, _) = sys::capget().map_err(e("capget"))?;
    let (effective, permitted, inheritable) = (
        caps.effective & own,
        caps.permitted & own,
        caps.inheritable & own,
    );
    sys::capset(effective, permitted, inheritable).map_err(e("capset"))?;
    sys::set_keepcaps(false).map_err(e("keepcaps"))?;
    let ambient = caps.ambient & permitted & inheritable;
    for cap in (0..64).filter(|c| ambient & (1u64 << c) != 0) {
        sys::ambient_raise(cap).map_err(e("raise an ambient capability"))?;
    }
    Ok(())
}
