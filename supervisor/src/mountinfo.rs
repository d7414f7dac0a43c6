//! `/proc/self/mountinfo`, parsed once for everyone: the daemon (cgroup hierarchies,
//! shared-mount checks, backend cleanup) and the container child (the mount holding the
//! rootfs) read the same table the same way.

use std::io;
use std::path::{Path, PathBuf};

/// One line: `id parent major:minor root mount-point options [optional...] - fstype source super`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

impl MountEntry {
    /// Whether an optional field with this tag (`shared`, `master`, ...) is present.
    pub fn has(&self, tag: &str) -> bool {
        self.optional
            .iter()
            .any(|o| o.split(':').next() == Some(tag))
    }
}

/// The mount table of the calling process's mount namespace.
pub fn read() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                optional: fields
                    .get(6..)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                fstype: right.next().unwrap_or_default().to_string(),
                source: unescape(right.next().unwrap_or_default()),
                super_options: right.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The mount `path` lives on: the longest mount point that is `path` or above it; of
/// mounts stacked on one point, the last listed (the top of the stack).
pub fn containing<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.components().count())
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo`.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 22 254:0 /tmp/x /tmp/a\\040b rw master:1 - ext4 /dev/vda rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let entries = parse(TABLE);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].fstype, "cgroup");
        assert_eq!(entries[1].super_options, "rw,memory");
        assert_eq!(entries[2].mount_point, PathBuf::from("/tmp/a b"));
        assert!(entries[0].has("shared") && entries[2].has("master") && !entries[2].has("shared"));
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/x\0"), r"/x\0");
    }

    #[test]
    fn containing_picks_the_deepest_mount() {
        let entries = parse(TABLE);
        assert_eq!(
            containing(&entries, Path::new("/tmp/a b/c"))
                .unwrap()
                .mount_point,
            PathBuf::from("/tmp/a b")
        );
        assert_eq!(
            containing(&entries, Path::new("/etc")).unwrap().mount_point,
            PathBuf::from("/")
        );
    }
}
