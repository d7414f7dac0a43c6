//! Checks of client input before any of it reaches the containerizer, a file or the
//! kernel: what a malformed field would otherwise turn into (a host file written
//! through `log_path`, a line injected into `/etc/hosts`, an `EINVAL` from
//! `sethostname` answered as `Internal`) is refused here as `InvalidArgument` naming the
//! field, before anything is created.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Component, Path};

use k8s_cri::v1 as cri;
use tonic::Status;

use crate::isolators::linux::seccomp;
use crate::launcher::sysctls::{self, SysctlError, SysctlNs};

pub use crate::quote::{bounded, quote};

/// Annotations of one pod or container: the Kubernetes API's own limit (256 KiB of keys
/// and values), plus room for the annotations kubelet adds itself.
pub const ANNOTATIONS_MAX: usize = 256 * 1024 + 8 * 1024;

/// Labels of one pod or container. Kubernetes bounds each key (253 + 63 bytes) and value
/// (63 bytes) but not their number; 64 KiB holds hundreds of the largest.
pub const LABELS_MAX: usize = 64 * 1024;

/// What gRPC clients accept in one reply by default (kubelet and crictl use 16 MiB).
pub const REPLY_MAX: usize = 16 * 1024 * 1024;

/// `sethostname(2)`'s limit (HOST_NAME_MAX) and DNS's per label.
const HOSTNAME_MAX: usize = 64;
const LABEL_MAX: usize = 63;

/// resolv.conf as glibc reads it: at most 6 search domains in glibc < 2.26, 32 with
/// kubelet's own limit and 2048 bytes in all; one domain is a DNS name.
const SEARCHES_MAX: usize = 32;
const SEARCH_LINE_MAX: usize = 2048;
const DOMAIN_MAX: usize = 253;

fn invalid(field: impl AsRef<str>, reason: impl AsRef<str>) -> Status {
    Status::invalid_argument(format!("{}: {}", field.as_ref(), reason.as_ref()))
}

/// The fetcher's `cri-mesos.io/fetch` annotation: a JSON list of Mesos URIs, each of a
/// known scheme and landing inside the sandbox.
fn fetch_uris(annotations: &HashMap<String, String>) -> Result<(), Status> {
    crate::fetcher::uri::parse(annotations)
        .map(|_| ())
        .map_err(|e| invalid(crate::fetcher::uri::field("config"), e.reason))
}

/// RunPodSandbox's config.
pub fn pod_config(config: &cri::PodSandboxConfig) -> Result<(), Status> {
    if !config.hostname.is_empty() {
        hostname(&config.hostname).map_err(|r| invalid("config.hostname", r))?;
    }
    if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
        return Err(invalid(
            "config.log_directory",
            format!("{} is not an absolute path", quote(&config.log_directory)),
        ));
    }
    sizes("config", &config.labels, &config.annotations)?;
    fetch_uris(&config.annotations)?;
    if let Some(dns) = &config.dns_config {
        dns_config(dns)?;
    }
    for (i, port) in config.port_mappings.iter().enumerate() {
        port_mapping(i, port)?;
    }
    if let Some(options) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    {
        for (field, mode) in [
            ("network", options.network),
            ("pid", options.pid),
            ("ipc", options.ipc),
        ] {
            let field = format!("config.linux.security_context.namespace_options.{field}");
            match cri::NamespaceMode::try_from(mode) {
                Err(_) => return Err(invalid(field, format!("unknown namespace mode {mode}"))),
                // TARGET names another container: a pod has none to share with.
                Ok(cri::NamespaceMode::Target) => {
                    return Err(invalid(
                        field,
                        "TARGET is for containers, not pod sandboxes",
                    ));
                }
                Ok(_) => {}
            }
        }
        userns(options)?;
    }
    if let Some(linux) = &config.linux {
        let host = |get: fn(&cri::NamespaceOption) -> i32| {
            linux
                .security_context
                .as_ref()
                .and_then(|s| s.namespace_options.as_ref())
                .is_some_and(|o| get(o) == cri::NamespaceMode::Node as i32)
        };
        let (host_net, host_ipc) = (host(|o| o.network), host(|o| o.ipc));
        // Sorted, so that the first bad one named is the same on every call.
        let mut sysctls: Vec<_> = linux.sysctls.iter().collect();
        sysctls.sort();
        for (name, value) in sysctls {
            let field = "config.linux.sysctls";
            let sysctl = sysctls::parse(name, value).map_err(|e| match e {
                SysctlError::Refused { reason, .. } => {
                    invalid(field, format!("{}: {reason}", quote(name)))
                }
                other => invalid(field, other.to_string()),
            })?;
            let shared = match sysctl.ns {
                SysctlNs::Net if host_net => Some("network"),
                SysctlNs::Ipc if host_ipc => Some("IPC"),
                _ => None,
            };
            if let Some(kind) = shared {
                return Err(invalid(
                    field,
                    format!(
                        "{}: the pod shares the host's {kind} namespace, where a pod must not set sysctls",
                        quote(name)
                    ),
                ));
            }
        }
        if let Some(sc) = &linux.security_context {
            apparmor("config.linux.security_context", sc.apparmor.as_ref(), "")?;
            // The pod's own profile would confine its pause process, which cri-mesos does
            // not have; its fields must still mean something.
            #[allow(deprecated)]
            let deprecated = sc.seccomp_profile_path.as_str();
            seccomp::choice(
                "config.linux.security_context",
                sc.seccomp.as_ref(),
                deprecated,
                false,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
    }
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    for (field, value) in [
        ("config.metadata.name", &meta.name),
        ("config.metadata.namespace", &meta.namespace),
        ("config.metadata.uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
    }
    Ok(())
}

/// A user namespace other than the host's is not built: absent or NODE is the host's, as
/// containerd and CRI-O read it.
fn userns(options: &cri::NamespaceOption) -> Result<(), Status> {
    if let Some(userns) = &options.userns_options
        && userns.mode != cri::NamespaceMode::Node as i32
    {
        return Err(invalid(
            "config.linux.security_context.namespace_options.userns_options.mode",
            format!(
                "{}: only NODE (the host's user namespace) is supported",
                cri::NamespaceMode::try_from(userns.mode)
                    .map_or_else(|_| userns.mode.to_string(), |m| m.as_str_name().to_string())
            ),
        ));
    }
    Ok(())
}

/// AppArmor is not enabled on the hosts cri-mesos runs on: a profile that must be loaded
/// cannot be honoured (containerd answers the same); runtime/default and unconfined run
/// unconfined, as on any host without AppArmor.
fn apparmor(
    prefix: &str,
    profile: Option<&cri::SecurityProfile>,
    deprecated: &str,
) -> Result<(), Status> {
    let localhost = match profile {
        Some(p) => p.profile_type == cri::security_profile::ProfileType::Localhost as i32,
        None => deprecated.starts_with("localhost/"),
    };
    if localhost {
        let field = if profile.is_some() {
            "apparmor"
        } else {
            "apparmor_profile"
        };
        return Err(Status::failed_precondition(format!(
            "{prefix}.{field}: apparmor is not supported on this host"
        )));
    }
    Ok(())
}

/// CreateContainer's config.
pub fn container_config(config: &cri::ContainerConfig) -> Result<(), Status> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    if meta.name.is_empty() {
        return Err(invalid("config.metadata.name", "must not be empty"));
    }
    if config.image.as_ref().is_none_or(|i| i.image.is_empty()) {
        return Err(invalid("config.image.image", "must not be empty"));
    }
    if !config.log_path.is_empty() {
        log_path(&config.log_path).map_err(|r| invalid("config.log_path", r))?;
    }
    sizes("config", &config.labels, &config.annotations)?;
    fetch_uris(&config.annotations)?;
    if let Some(options) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    {
        let field = "config.linux.security_context.namespace_options";
        for (name, mode) in [
            ("network", options.network),
            ("pid", options.pid),
            ("ipc", options.ipc),
        ] {
            match cri::NamespaceMode::try_from(mode) {
                Err(_) => {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        format!("unknown namespace mode {mode}"),
                    ));
                }
                Ok(cri::NamespaceMode::Target) if name != "pid" => {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        "TARGET is only supported for the pid namespace",
                    ));
                }
                Ok(_) => {}
            }
        }
        userns(options)?;
        if options.pid == cri::NamespaceMode::Target as i32 && options.target_id.is_empty() {
            return Err(invalid(
                format!("{field}.target_id"),
                "must name the target container when pid is TARGET",
            ));
        }
    }
    if let Some(sc) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
    {
        // The deprecated string is still what older kubelets send.
        #[allow(deprecated)]
        let deprecated = sc.apparmor_profile.as_str();
        apparmor(
            "config.linux.security_context",
            sc.apparmor.as_ref(),
            deprecated,
        )?;
    }
    // The shape of the seccomp fields; the profile file is read when the container is
    // prepared.
    seccomp::container_choice(config, false)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !config.cdi_devices.is_empty() {
        return Err(invalid(
            "config.CDI_devices",
            "CDI devices are not supported by cri-mesos yet",
        ));
    }
    for (i, mount) in config.mounts.iter().enumerate() {
        container_path(&mount.container_path)
            .map_err(|r| invalid(format!("config.mounts[{i}].container_path"), r))?;
        no_nul(&mount.host_path)
            .map_err(|r| invalid(format!("config.mounts[{i}].host_path"), r))?;
    }
    for (i, device) in config.devices.iter().enumerate() {
        container_path(&device.container_path)
            .map_err(|r| invalid(format!("config.devices[{i}].container_path"), r))?;
        no_nul(&device.host_path)
            .map_err(|r| invalid(format!("config.devices[{i}].host_path"), r))?;
    }
    Ok(())
}

/// ExecSync's command.
pub fn exec_cmd(cmd: &[String]) -> Result<(), Status> {
    if cmd.is_empty() {
        return Err(invalid("cmd", "must not be empty"));
    }
    Ok(())
}

/// The stream flags of Exec and Attach, as the CRI requires them: a session needs one
/// stream, and a tty merges stderr into stdout.
pub fn stream_flags(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), Status> {
    if !(stdin || stdout || stderr) {
        return Err(invalid(
            "stdin",
            "one of stdin, stdout or stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(invalid(
            "stderr",
            "must be false with tty (a terminal's output is all stdout)",
        ));
    }
    Ok(())
}

/// A hostname the client sends: what `sethostname` takes and what can stand in
/// `/etc/hosts` as one name. FQDNs are allowed (kubelet's `setHostnameAsFQDN`).
fn hostname(name: &str) -> Result<(), String> {
    if name.len() > HOSTNAME_MAX {
        return Err(format!(
            "{} is {} bytes, over the {HOSTNAME_MAX} a hostname may have",
            quote(name),
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-'))
    {
        return Err(format!(
            "{} has {c:?}: a hostname is made of [a-z0-9.-]",
            quote(name)
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{} has an empty label", quote(name)));
        }
        if label.len() > LABEL_MAX {
            return Err(format!(
                "{} has a label of {} bytes, over {LABEL_MAX}",
                quote(name),
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{} has a label that starts or ends with '-'",
                quote(name)
            ));
        }
    }
    Ok(())
}

/// A path the kernel is given as a C string, where a NUL would cut it short.
fn no_nul(path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err(format!("{} contains a NUL byte", quote(path)));
    }
    Ok(())
}

/// `log_path` is relative to the pod's `log_directory` and must stay inside it.
fn log_path(path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err(format!("{} contains a NUL byte", quote(path)));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!(
            "{} is absolute; it must be relative to the pod's log_directory",
            quote(path)
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{} must not contain '..'", quote(path)));
    }
    if !p.components().any(|c| matches!(c, Component::Normal(_))) || path.ends_with('/') {
        return Err(format!("{} does not name a file", quote(path)));
    }
    Ok(())
}

/// A path inside the container that a mount or device is made at: absolute, and not the
/// container's root (a mount there would make the runtime's own files, `/etc/hosts` and
/// `/dev/shm`, land in the mount's source on the host).
fn container_path(path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err(format!("{} contains a NUL byte", quote(path)));
    }
    if !Path::new(path).is_absolute() {
        return Err(format!("{} is not an absolute path", quote(path)));
    }
    let mut depth = 0usize;
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if depth == 0 {
        return Err(format!("{} resolves to the container's root", quote(path)));
    }
    Ok(())
}

fn sizes(
    prefix: &str,
    labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> Result<(), Status> {
    let total = |m: &HashMap<String, String>| m.iter().map(|(k, v)| k.len() + v.len()).sum();
    let labels_size: usize = total(labels);
    if labels_size > LABELS_MAX {
        return Err(invalid(
            format!("{prefix}.labels"),
            format!("{labels_size} bytes of keys and values, over the {LABELS_MAX} allowed"),
        ));
    }
    let annotations_size: usize = total(annotations);
    if annotations_size > ANNOTATIONS_MAX {
        return Err(invalid(
            format!("{prefix}.annotations"),
            format!(
                "{annotations_size} bytes of keys and values, over the {ANNOTATIONS_MAX} allowed \
                 (Kubernetes' 256 KiB and room for kubelet's own)"
            ),
        ));
    }
    Ok(())
}

/// The pod's DNSConfig goes into resolv.conf line by line: a space or newline in a value
/// would add words or lines the client did not ask for.
fn dns_config(dns: &cri::DnsConfig) -> Result<(), Status> {
    for (i, server) in dns.servers.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("config.dns_config.servers[{i}]"),
                format!("{} is not an IP address", quote(server)),
            ));
        }
    }
    if dns.searches.len() > SEARCHES_MAX {
        return Err(invalid(
            "config.dns_config.searches",
            format!(
                "{} domains, over the {SEARCHES_MAX} resolv.conf takes",
                dns.searches.len()
            ),
        ));
    }
    let line: usize = dns.searches.iter().map(|s| s.len() + 1).sum();
    if line > SEARCH_LINE_MAX {
        return Err(invalid(
            "config.dns_config.searches",
            format!("{line} bytes in all, over the {SEARCH_LINE_MAX} resolv.conf takes"),
        ));
    }
    for (i, search) in dns.searches.iter().enumerate() {
        let field = format!("config.dns_config.searches[{i}]");
        if search.is_empty() || search.len() > DOMAIN_MAX {
            return Err(invalid(
                field,
                format!(
                    "{} is not a domain of 1 to {DOMAIN_MAX} bytes",
                    quote(search)
                ),
            ));
        }
        word(search).map_err(|r| invalid(&field, r))?;
    }
    for (i, option) in dns.options.iter().enumerate() {
        let field = format!("config.dns_config.options[{i}]");
        if option.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        word(option).map_err(|r| invalid(&field, r))?;
    }
    Ok(())
}

/// One word of a config file line: printable, no blank.
fn word(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(format!("{} has {c:?}", quote(s))),
        None => Ok(()),
    }
}

fn port_mapping(i: usize, port: &cri::PortMapping) -> Result<(), Status> {
    let field = |name: &str| format!("config.port_mappings[{i}].{name}");
    if cri::Protocol::try_from(port.protocol).is_err() {
        return Err(invalid(
            field("protocol"),
            format!("unknown protocol {}", port.protocol),
        ));
    }
    if !(1..=65535).contains(&port.container_port) {
        return Err(invalid(
            field("container_port"),
            format!("{} is not a port (1-65535)", port.container_port),
        ));
    }
    if !(0..=65535).contains(&port.host_port) {
        return Err(invalid(
            field("host_port"),
            format!("{} is not a port (0-65535; 0 = none)", port.host_port),
        ));
    }
    if !port.host_ip.is_empty() && port.host_ip.parse::<IpAddr>().is_err() {
        return Err(invalid(
            field("host_ip"),
            format!("{} is not an IP address", quote(&port.host_ip)),
        ));
    }
    Ok(())
}

/// A List reply over what clients accept fails every client the same way, with gRPC's
/// bare "message larger than max": say what happened and what helps instead.
pub fn reply_size(rpc: &str, message: &impl prost::Message) -> Result<(), Status> {
    let len = message.encoded_len();
    if len > REPLY_MAX {
        return Err(Status::resource_exhausted(format!(
            "{rpc}: the reply would be {len} bytes, over the {REPLY_MAX} gRPC clients accept; \
             filter the list (by id, state or labels)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["a", "my-pod", "pod.ns.svc.cluster.local", &"a".repeat(63)] {
            assert!(hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a\nb",
            "UPPER",
            "a b",
            &"a".repeat(65),
            &format!("{}.b", "a".repeat(64)),
            "a..b",
            ".a",
            "-a",
            "a-",
            "a_b",
        ] {
            assert!(hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_paths() {
        for ok in ["c.log", "c/0.log", "./c/0.log"] {
            assert!(log_path(ok).is_ok(), "{ok}");
        }
        for bad in ["../x.log", "a/../../x.log", "/tmp/x.log", ".", "c/", "a\0b"] {
            assert!(log_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn container_paths() {
        for ok in ["/data", "/a/../b", "/etc/hosts"] {
            assert!(container_path(ok).is_ok(), "{ok}");
        }
        for bad in ["/", "/sys/..", "/a/b/../..", "//", "/..", "relative", ""] {
            assert!(container_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_words() {
        let dns = |servers: &[&str], searches: &[&str], options: &[&str]| cri::DnsConfig {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            searches: searches.iter().map(|s| s.to_string()).collect(),
            options: options.iter().map(|s| s.to_string()).collect(),
        };
        assert!(
            dns_config(&dns(
                &["10.0.0.10", "fd00::a"],
                &["svc.local"],
                &["ndots:5"]
            ))
            .is_ok()
        );
        let bad = [
            dns(&["10.0.0.10\nnameserver 6.6.6.6"], &[], &[]),
            dns(&[], &["a.local\noptions x"], &[]),
            dns(&[], &["a b"], &[]),
            dns(&[], &[], &["ndots:5 rotate"]),
            dns(&[], &[], &[""]),
        ];
        for d in bad {
            let e = dns_config(&d).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().starts_with("config.dns_config."),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn oversized_list_replies_say_so() {
        let pod = |i: usize| cri::PodSandbox {
            id: format!("{i:064}"),
            annotations: HashMap::from([("a".to_string(), "v".repeat(ANNOTATIONS_MAX - 1))]),
            ..Default::default()
        };
        let small = cri::ListPodSandboxResponse {
            items: (0..10).map(pod).collect(),
        };
        assert!(reply_size("ListPodSandbox", &small).is_ok());
        let big = cri::ListPodSandboxResponse {
            items: (0..70).map(pod).collect(),
        };
        let e = reply_size("ListPodSandbox", &big).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message()
                .starts_with("ListPodSandbox: the reply would be"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn annotation_caps() {
        let mut big = HashMap::new();
        big.insert("k".to_string(), "v".repeat(ANNOTATIONS_MAX));
        let e = sizes("config", &HashMap::new(), &big).unwrap_err();
        assert!(
            e.message().starts_with("config.annotations:"),
            "{}",
            e.message()
        );
        let e = sizes("config", &big, &HashMap::new()).unwrap_err();
        assert!(e.message().starts_with("config.labels:"), "{}", e.message());
        big.insert("k".to_string(), "v".repeat(200 * 1024));
        assert!(sizes("config", &HashMap::new(), &big).is_ok());
    }
}
