//! A resolved profile to a seccomp-BPF program, through libseccomp (what runc and crun
//! use): it knows every architecture's syscall numbers, the x86 `socketcall`
//! multiplexer, 64-bit argument comparisons and every action. The program is exported,
//! not loaded: the container's child loads it (the supervisor links no seccomp library).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use super::profile::{Action, Arch, Arg, Op, Resolved};

/// The kernel takes at most this many instructions in one filter (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;

/// runc turns on libseccomp's binary-tree layout past this many rules: a call is then
/// found in a few comparisons rather than by walking the whole list.
const TREE_ABOVE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("libseccomp: {0}")]
    Library(String),
    #[error("the profile compiles to {0} BPF instructions; the kernel takes {MAX_INSTRUCTIONS}")]
    TooLong(usize),
    #[error("exporting the BPF program: {0}")]
    Export(#[from] std::io::Error),
}

fn lib(e: libseccomp::error::SeccompError) -> CompileError {
    CompileError::Library(e.to_string())
}

/// The program, and the syscall names libseccomp does not know (skipped, as runc skips
/// them: a profile may name calls of newer kernels).
pub struct Compiled {
    pub bpf: Vec<u8>,
    pub unknown: Vec<String>,
}

/// runc's reading of the actions: `SCMP_ACT_KILL` kills the thread, `errnoRet` defaults
/// to EPERM for ERRNO and TRACE.
fn action(a: Action, errno_ret: Option<u32>) -> ScmpAction {
    let ret = errno_ret.unwrap_or(libc::EPERM as u32);
    match a {
        Action::Kill | Action::KillThread => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
        Action::Trap => ScmpAction::Trap,
        Action::Errno => ScmpAction::Errno(ret as i32),
        Action::Trace => ScmpAction::Trace(ret as u16),
        Action::Allow => ScmpAction::Allow,
        Action::Log => ScmpAction::Log,
        Action::Notify => ScmpAction::Notify,
    }
}

fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::X86 => ScmpArch::X86,
        Arch::X86_64 => ScmpArch::X8664,
        Arch::X32 => ScmpArch::X32,
        Arch::Arm => ScmpArch::Arm,
        Arch::Aarch64 => ScmpArch::Aarch64,
        Arch::Mips => ScmpArch::Mips,
        Arch::Mips64 => ScmpArch::Mips64,
        Arch::Mips64N32 => ScmpArch::Mips64N32,
        Arch::Mipsel => ScmpArch::Mipsel,
        Arch::Mipsel64 => ScmpArch::Mipsel64,
        Arch::Mipsel64N32 => ScmpArch::Mipsel64N32,
        Arch::Ppc => ScmpArch::Ppc,
        Arch::Ppc64 => ScmpArch::Ppc64,
        Arch::Ppc64Le => ScmpArch::Ppc64Le,
        Arch::S390 => ScmpArch::S390,
        Arch::S390X => ScmpArch::S390X,
        Arch::Parisc => ScmpArch::Parisc,
        Arch::Parisc64 => ScmpArch::Parisc64,
        Arch::Riscv64 => ScmpArch::Riscv64,
    }
}

fn compare(a: &Arg) -> ScmpArgCompare {
    let (op, datum) = match a.op {
        Op::Ne => (ScmpCompareOp::NotEqual, a.value),
        Op::Lt => (ScmpCompareOp::Less, a.value),
        Op::Le => (ScmpCompareOp::LessOrEqual, a.value),
        Op::Eq => (ScmpCompareOp::Equal, a.value),
        Op::Ge => (ScmpCompareOp::GreaterEqual, a.value),
        Op::Gt => (ScmpCompareOp::Greater, a.value),
        Op::MaskedEq => (ScmpCompareOp::MaskedEqual(a.value), a.value_two),
    };
    ScmpArgCompare::new(a.index, op, datum)
}

/// Compiles `r`. A call of an architecture the profile does not list kills the process:
/// its numbers mean other calls, so no rule can be said to apply to it.
pub fn compile(r: &Resolved) -> Result<Compiled, CompileError> {
    let default = action(r.default_action, r.default_errno_ret);
    let mut ctx = ScmpFilterContext::new(default).map_err(lib)?;
    ctx.set_act_badarch(ScmpAction::KillProcess).map_err(lib)?;
    for a in &r.arches {
        ctx.add_arch(arch(*a)).map_err(lib)?;
    }
    if r.rules.len() > TREE_ABOVE {
        ctx.set_ctl_optimize(2).map_err(lib)?;
    }
    let mut unknown = Vec::new();
    for rule in &r.rules {
        let act = action(rule.action, rule.errno_ret);
        // libseccomp refuses a rule that repeats the default action.
        if act == default {
            continue;
        }
        let Ok(call) = ScmpSyscall::from_name(&rule.name) else {
            if !unknown.contains(&rule.name) {
                unknown.push(rule.name.clone());
            }
            continue;
        };
        let conditions: Vec<ScmpArgCompare> = rule.args.iter().map(compare).collect();
        // libseccomp ANDs the conditions of a rule but allows one per argument; a rule
        // with two on the same argument becomes one rule per condition, as in runc.
        let repeated = (0..6).any(|i| rule.args.iter().filter(|a| a.index == i).count() > 1);
        if conditions.is_empty() {
            ctx.add_rule(act, call).map_err(lib)?;
        } else if repeated {
            for c in conditions {
                ctx.add_rule_conditional(act, call, &[c]).map_err(lib)?;
            }
        } else {
            ctx.add_rule_conditional(act, call, &conditions)
                .map_err(lib)?;
        }
    }
    let bpf = export(&ctx)?;
    let instructions = bpf.len() / 8;
    if instructions > MAX_INSTRUCTIONS {
        return Err(CompileError::TooLong(instructions));
    }
    Ok(Compiled { bpf, unknown })
}

/// libseccomp 2.5 exports to a file descriptor only (the in-memory export is 2.6's).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, CompileError> {
    let mut file = File::from(memfd()?);
    ctx.export_bpf(&file).map_err(lib)?;
    file.seek(SeekFrom::Start(0))?;
    let mut bpf = Vec::new();
    file.read_to_end(&mut bpf)?;
    Ok(bpf)
}

fn memfd() -> std::io::Result<OwnedFd> {
    crate::sys::memfd(c"seccomp-bpf")
}

#[cfg(test)]
mod tests {
    use super::super::{default_profile, profile};
    use super::*;

    #[test]
    fn the_default_profile_compiles_for_three_architectures() {
        let r = profile::resolve(&default_profile::profile(), 0xa80425fb, (6, 1));
        let c = compile(&r).unwrap();
        assert_eq!(c.bpf.len() % 8, 0);
        assert!(c.bpf.len() / 8 < MAX_INSTRUCTIONS, "{}", c.bpf.len() / 8);
        // Names of newer kernels than this libseccomp knows are skipped, not fatal.
        assert!(c.unknown.len() < 10, "{:?}", c.unknown);
    }

    #[test]
    fn unknown_names_are_skipped() {
        let p = profile::parse(
            br#"{"defaultAction": "SCMP_ACT_ALLOW",
                 "syscalls": [{"names": ["mkdir", "no_such_call"], "action": "SCMP_ACT_ERRNO"},
                              {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
        )
        .unwrap();
        let c = compile(&profile::resolve(&p, 0, (6, 1))).unwrap();
        assert_eq!(c.unknown, ["no_such_call"]);
    }
}
