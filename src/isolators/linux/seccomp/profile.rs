//! The seccomp profile format of OCI and Docker (moby's `default.json`, and what a
//! Localhost profile is written in), and its reading for one container: which rules apply
//! given the container's capabilities, this architecture and this kernel (moby's
//! `includes`/`excludes`).

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::isolators::linux::capabilities;

/// The Go architecture name moby's `includes.arches`/`excludes.arches` compare with.
pub const NATIVE_GOARCH: &str = "amd64";

/// The seccomp architecture of this host, as profiles name it in `archMap`.
pub const NATIVE_ARCH: Arch = Arch::X86_64;

/// A Localhost profile larger than this is refused: moby's default profile is 13 KB.
const PROFILE_MAX: u64 = 1024 * 1024;

/// Linux system calls take at most six arguments.
const ARGS_MAX: u32 = 6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub architectures: Vec<Arch>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub syscalls: Vec<Syscall>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub flags: Vec<Flag>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: Arch,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub sub_architectures: Vec<Arch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Syscall {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub names: Vec<String>,
    /// Docker's older one-name form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub args: Vec<Arg>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub includes: Condition,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub excludes: Condition,
}

/// moby's `includes`/`excludes`: capabilities (all held), Go architectures, kernel version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub caps: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub arches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl Condition {
    fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    /// `(arg & value) == value_two`.
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// Every architecture libseccomp knows, by the names profiles use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
pub enum Arch {
    #[serde(rename = "SCMP_ARCH_X86")]
    X86,
    #[serde(rename = "SCMP_ARCH_X86_64")]
    X86_64,
    #[serde(rename = "SCMP_ARCH_X32")]
    X32,
    #[serde(rename = "SCMP_ARCH_ARM")]
    Arm,
    #[serde(rename = "SCMP_ARCH_AARCH64")]
    Aarch64,
    #[serde(rename = "SCMP_ARCH_MIPS")]
    Mips,
    #[serde(rename = "SCMP_ARCH_MIPS64")]
    Mips64,
    #[serde(rename = "SCMP_ARCH_MIPS64N32")]
    Mips64N32,
    #[serde(rename = "SCMP_ARCH_MIPSEL")]
    Mipsel,
    #[serde(rename = "SCMP_ARCH_MIPSEL64")]
    Mipsel64,
    #[serde(rename = "SCMP_ARCH_MIPSEL64N32")]
    Mipsel64N32,
    #[serde(rename = "SCMP_ARCH_PPC")]
    Ppc,
    #[serde(rename = "SCMP_ARCH_PPC64")]
    Ppc64,
    #[serde(rename = "SCMP_ARCH_PPC64LE")]
    Ppc64Le,
    #[serde(rename = "SCMP_ARCH_S390")]
    S390,
    #[serde(rename = "SCMP_ARCH_S390X")]
    S390X,
    #[serde(rename = "SCMP_ARCH_PARISC")]
    Parisc,
    #[serde(rename = "SCMP_ARCH_PARISC64")]
    Parisc64,
    #[serde(rename = "SCMP_ARCH_RISCV64")]
    Riscv64,
}

/// `seccomp(2)` filter flags a profile may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flag {
    /// Every thread gets the filter: the child is single-threaded, so it always holds.
    #[serde(rename = "SECCOMP_FILTER_FLAG_TSYNC")]
    Tsync,
    #[serde(rename = "SECCOMP_FILTER_FLAG_LOG")]
    Log,
    #[serde(rename = "SECCOMP_FILTER_FLAG_SPEC_ALLOW")]
    SpecAllow,
}

impl Flag {
    /// The bit `seccomp(SECCOMP_SET_MODE_FILTER)` takes.
    pub fn bit(self) -> u32 {
        match self {
            Flag::Tsync => 0,
            Flag::Log => 1 << 1,
            Flag::SpecAllow => 1 << 2,
        }
    }
}

fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Why a profile cannot be used; the text names the place in the profile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("cannot read seccomp profile {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a seccomp profile: {reason}")]
    Malformed { path: String, reason: String },
}

/// Reads and checks a Localhost profile.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let shown = crate::quote::quote(&path.display().to_string());
    let read = |reason: String| ProfileError::Read {
        path: shown.clone(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
    if !meta.is_file() {
        return Err(read("not a regular file".into()));
    }
    if meta.len() > PROFILE_MAX {
        return Err(read(format!(
            "{} bytes, more than the {PROFILE_MAX} a profile may have",
            meta.len()
        )));
    }
    let text = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    parse(&text).map_err(|reason| ProfileError::Malformed {
        path: shown.clone(),
        reason,
    })
}

/// Parses and checks a profile's JSON text; the error is serde's (with line and column)
/// or names the field.
pub fn parse(text: &[u8]) -> Result<Profile, String> {
    let profile: Profile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    check(&profile)?;
    Ok(profile)
}

fn check(p: &Profile) -> Result<(), String> {
    if !p.architectures.is_empty() && !p.arch_map.is_empty() {
        return Err("architectures and archMap are both set; use one".into());
    }
    // A notifying filter needs an agent listening on `listenerPath`; none is built.
    if p.default_action == Action::Notify {
        return Err("defaultAction: SCMP_ACT_NOTIFY is not supported".into());
    }
    for (i, s) in p.syscalls.iter().enumerate() {
        if s.names.is_empty() && s.name.as_deref().is_none_or(str::is_empty) {
            return Err(format!("syscalls[{i}]: names is empty"));
        }
        if s.action == Action::Notify {
            return Err(format!(
                "syscalls[{i}].action: SCMP_ACT_NOTIFY is not supported"
            ));
        }
        for (j, a) in s.args.iter().enumerate() {
            if a.index >= ARGS_MAX {
                return Err(format!(
                    "syscalls[{i}].args[{j}].index: {} is not below {ARGS_MAX}",
                    a.index
                ));
            }
        }
        for (what, c) in [("includes", &s.includes), ("excludes", &s.excludes)] {
            if let Some(k) = &c.min_kernel
                && kernel_version(k).is_none()
            {
                return Err(format!(
                    "syscalls[{i}].{what}.minKernel: {} is not a kernel version",
                    crate::quote::quote(k)
                ));
            }
        }
        if !s.excludes.is_empty() && s.excludes.min_kernel.is_some() {
            return Err(format!(
                "syscalls[{i}].excludes.minKernel: only includes may name a kernel"
            ));
        }
    }
    Ok(())
}

/// `major.minor` of a kernel release ("6.1.0-18-amd64" -> (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// One rule of a profile as it applies to a container.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub errno_ret: Option<u32>,
    pub args: Vec<Arg>,
}

/// A profile as it applies to one container on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub default_action: Action,
    pub default_errno_ret: Option<u32>,
    pub arches: Vec<Arch>,
    pub rules: Vec<Rule>,
    pub flags: u32,
}

/// The rules of `p` that apply with the bounding set `caps` on a kernel `kernel`, in
/// moby's reading: every capability of `includes.caps` held, this architecture among
/// `includes.arches`, the kernel at least `includes.minKernel`; none of `excludes`.
pub fn resolve(p: &Profile, caps: u64, kernel: (u32, u32)) -> Resolved {
    let holds = |name: &String| capabilities::bit(name).is_some_and(|b| caps & b != 0);
    let native = |arches: &[String]| arches.iter().any(|a| a == NATIVE_GOARCH);
    let mut rules = Vec::new();
    for s in &p.syscalls {
        let inc = &s.includes;
        if !inc.caps.iter().all(holds)
            || (!inc.arches.is_empty() && !native(&inc.arches))
            || inc
                .min_kernel
                .as_deref()
                .and_then(kernel_version)
                .is_some_and(|min| kernel < min)
        {
            continue;
        }
        let exc = &s.excludes;
        if exc.caps.iter().any(holds) || native(&exc.arches) {
            continue;
        }
        for name in s.names.iter().chain(s.name.iter()) {
            rules.push(Rule {
                name: name.clone(),
                action: s.action,
                errno_ret: s.errno_ret,
                args: s.args.clone(),
            });
        }
    }
    let arches = if p.arch_map.is_empty() {
        p.architectures.clone()
    } else {
        p.arch_map
            .iter()
            .filter(|m| m.architecture == NATIVE_ARCH)
            .flat_map(|m| std::iter::once(m.architecture).chain(m.sub_architectures.clone()))
            .collect()
    };
    Resolved {
        default_action: p.default_action,
        default_errno_ret: p.default_errno_ret,
        arches,
        rules,
        flags: p.flags.iter().fold(0, |f, flag| f | flag.bit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critests_profile_parses() {
        let p = parse(
            br#"{"defaultAction": "SCMP_ACT_ALLOW",
                 "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let r = resolve(&p, 0, (6, 1));
        assert_eq!(r.rules.len(), 1);
        assert_eq!(r.rules[0].name, "sethostname");
        assert!(r.arches.is_empty());
    }

    #[test]
    fn errors_say_where() {
        let e = parse(br#"{"defaultAction": "SCMP_ACT_FLY"}"#).unwrap_err();
        assert!(e.contains("SCMP_ACT_FLY") && e.contains("line 1"), "{e}");
        let e = parse(b"{\"defaultAction\": \"SCMP_ACT_ALLOW\",").unwrap_err();
        assert!(e.contains("EOF"), "{e}");
        let e = parse(
            br#"{"defaultAction": "SCMP_ACT_ALLOW",
                 "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                               "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e, "syscalls[0].args[0].index: 6 is not below 6");
        let e = parse(br#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = load(Path::new("/no/such/profile.json")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read seccomp profile \"/no/such/profile.json\": "),
            "{e}"
        );
    }

    #[test]
    fn includes_and_excludes_follow_caps_arch_and_kernel() {
        let p = parse(
            br#"{"defaultAction": "SCMP_ACT_ERRNO",
                 "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                              "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                             {"architecture": "SCMP_ARCH_AARCH64",
                              "subArchitectures": ["SCMP_ARCH_ARM"]}],
                 "syscalls": [
                   {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                    "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                   {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                    "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                   {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                    "includes": {"minKernel": "4.8"}},
                   {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW",
                    "includes": {"arches": ["arm", "arm64"]}},
                   {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
                    "includes": {"arches": ["amd64", "x32"]}}]}"#,
        )
        .unwrap();
        let names = |r: &Resolved| r.rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        let admin = capabilities::bit("SYS_ADMIN").unwrap();
        let r = resolve(&p, 0, (6, 1));
        assert_eq!(names(&r), ["clone3", "ptrace", "arch_prctl"]);
        assert_eq!(r.arches, [Arch::X86_64, Arch::X86, Arch::X32]);
        let r = resolve(&p, admin, (4, 4));
        assert_eq!(names(&r), ["mount", "arch_prctl"]);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(kernel_version("4.8"), Some((4, 8)));
        assert_eq!(kernel_version("5"), Some((5, 0)));
        assert_eq!(kernel_version("x"), None);
    }
}
