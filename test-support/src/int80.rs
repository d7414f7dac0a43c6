//! A tiny static x86-64 program that makes one *32-bit* system call (`int 0x80`, the i386
//! ABI, which a 64-bit process may use when the kernel has IA32 emulation): `mkdir(path,
//! 0755)` as i386 numbers it (39, where x86-64's 39 is `getpid`). It exits with the
//! call's errno (0 when the directory was made). A seccomp filter that checks only
//! x86-64 numbers would let it through; one that checks the architecture does not.
//!
//! Hand-assembled: no toolchain for 32-bit code is needed to build the tests.

/// Where the program is loaded: below 4 GiB, so 32-bit registers hold its addresses.
const BASE: u32 = 0x0040_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;

/// The program, making `path` (absolute, no NUL).
pub fn i386_mkdir(path: &str) -> Vec<u8> {
    assert!(path.starts_with('/') && !path.contains('\0'));
    let entry = BASE + (EHDR + PHDR) as u32;
    let mut code = Vec::new();
    // mov eax, 39 (i386 mkdir)
    code.extend([0xb8, 39, 0, 0, 0]);
    // mov ebx, <path> (patched below)
    code.extend([0xbb, 0, 0, 0, 0]);
    // mov ecx, 0o755
    code.extend([0xb9, 0xed, 0x01, 0, 0]);
    // int 0x80
    code.extend([0xcd, 0x80]);
    // neg eax: -errno -> errno
    code.extend([0xf7, 0xd8]);
    // mov edi, eax
    code.extend([0x89, 0xc7]);
    // mov eax, 60 (x86-64 exit); syscall
    code.extend([0xb8, 60, 0, 0, 0, 0x0f, 0x05]);
    let path_at = entry + code.len() as u32;
    code[6..10].copy_from_slice(&path_at.to_le_bytes());
    code.extend(path.as_bytes());
    code.push(0);

    let size = (EHDR + PHDR + code.len()) as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little endian, version 1, System V ABI.
    elf.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend([0; 8]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(62u16.to_le_bytes()); // EM_X86_64
    elf.extend(1u32.to_le_bytes()); // EV_CURRENT
    elf.extend(u64::from(entry).to_le_bytes());
    elf.extend((EHDR as u64).to_le_bytes()); // program headers follow
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes()); // flags
    elf.extend((EHDR as u16).to_le_bytes());
    elf.extend((PHDR as u16).to_le_bytes());
    elf.extend(1u16.to_le_bytes()); // one program header
    elf.extend(64u16.to_le_bytes()); // section header size
    elf.extend([0; 4]); // no sections, no string table
    // One PT_LOAD of the whole file, readable and executable.
    elf.extend(1u32.to_le_bytes());
    elf.extend(5u32.to_le_bytes()); // PF_R | PF_X
    elf.extend(0u64.to_le_bytes()); // from file offset 0
    elf.extend(u64::from(BASE).to_le_bytes());
    elf.extend(u64::from(BASE).to_le_bytes());
    elf.extend(size.to_le_bytes());
    elf.extend(size.to_le_bytes());
    elf.extend(0x1000u64.to_le_bytes());
    assert_eq!(elf.len(), EHDR + PHDR);
    elf.extend(code);
    elf
}
