//! A cgroup2 device filter: a BPF_PROG_TYPE_CGROUP_DEVICE program made from the allow
//! rules (what runc's devicefilter emits), loaded and attached to a cgroup directory. The
//! kernel keeps it attached for the cgroup's life; our descriptors are closed after.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::sys;

/// One allow rule: `kind` 'c', 'b' or 'a' (all); `None` numbers match any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Bits: 1 mknod, 2 read, 4 write (the kernel's BPF_DEVCG_ACC_*).
    pub access: u32,
}

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95;

/// BPF_DEVCG_DEV_BLOCK and BPF_DEVCG_DEV_CHAR.
fn type_of(kind: char) -> Option<i32> {
    match kind {
        'b' => Some(1),
        'c' => Some(2),
        _ => None,
    }
}

/// The program: r2 = device type, r3 = access, r4 = major, r5 = minor (from `struct
/// bpf_cgroup_dev_ctx`), then one block per rule that returns 1 when every part of the
/// rule matches and falls through to the next otherwise; the end returns 0 (deny).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        let mut tests = Vec::new();
        if let Some(t) = type_of(rule.kind) {
            tests.push((2u8, t));
        }
        // Access asked beyond the rule's: (access & !allowed) != 0 -> next rule.
        let mut block = Vec::new();
        let mut jumps = Vec::new();
        for (reg, value) in tests {
            jumps.push(block.len());
            block.push(insn(JNE_K, reg, 0, 0, value));
        }
        block.push(insn(MOV32_X, 1, 3, 0, 0));
        block.push(insn(AND32_K, 1, 0, 0, !(rule.access as i32) & 7));
        jumps.push(block.len());
        block.push(insn(JNE_K, 1, 0, 0, 0));
        for (reg, value) in [(4u8, rule.major), (5u8, rule.minor)] {
            if let Some(v) = value {
                jumps.push(block.len());
                block.push(insn(JNE_K, reg, 0, 0, v as i32));
            }
        }
        block.push(insn(MOV64_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in jumps {
            block[j].off = (len - j - 1) as i16;
        }
        p.extend(block);
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Compose with programs others (systemd) attached: every one must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Loads the program of `rules` and attaches it to the cgroup2 directory `dir`.
pub fn attach_device_filter(dir: &Path, rules: &[Rule]) -> io::Result<()> {
    let insns = program(rules);
    let prog = load(&insns)?;
    let cgroup = File::open(dir)?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_ALLOW_MULTI.to_ne_bytes());
    sys::bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

fn load(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    sys::bpf_new_fd(BPF_PROG_LOAD, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolators::cgroups::devices::{DEFAULT, READ};

    #[test]
    fn jumps_land_on_the_next_rule() {
        let rules = [Rule {
            kind: 'c',
            major: Some(1),
            minor: Some(3),
            access: READ,
        }];
        let p = program(&rules);
        // 6 loads + (type, mov, and, access, major, minor, r0=1, exit) + (r0=0, exit)
        assert_eq!(p.len(), 6 + 8 + 2);
        let block = &p[6..14];
        for (i, ins) in block.iter().enumerate() {
            if ins.code == JNE_K {
                assert_eq!(i as i16 + ins.off + 1, 8, "insn {i} jumps past its block");
            }
        }
        assert_eq!(p[p.len() - 2], insn(MOV64_K, 0, 0, 0, 0));
    }

    /// The verifier is the real check of the encoding (loading needs CAP_BPF).
    #[test]
    #[ignore = "needs root"]
    fn the_kernel_accepts_the_default_program() {
        load(&program(DEFAULT)).expect("the verifier accepts the program");
        load(&program(&[crate::isolators::cgroups::devices::ALL])).expect("and allow-all");
    }
}
