//! `linux/capabilities`: the CRI's `capabilities` and `privileged`, always applied (the
//! isolator is implied, as Mesos implies `filesystem/posix`): a container gets
//! containerd's default set unless its config says otherwise, never the runtime's own.

use cri_mesos_supervisor::protocol::{CapabilitySet, LaunchInfo};
use k8s_cri::v1 as cri;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPrep, Isolator, IsolatorError};
use crate::quote::quote;

/// Capability names by number, as `<linux/capability.h>` numbers them.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability this runtime knows (the supervisor leaves out what it lacks itself).
pub const ALL: u64 = (1 << NAMES.len()) - 1;

/// containerd's (and Docker's) default set: CapEff `00000000a80425fb` for root.
pub const DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The bit of a capability name, with or without `CAP_`, in any case.
pub fn bit(name: &str) -> Option<u64> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| 1u64 << i)
}

fn mask(names: &[&str]) -> u64 {
    names.iter().filter_map(|n| bit(n)).fold(0, |m, b| m | b)
}

const FIELD: &str = "config.linux.security_context";

fn invalid(field: &str, reason: String) -> IsolatorError {
    IsolatorError::InvalidArgument {
        field: format!("{FIELD}.{field}"),
        reason,
    }
}

fn bits(names: &[String], field: &str) -> Result<(u64, bool), IsolatorError> {
    let mut m = 0;
    let mut all = false;
    for (i, name) in names.iter().enumerate() {
        if name.eq_ignore_ascii_case("ALL") {
            all = true;
            continue;
        }
        m |= bit(name).ok_or_else(|| {
            invalid(
                &format!("capabilities.{field}[{i}]"),
                format!("{} is not a Linux capability", quote(name)),
            )
        })?;
    }
    Ok((m, all))
}

/// The sets of a container: containerd's order — `ALL` in add gives all, `ALL` in drop
/// removes all, then the named adds, then the named drops. Ambient capabilities are in
/// every set (the kernel raises only what is permitted and inheritable); inheritable holds
/// nothing else (CVE-2022-24769). A non-root process keeps only its ambient capabilities
/// effective, as the kernel gives it across exec.
pub fn capability_set(
    caps: Option<&cri::Capability>,
    privileged: bool,
    uid: u32,
) -> Result<CapabilitySet, IsolatorError> {
    let mut set = if privileged { ALL } else { mask(DEFAULT) };
    let mut ambient = 0;
    if let (Some(c), false) = (caps, privileged) {
        let (add, add_all) = bits(&c.add_capabilities, "add_capabilities")?;
        let (drop, drop_all) = bits(&c.drop_capabilities, "drop_capabilities")?;
        let (amb, amb_all) = bits(&c.add_ambient_capabilities, "add_ambient_capabilities")?;
        if add_all {
            set = ALL;
        }
        if drop_all {
            set = 0;
        }
        set = (set | add) & !drop;
        ambient = if amb_all { ALL } else { amb };
        set |= ambient;
    }
    Ok(CapabilitySet {
        bounding: set,
        effective: if uid == 0 { set } else { ambient },
        permitted: set,
        inheritable: ambient,
        ambient,
    })
}

#[derive(Debug, Default)]
pub struct LinuxCapabilities;

#[tonic::async_trait]
impl Isolator for LinuxCapabilities {
    fn name(&self) -> IsolatorName {
        IsolatorName("linux/capabilities")
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let sc = super::security_context(container.config);
        let privileged = super::privileged(container.config);
        let pod_privileged = container
            .pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        // A privileged container can do anything the pod's namespaces allow; kubelet only
        // asks for one in a privileged pod, and the CRI says so.
        if privileged && !pod_privileged {
            return Err(invalid(
                "privileged",
                "a privileged container needs a privileged pod sandbox \
                 (config.linux.security_context.privileged of the pod)"
                    .into(),
            ));
        }
        let caps = capability_set(
            sc.and_then(|s| s.capabilities.as_ref()),
            privileged,
            launch.process.uid,
        )?;
        launch.process.capabilities = Some(caps);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str], ambient: &[&str]) -> cri::Capability {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        cri::Capability {
            add_capabilities: v(add),
            drop_capabilities: v(drop),
            add_ambient_capabilities: v(ambient),
        }
    }

    #[test]
    fn default_is_containerds() {
        let s = capability_set(None, false, 0).unwrap();
        assert_eq!(s.effective, 0xa80425fb);
        assert_eq!(s.bounding, 0xa80425fb);
        assert_eq!(s.inheritable, 0);
        assert_eq!(s.ambient, 0);
    }

    #[test]
    fn add_drop_and_all_in_containerds_order() {
        let admin = bit("SYS_ADMIN").unwrap();
        let s = capability_set(Some(&caps(&["CAP_SYS_ADMIN"], &["chown"], &[])), false, 0).unwrap();
        assert_eq!(s.effective, (0xa80425fb | admin) & !1);
        let s = capability_set(Some(&caps(&["ALL"], &["SYS_ADMIN"], &[])), false, 0).unwrap();
        assert_eq!(s.effective, ALL & !admin);
        let s = capability_set(Some(&caps(&["NET_ADMIN"], &["ALL"], &[])), false, 0).unwrap();
        assert_eq!(s.effective, bit("NET_ADMIN").unwrap());
        let s = capability_set(Some(&caps(&[], &["ALL"], &[])), false, 0).unwrap();
        assert_eq!(s.bounding, 0);
        let s = capability_set(Some(&caps(&["NET_ADMIN"], &["ALL"], &[])), true, 0).unwrap();
        assert_eq!(s.effective, ALL, "privileged ignores the lists");
    }

    #[test]
    fn non_root_keeps_only_ambient_effective() {
        let raw = bit("NET_RAW").unwrap();
        let bind = bit("NET_BIND_SERVICE").unwrap();
        let s = capability_set(Some(&caps(&[], &[], &["NET_BIND_SERVICE"])), false, 1000).unwrap();
        assert_eq!(s.effective, bind);
        assert_eq!(s.inheritable, bind);
        assert_eq!(s.ambient, bind);
        assert_ne!(s.permitted & raw, 0);
        assert_eq!(capability_set(None, false, 1000).unwrap().effective, 0);
    }

    #[test]
    fn unknown_names_are_refused_naming_the_field() {
        let e =
            capability_set(Some(&caps(&[], &["NET_RAW", "CAP_FLY"], &[])), false, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.linux.security_context.capabilities.drop_capabilities[1]: \"CAP_FLY\" is not a Linux capability"
        );
    }
}
