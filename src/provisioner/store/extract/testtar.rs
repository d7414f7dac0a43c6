pub const MTIME: u64 = 1_600_000_000;

#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    let s = format!("{:0width$o}\0", value, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    /// One raw entry: header fields as given, then `data` padded to a block.
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        &mut self,
        name: &str,
        kind: u8,
        mode: u32,
        (uid, gid): (u32, u32),
        mtime: u64,
        link: &str,
        dev: (u32, u32),
        data: &[u8],
    ) -> &mut Tar {
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "use pax() for long names"
        );
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], mode.into());
        octal(&mut h[108..116], uid.into());
        octal(&mut h[116..124], gid.into());
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], mtime);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        octal(&mut h[329..337], dev.0.into());
        octal(&mut h[337..345], dev.1.into());
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Tar {
        self.raw(name, b'5', mode, (0, 0), MTIME, "", (0, 0), b"")
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Tar {
        self.raw(name, b'0', mode, (0, 0), MTIME, "", (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
        self.raw(name, b'2', 0o777, (0, 0), MTIME, target, (0, 0), b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Tar {
        self.raw(name, b'1', 0o644, (0, 0), MTIME, target, (0, 0), b"")
    }

    /// A PAX extended header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + rest.to_string().len();
            if len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        self.raw("PaxHeader", b'x', 0o644, (0, 0), MTIME, "", (0, 0), &body)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.bytes);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}
