//! Layer tarballs, written header by header.
//!
//! The `tar` crate's path-taking `Builder` methods refuse `..`, absolute paths and some links,
//! which is right for archivers and wrong for us: provisioner tests need exactly those entries
//! to prove the runtime refuses them. So every entry here goes through one raw writer that puts
//! the given bytes into the header (GNU long-name records past 100 bytes) and validates nothing.
//!
//! Two ways to make a [`Layer`]:
//! - [`Layer::new`]: the well-formed, deterministic layer an image build would produce; paths
//!   relative, sorted, de-duplicated (last wins), missing parent directories added.
//! - [`Layer::raw`]: the entries verbatim, in the given order: for malicious layers
//!   (`../escape`, `/abs`, a symlink then a file through it, hardlinks to outside).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tar::{EntryType, Header};

/// The mtime of every entry, so a layer's bytes (and so its digests) never change between runs.
pub const MTIME: u64 = 1_577_836_800; // 2020-01-01T00:00:00Z

/// What a tar entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    /// Symlink to the target, stored verbatim (relative or absolute).
    Symlink(String),
    /// Hardlink to another path *in the archive* (verbatim, so `../x` is possible).
    Hardlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One tar entry: path, kind, permission bits and owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (e.g. `0o1777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl TarEntry {
    fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> Self {
        Self {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    /// A directory, mode 0755.
    pub fn dir(path: impl Into<String>) -> Self {
        Self::new(path, EntryKind::Dir, 0o755)
    }

    /// A regular file, mode 0644.
    pub fn file(path: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        Self::new(path, EntryKind::File(content.into()), 0o644)
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self::new(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// A hard link `path` to the archive member `target`.
    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self::new(path, EntryKind::Hardlink(target.into()), 0o644)
    }

    /// The OCI whiteout deleting `path` from lower layers: an empty `<dir>/.wh.<name>`.
    pub fn whiteout(path: &str) -> Self {
        let whiteout = match path.trim_end_matches('/').rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        Self::file(whiteout, Vec::new())
    }

    /// The OCI opaque marker: `dir` hides everything lower layers put in it.
    pub fn opaque(dir: &str) -> Self {
        Self::file(
            format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            Vec::new(),
        )
    }

    /// A named pipe, mode 0644.
    pub fn fifo(path: impl Into<String>) -> Self {
        Self::new(path, EntryKind::Fifo, 0o644)
    }

    /// A character device node, mode 0666.
    pub fn char_device(path: impl Into<String>, major: u32, minor: u32) -> Self {
        Self::new(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    /// Sets the permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// An uncompressed layer tar and its diff_id (`sha256:` of the tar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    tar: Vec<u8>,
    diff_id: String,
}

impl Layer {
    /// A well-formed layer: paths made relative, sorted, de-duplicated (the last entry for a
    /// path wins, so a custom image can override a base file), parent directories added.
    pub fn new(entries: impl IntoIterator<Item = TarEntry>) -> Self {
        let mut by_path = BTreeMap::new();
        for mut entry in entries {
            let path = entry
                .path
                .trim_matches('/')
                .trim_start_matches("./")
                .to_owned();
            if path.is_empty() || path == "." {
                continue;
            }
            entry.path = path.clone();
            by_path.insert(path, entry);
        }
        let paths: Vec<String> = by_path.keys().cloned().collect();
        for path in paths {
            let mut current = path.as_str();
            while let Some((parent, _)) = current.rsplit_once('/') {
                by_path
                    .entry(parent.to_owned())
                    .or_insert_with(|| TarEntry::dir(parent));
                current = parent;
            }
        }
        // A BTreeMap orders a parent before its children (a prefix sorts first).
        let entries = by_path.into_values().map(|mut entry| {
            if entry.kind == EntryKind::Dir {
                entry.path.push('/');
            }
            entry
        });
        Self::raw(entries)
    }

    /// The entries exactly as given, in order, nothing validated or added.
    pub fn raw(entries: impl IntoIterator<Item = TarEntry>) -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            append_raw(&mut builder, &entry).expect("writing a tar into memory cannot fail");
        }
        Self::from_tar(
            builder
                .into_inner()
                .expect("finishing an in-memory tar cannot fail"),
        )
    }

    /// Wraps tar bytes made elsewhere (e.g. truncated or otherwise corrupt on purpose).
    pub fn from_tar(tar: Vec<u8>) -> Self {
        let diff_id = crate::sha256_digest(&tar);
        Self { tar, diff_id }
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// `sha256:<hex>` of the uncompressed tar, as listed in the config's `rootfs.diff_ids`.
    pub fn diff_id(&self) -> &str {
        &self.diff_id
    }

    /// The layer compressed, memoized per process: the standard images compress the same
    /// busybox tar several times over.
    pub fn compressed(&self, compression: Compression) -> Vec<u8> {
        type Cache = Mutex<HashMap<(String, Compression), Vec<u8>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let key = (self.diff_id.clone(), compression);
        let cache = CACHE.get_or_init(Cache::default);
        if let Some(blob) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return blob.clone();
        }
        let blob = compression.compress(&self.tar);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, blob.clone());
        blob
    }
}

/// How a layer blob is compressed in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Compresses deterministically (gzip header mtime 0, fixed levels), so digests are stable.
    /// Fast levels: test builds are unoptimized, where default gzip of busybox takes 0.5 s.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut encoder = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::fast());
                encoder.write_all(tar).expect("gzip into memory");
                encoder.finish().expect("gzip into memory")
            }
            Compression::Zstd => zstd::encode_all(tar, 1).expect("zstd into memory"),
        }
    }
}

fn append_raw(builder: &mut tar::Builder<Vec<u8>>, entry: &TarEntry) -> std::io::Result<()> {
    let (entry_type, data, link): (EntryType, &[u8], Option<&str>) = match &entry.kind {
        EntryKind::Dir => (EntryType::Directory, &[], None),
        EntryKind::File(content) => (EntryType::Regular, content, None),
        EntryKind::Symlink(target) => (EntryType::Symlink, &[], Some(target)),
        EntryKind::Hardlink(target) => (EntryType::Link, &[], Some(target)),
        EntryKind::CharDevice { .. } => (EntryType::Char, &[], None),
        EntryKind::Fifo => (EntryType::Fifo, &[], None),
    };
    let name = entry.path.as_bytes();
    if name.len() > 100 {
        append_long(builder, EntryType::GNULongName, name)?;
    }
    let mut header = Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().expect("a GNU header");
        let n = name.len().min(gnu.name.len());
        gnu.name[..n].copy_from_slice(&name[..n]);
        if let Some(link) = link.map(str::as_bytes) {
            if link.len() > 100 {
                append_long(builder, EntryType::GNULongLink, link)?;
            }
            let n = link.len().min(gnu.linkname.len());
            gnu.linkname[..n].copy_from_slice(&link[..n]);
        }
    }
    header.set_entry_type(entry_type);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(MTIME);
    header.set_size(data.len() as u64);
    if let EntryKind::CharDevice { major, minor } = entry.kind {
        header.set_device_major(major)?;
        header.set_device_minor(minor)?;
    }
    header.set_cksum();
    builder.append(&header, data)
}

/// A GNU `././@LongLink` record carrying a name or link target longer than 100 bytes.
fn append_long(
    builder: &mut tar::Builder<Vec<u8>>,
    entry_type: EntryType,
    value: &[u8],
) -> std::io::Result<()> {
    let mut data = value.to_vec();
    data.push(0);
    let mut header = Header::new_gnu();
    let marker = b"././@LongLink";
    header.as_gnu_mut().expect("a GNU header").name[..marker.len()].copy_from_slice(marker);
    header.set_entry_type(entry_type);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(layer: &Layer) -> Vec<(String, EntryType, Option<String>)> {
        let mut archive = tar::Archive::new(layer.tar());
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).unwrap());
                (path, entry.header().entry_type(), link)
            })
            .collect()
    }

    #[test]
    fn new_sorts_adds_parents_and_is_deterministic() {
        let entries = vec![
            TarEntry::file("/b/c/file", "x"),
            TarEntry::file("a", "1"),
            TarEntry::file("a", "2"),
            TarEntry::whiteout("/b/gone"),
        ];
        let layer = Layer::new(entries.clone());
        assert_eq!(layer, Layer::new(entries));
        let paths: Vec<String> = listing(&layer).into_iter().map(|(p, ..)| p).collect();
        assert_eq!(paths, ["a", "b/", "b/.wh.gone", "b/c/", "b/c/file"]);
        let mut archive = tar::Archive::new(layer.tar());
        let mut first = archive.entries().unwrap().next().unwrap().unwrap();
        let mut content = String::new();
        std::io::Read::read_to_string(&mut first, &mut content).unwrap();
        assert_eq!(content, "2", "the last entry for a path wins");
    }

    #[test]
    fn raw_keeps_malicious_entries_and_long_names() {
        let long = format!("{}/file", "d".repeat(150));
        let long_target = format!("/{}", "t".repeat(150));
        let layer = Layer::raw([
            TarEntry::file("../escape", "x"),
            TarEntry::file("/abs", "x"),
            TarEntry::symlink("link", "/etc"),
            TarEntry::file("link/passwd", "x"),
            TarEntry::hardlink("hard", "../../etc/shadow"),
            TarEntry::file(long.clone(), "x"),
            TarEntry::symlink("long-link", long_target.clone()),
            TarEntry::char_device("dev/null", 1, 3),
        ]);
        let got = listing(&layer);
        let paths: Vec<&str> = got.iter().map(|(p, ..)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "../escape",
                "/abs",
                "link",
                "link/passwd",
                "hard",
                &long,
                "long-link",
                "dev/null"
            ]
        );
        assert_eq!(got[4].1, EntryType::Link);
        assert_eq!(got[4].2.as_deref(), Some("../../etc/shadow"));
        assert_eq!(got[6].2.as_deref(), Some(long_target.as_str()));
        assert_eq!(got[7].1, EntryType::Char);
    }

    #[test]
    fn compression_is_deterministic() {
        let layer = Layer::new([TarEntry::file("f", "hello")]);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(c.compress(layer.tar()), c.compress(layer.tar()));
        }
        let gzip = Compression::Gzip.compress(layer.tar());
        let mut gz = flate2::read::GzDecoder::new(gzip.as_slice());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut gz, &mut out).unwrap();
        assert_eq!(out, layer.tar());
    }
}
