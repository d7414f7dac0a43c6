//! The systemd cgroup driver's names: kubelet with `cgroupDriver: systemd` sends slice
//! names (`kubepods-burstable-pod<uid>.slice`) as cgroup parents, and systemd lays a
//! slice out as one directory per dash-separated prefix. No systemd is asked: the path is
//! computed by systemd's own rule (runc's `ExpandSlice`), so it is the same path systemd
//! would have made.

use super::CgroupError;

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice` (relative to the hierarchy's root);
/// `-.slice` is the root slice (the empty path).
pub fn expand_slice(slice: &str) -> Result<String, CgroupError> {
    let bad = || {
        CgroupError::BadSlice(format!(
            "{} is not a systemd slice name (NAME.slice, dash-separated, no '/')",
            crate::quote::quote(slice)
        ))
    };
    let name = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if name.is_empty() || slice.contains('/') {
        return Err(bad());
    }
    if name == "-" {
        return Ok(String::new());
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        // `a--b.slice` and `-a.slice` have an empty component: systemd refuses them.
        if component.is_empty() {
            return Err(bad());
        }
        path.push(format!("{prefix}{component}.slice"));
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_as_systemd_lays_them_out() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1234.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
        );
        assert_eq!(expand_slice("kubepods.slice").unwrap(), "kubepods.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "");
        for bad in [
            "kubepods",
            ".slice",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
            "/kubepods.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }
}
