//! `cgroups/devices`: which device nodes a container may open. runc's default rules (the
//! standard nodes, the pty slaves, and `mknod` of anything, so images that make nodes
//! still work, but opening what was made does not), then the CRI's `devices` with their
//! permissions; a privileged container may use every device. Written to the v1 devices
//! controller and, on cgroup2, as a BPF device program attached to the container's cgroup
//! (cgroup BPF needs no controller, so a hybrid host gets both).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;

use super::bpf;
use crate::isolators::chain::IsolatorError;
use crate::quote::quote;

pub use super::bpf::Rule;

pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;

const fn dev(kind: char, major: u32, minor: Option<u32>) -> Rule {
    Rule {
        kind,
        major: Some(major),
        minor,
        access: MKNOD | READ | WRITE,
    }
}

/// runc's default allow list.
pub const DEFAULT: &[Rule] = &[
    Rule {
        kind: 'c',
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule {
        kind: 'b',
        major: None,
        minor: None,
        access: MKNOD,
    },
    dev('c', 1, Some(3)), // null
    dev('c', 1, Some(5)), // zero
    dev('c', 1, Some(7)), // full
    dev('c', 1, Some(8)), // random
    dev('c', 1, Some(9)), // urandom
    dev('c', 5, Some(0)), // tty
    dev('c', 5, Some(1)), // console
    dev('c', 5, Some(2)), // ptmx
    dev('c', 136, None),  // pts/*
];

pub const ALL: Rule = Rule {
    kind: 'a',
    major: None,
    minor: None,
    access: MKNOD | READ | WRITE,
};

fn access_bits(permissions: &str) -> u32 {
    permissions.chars().fold(0, |a, c| {
        a | match c {
            'm' => MKNOD,
            'r' => READ,
            'w' => WRITE,
            _ => 0,
        }
    })
}

/// The rules of a container: the defaults and its CRI devices, or everything.
pub fn rules(asked: &[cri::Device], privileged: bool) -> Result<Vec<Rule>, IsolatorError> {
    if privileged {
        return Ok(vec![ALL]);
    }
    let mut rules = DEFAULT.to_vec();
    for (i, device) in asked.iter().enumerate() {
        let meta = fs::metadata(&device.host_path).map_err(|e| IsolatorError::InvalidArgument {
            field: format!("config.devices[{i}].host_path"),
            reason: format!("{}: {e}", quote(&device.host_path)),
        })?;
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(IsolatorError::InvalidArgument {
                field: format!("config.devices[{i}].host_path"),
                reason: format!("{} is not a device node", quote(&device.host_path)),
            });
        };
        // kubelet sends "mrw"; an empty string is what containerd reads as all three.
        let access = match access_bits(&device.permissions) {
            0 => MKNOD | READ | WRITE,
            a => a,
        };
        let rdev = meta.rdev();
        rules.push(Rule {
            kind,
            major: Some(libc::major(rdev)),
            minor: Some(libc::minor(rdev)),
            access,
        });
    }
    Ok(rules)
}

/// The v1 `devices.allow` line of a rule.
pub fn v1_line(rule: &Rule) -> String {
    let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
    let mut access = String::new();
    for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
        if rule.access & bit != 0 {
            access.push(c);
        }
    }
    format!(
        "{} {}:{} {access}",
        rule.kind,
        num(rule.major),
        num(rule.minor)
    )
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IsolatorError + '_ {
    move |source| IsolatorError::Io {
        isolator: "cgroups/devices",
        path: path.to_path_buf(),
        source,
    }
}

/// Applies `rules` to each directory of the container's cgroup that is a v1 devices
/// cgroup (it has `devices.allow`) or a cgroup2 one (it has `cgroup.controllers`).
pub fn apply(dirs: &[PathBuf], rules: &[Rule]) -> Result<(), IsolatorError> {
    for dir in dirs {
        let allow = dir.join("devices.allow");
        if allow.exists() {
            // Deny everything first, then allow line by line: the kernel takes one rule a
            // write.
            let deny = dir.join("devices.deny");
            fs::write(&deny, "a").map_err(io(&deny))?;
            for rule in rules {
                fs::write(&allow, v1_line(rule)).map_err(io(&allow))?;
            }
        } else if dir.join("cgroup.controllers").exists() {
            bpf::attach_device_filter(dir, rules).map_err(io(dir))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines() {
        assert_eq!(v1_line(&DEFAULT[0]), "c *:* m");
        assert_eq!(v1_line(&DEFAULT[2]), "c 1:3 rwm");
        assert_eq!(v1_line(&DEFAULT[10]), "c 136:* rwm");
        assert_eq!(v1_line(&ALL), "a *:* rwm");
    }

    #[test]
    fn cri_devices_become_rules() {
        let dev = |perm: &str| cri::Device {
            container_path: "/dev/x".into(),
            host_path: "/dev/null".into(),
            permissions: perm.into(),
        };
        let r = rules(&[dev("r")], false).unwrap();
        assert_eq!(r.len(), DEFAULT.len() + 1);
        assert_eq!(r.last().unwrap().access, READ);
        assert_eq!(rules(&[dev("mrw")], true).unwrap(), vec![ALL]);
        let missing = cri::Device {
            host_path: "/dev/no-such-device".into(),
            ..dev("rw")
        };
        let e = rules(&[missing], false).unwrap_err();
        assert!(
            e.to_string().starts_with("config.devices[0].host_path"),
            "{e}"
        );
    }
}
