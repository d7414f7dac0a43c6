//! Writing into a container's sandbox, and unpacking fetched archives there.
//!
//! A fetched archive is untrusted input and the sandbox fills up from several of them,
//! so nothing here follows a symlink: every name is resolved one component at a time
//! from a descriptor of the sandbox with `O_NOFOLLOW` (the walk of image layers,
//! `provisioner::store::extract`), and each final step is a `*at` call that does not
//! follow either. An earlier archive's `bin -> /etc` can therefore never make a later
//! file land in the host's `/etc`. Names with `..` are refused, absolute names are
//! relative to the sandbox (as GNU tar strips the `/`), a hardlink must point at a
//! file already in the sandbox, device nodes and FIFOs are refused. Modes lose their
//! set-id bits and everything belongs to the container's user, as Mesos chowns the
//! sandbox to the task's user.
//!
//! Archives are read with crates (tar, flate2, bzip2, liblzma, zstd, zip) rather than
//! Debian's tools as Mesos runs them: the rules above cannot be imposed on `tar -x`
//! or `unzip`, and a fork per archive is not needed.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use crate::provisioner::fsat::{
    components, dir_flags, file_type, lstat_at, open_dir, remove_all_at,
};

/// What kind of archive a fetched file is, by its name (as Mesos decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// A tar, plain or compressed; the compression is read from its first bytes.
    Tar,
    /// One gzip'd file: unpacked beside it without the `.gz`.
    Gzip,
    Zip,
}

impl Archive {
    pub fn of(name: &str) -> Option<Archive> {
        let lower = name.to_ascii_lowercase();
        const TARS: &[&str] = &[
            ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst",
        ];
        if TARS.iter().any(|s| lower.ends_with(s)) {
            Some(Archive::Tar)
        } else if lower.ends_with(".gz") && lower.len() > 3 {
            Some(Archive::Gzip)
        } else if lower.ends_with(".zip") {
            Some(Archive::Zip)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("sandbox {path}: {source}")]
    Sandbox {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("entry {entry:?} refused: {reason}")]
    Refused { entry: String, reason: String },
    #[error("entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("reading the archive: {0}")]
    Stream(io::Error),
}

fn refused(entry: &str, reason: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> ExtractError + 'a {
    move |e| ExtractError::Io {
        entry: entry.to_string(),
        op,
        source: e.into(),
    }
}

/// A sandbox directory opened for writing, and whose files are made in it.
pub struct Target {
    root: OwnedFd,
    owner: Option<(Uid, Gid)>,
}

impl Target {
    /// Opens `dir` (which must not itself be a symlink). `owner`: who everything written
    /// belongs to; `None` keeps root.
    pub fn open(dir: &Path, owner: Option<(u32, u32)>) -> Result<Target, ExtractError> {
        let root = nix::fcntl::open(dir, dir_flags(), Mode::empty()).map_err(|e| {
            ExtractError::Sandbox {
                path: dir.to_path_buf(),
                source: e.into(),
            }
        })?;
        Ok(Target {
            root,
            owner: owner.map(|(u, g)| (Uid::from_raw(u), Gid::from_raw(g))),
        })
    }

    fn chown(
        &self,
        fd: BorrowedFd<'_>,
        name: Option<&[u8]>,
        entry: &str,
    ) -> Result<(), ExtractError> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        match name {
            None => fchown(fd, Some(uid), Some(gid)),
            Some(n) => fchownat(fd, n, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW),
        }
        .map_err(io_err(entry, "setting the owner"))
    }

    /// The directory `comps` below the sandbox, made (0755, the user's) where missing.
    fn dir(&self, comps: &[Vec<u8>], entry: &str) -> Result<OwnedFd, ExtractError> {
        let mut cur = self.root.try_clone().map_err(|e| ExtractError::Io {
            entry: entry.to_string(),
            op: "opening the sandbox",
            source: e,
        })?;
        for comp in comps {
            let next = match open_dir(cur.as_fd(), comp) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(&cur, comp.as_slice(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io_err(entry, "creating a directory")(e)),
                    }
                    let fd = open_dir(cur.as_fd(), comp)
                        .map_err(io_err(entry, "opening a directory"))?;
                    fchmod(&fd, Mode::from_bits_truncate(0o755))
                        .map_err(io_err(entry, "setting a directory's mode"))?;
                    self.chown(fd.as_fd(), None, entry)?;
                    fd
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(refused(
                        entry,
                        format!(
                            "{} is a symlink or not a directory, and extraction never follows one",
                            String::from_utf8_lossy(comp)
                        ),
                    ));
                }
                Err(e) => return Err(io_err(entry, "opening a directory")(e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Removes what is at `name` in `parent` unless it is a directory and `keep_dir`.
    /// Returns whether a directory was kept.
    fn clear(
        parent: &OwnedFd,
        name: &[u8],
        keep_dir: bool,
        entry: &str,
    ) -> Result<bool, ExtractError> {
        let Some(st) = lstat_at(parent.as_fd(), name).map_err(io_err(entry, "inspecting"))? else {
            return Ok(false);
        };
        if keep_dir && file_type(&st) == SFlag::S_IFDIR {
            return Ok(true);
        }
        remove_all_at(parent.as_fd(), name).map_err(|e| ExtractError::Io {
            entry: entry.to_string(),
            op: "replacing",
            source: e,
        })?;
        Ok(false)
    }

    /// Creates the file `rel` (replacing whatever is there) for writing and reading.
    pub fn create_file(&self, rel: &Path, mode: u32) -> Result<File, ExtractError> {
        use std::os::unix::ffi::OsStrExt;
        let shown = rel.display().to_string();
        let comps = components(rel.as_os_str().as_bytes()).map_err(|r| refused(&shown, r))?;
        self.create_file_at(&comps, mode, &shown)
    }

    fn create_file_at(
        &self,
        comps: &[Vec<u8>],
        mode: u32,
        entry: &str,
    ) -> Result<File, ExtractError> {
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| refused(entry, "names the sandbox itself"))?;
        let parent = self.dir(parents, entry)?;
        Self::clear(&parent, last, false, entry)?;
        let fd = openat(
            &parent,
            last.as_slice(),
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err(entry, "creating the file"))?;
        fchmod(&fd, Mode::from_bits_truncate(mode & 0o777))
            .map_err(io_err(entry, "setting the mode"))?;
        self.chown(fd.as_fd(), None, entry)?;
        Ok(File::from(fd))
    }

    /// Sets the mode of the file `rel` (the `executable` field).
    pub fn set_mode(&self, file: &File, mode: u32, rel: &Path) -> Result<(), ExtractError> {
        fchmod(file, Mode::from_bits_truncate(mode & 0o777))
            .map_err(io_err(&rel.display().to_string(), "setting the mode"))
    }

    /// Unpacks the archive `file` (named `rel` in the sandbox) beside it.
    pub fn extract(&self, kind: Archive, file: File, rel: &Path) -> Result<u64, ExtractError> {
        use std::os::unix::ffi::OsStrExt;
        let shown = rel.display().to_string();
        let comps = components(rel.as_os_str().as_bytes()).map_err(|r| refused(&shown, r))?;
        let parent: Vec<Vec<u8>> = comps[..comps.len().saturating_sub(1)].to_vec();
        let mut file = file;
        file.rewind().map_err(ExtractError::Stream)?;
        match kind {
            Archive::Tar => self.untar(decoder(BufReader::new(file))?, &parent),
            Archive::Gzip => {
                let name = comps.last().cloned().unwrap_or_default();
                let stem = &name[..name.len() - 3];
                if stem.is_empty() {
                    return Err(refused(&shown, "a .gz without a name"));
                }
                let mut out_comps = parent.clone();
                out_comps.push(stem.to_vec());
                let mut out = self.create_file_at(&out_comps, 0o644, &shown)?;
                let mut gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
                io::copy(&mut gz, &mut out).map_err(ExtractError::Stream)?;
                Ok(1)
            }
            Archive::Zip => self.unzip(file, &parent),
        }
    }

    fn untar(&self, reader: Box<dyn Read>, base: &[Vec<u8>]) -> Result<u64, ExtractError> {
        use tar::EntryType as T;
        let mut archive = tar::Archive::new(reader);
        let mut count = 0;
        for entry in archive.entries().map_err(ExtractError::Stream)? {
            let mut entry = entry.map_err(ExtractError::Stream)?;
            let mut kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                continue;
            }
            let name = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&name).into_owned();
            if kind == T::Regular && name.ends_with(b"/") {
                kind = T::Directory;
            }
            let mut comps = base.to_vec();
            comps.extend(components(&name).map_err(|r| refused(&shown, r))?);
            let mode = entry.header().mode().unwrap_or(0o644);
            let mtime = entry.header().mtime().ok();
            match kind {
                T::Directory => {
                    self.mkdir(&comps, mode, &shown)?;
                }
                T::Regular | T::Continuous | T::GNUSparse => {
                    let mut out = self.create_file_at(&comps, mode, &shown)?;
                    io::copy(&mut entry, &mut out).map_err(|e| ExtractError::Io {
                        entry: shown.clone(),
                        op: "writing the file",
                        source: e,
                    })?;
                    if let Some(t) = mtime {
                        let t = TimeSpec::new(t as i64, 0);
                        let _ = futimens(&out, &t, &t);
                    }
                }
                T::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| refused(&shown, "symlink without a target"))?
                        .into_owned();
                    self.symlink(&comps, &target, &shown)?;
                }
                T::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| refused(&shown, "hardlink without a target"))?
                        .into_owned();
                    let mut tcomps = base.to_vec();
                    tcomps.extend(
                        components(&target)
                            .map_err(|r| refused(&shown, format!("hardlink target: {r}")))?,
                    );
                    self.hardlink(&comps, &tcomps, &shown)?;
                }
                T::Char | T::Block | T::Fifo => {
                    return Err(refused(
                        &shown,
                        "device nodes and FIFOs are not unpacked into a sandbox",
                    ));
                }
                other => return Err(refused(&shown, format!("unsupported entry type {other:?}"))),
            }
            count += 1;
        }
        Ok(count)
    }

    fn unzip(&self, file: File, base: &[Vec<u8>]) -> Result<u64, ExtractError> {
        let mut archive = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| ExtractError::Stream(io::Error::other(e)))?;
        let mut count = 0;
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| ExtractError::Stream(io::Error::other(e)))?;
            let name = entry.name_raw().to_vec();
            let shown = String::from_utf8_lossy(&name).into_owned();
            let mut comps = base.to_vec();
            comps.extend(components(&name).map_err(|r| refused(&shown, r))?);
            let unix = entry.unix_mode();
            let is_link = unix.is_some_and(|m| m & 0o170000 == 0o120000);
            if entry.is_dir() {
                self.mkdir(&comps, unix.unwrap_or(0o755), &shown)?;
            } else if is_link {
                let mut target = Vec::new();
                entry
                    .read_to_end(&mut target)
                    .map_err(ExtractError::Stream)?;
                if target.is_empty() {
                    return Err(refused(&shown, "symlink without a target"));
                }
                self.symlink(&comps, &target, &shown)?;
            } else {
                if let Some(m) = unix
                    && !matches!(m & 0o170000, 0 | 0o100000)
                {
                    return Err(refused(
                        &shown,
                        "only files, directories and symlinks are unpacked",
                    ));
                }
                let mut out = self.create_file_at(&comps, unix.unwrap_or(0o644), &shown)?;
                io::copy(&mut entry, &mut out).map_err(|e| ExtractError::Io {
                    entry: shown.clone(),
                    op: "writing the file",
                    source: e,
                })?;
            }
            count += 1;
        }
        Ok(count)
    }

    fn mkdir(&self, comps: &[Vec<u8>], mode: u32, entry: &str) -> Result<(), ExtractError> {
        let fd = match comps.split_last() {
            None => self.root.try_clone().map_err(|e| ExtractError::Io {
                entry: entry.to_string(),
                op: "opening the sandbox",
                source: e,
            })?,
            Some((last, parents)) => {
                let parent = self.dir(parents, entry)?;
                if !Self::clear(&parent, last, true, entry)? {
                    mkdirat(&parent, last.as_slice(), Mode::from_bits_truncate(0o700))
                        .map_err(io_err(entry, "creating the directory"))?;
                }
                open_dir(parent.as_fd(), last).map_err(io_err(entry, "opening the directory"))?
            }
        };
        // Owner bits stay: the user must be able to use what it was given.
        fchmod(&fd, Mode::from_bits_truncate((mode & 0o777) | 0o700))
            .map_err(io_err(entry, "setting the mode"))?;
        self.chown(fd.as_fd(), None, entry)
    }

    fn symlink(&self, comps: &[Vec<u8>], target: &[u8], entry: &str) -> Result<(), ExtractError> {
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| refused(entry, "a symlink cannot replace the sandbox"))?;
        let parent = self.dir(parents, entry)?;
        Self::clear(&parent, last, false, entry)?;
        symlinkat(target, &parent, last.as_slice())
            .map_err(io_err(entry, "creating the symlink"))?;
        self.chown(parent.as_fd(), Some(last), entry)
    }

    fn hardlink(
        &self,
        comps: &[Vec<u8>],
        target: &[Vec<u8>],
        entry: &str,
    ) -> Result<(), ExtractError> {
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| refused(entry, "a hardlink cannot replace the sandbox"))?;
        let (tlast, tparents) = target
            .split_last()
            .ok_or_else(|| refused(entry, "hardlink to the sandbox itself"))?;
        if comps == target {
            return Ok(());
        }
        let tparent = self.existing_dir(tparents, entry)?;
        let tstat = lstat_at(tparent.as_fd(), tlast)
            .map_err(io_err(entry, "inspecting the hardlink target"))?
            .ok_or_else(|| refused(entry, "hardlink target is not in the sandbox"))?;
        // Only a regular file: a hardlink to a symlink or a directory is a trick.
        if file_type(&tstat) != SFlag::S_IFREG {
            return Err(refused(entry, "hardlink target is not a regular file"));
        }
        let parent = self.dir(parents, entry)?;
        Self::clear(&parent, last, false, entry)?;
        linkat(
            &tparent,
            tlast.as_slice(),
            &parent,
            last.as_slice(),
            AtFlags::empty(),
        )
        .map_err(io_err(entry, "creating the hardlink"))
    }

    /// An existing directory, reached without symlinks.
    fn existing_dir(&self, comps: &[Vec<u8>], entry: &str) -> Result<OwnedFd, ExtractError> {
        let mut cur = self.root.try_clone().map_err(|e| ExtractError::Io {
            entry: entry.to_string(),
            op: "opening the sandbox",
            source: e,
        })?;
        for comp in comps {
            cur = open_dir(cur.as_fd(), comp).map_err(|e| match e {
                Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR => refused(
                    entry,
                    "hardlink target is not in the sandbox (or behind a symlink)",
                ),
                e => io_err(entry, "opening a directory")(e),
            })?;
        }
        Ok(cur)
    }

    /// Bytes of the sandbox's regular file `file` (for the summary).
    pub fn size_of(file: &File) -> u64 {
        fstat(file).map(|st| st.st_size as u64).unwrap_or(0)
    }
}

/// The tar stream in `reader`, decompressed as its first bytes say (gzip, bzip2, xz,
/// zstd, or none).
fn decoder(mut reader: BufReader<File>) -> Result<Box<dyn Read>, ExtractError> {
    use std::io::BufRead;
    let head = reader.fill_buf().map_err(ExtractError::Stream)?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(reader))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(ExtractError::Stream)?)
    } else {
        Box::new(reader)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o4755
            });
            h.set_size(data.len() as u64);
            // Raw names: the builder's own checks would refuse the hostile ones.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if let Some(l) = link {
                h.set_link_name_literal(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn extract_into(dir: &Path, name: &str, bytes: &[u8]) -> Result<u64, ExtractError> {
        let target = Target::open(dir, None)?;
        let mut f = target.create_file(Path::new(name), 0o644)?;
        f.write_all(bytes).unwrap();
        target.extract(Archive::of(name).unwrap(), f, Path::new(name))
    }

    #[test]
    fn archive_kinds_by_name() {
        for (name, kind) in [
            ("a.tar", Some(Archive::Tar)),
            ("a.TGZ", Some(Archive::Tar)),
            ("a.tar.bz2", Some(Archive::Tar)),
            ("a.txz", Some(Archive::Tar)),
            ("a.tar.zst", Some(Archive::Tar)),
            ("a.gz", Some(Archive::Gzip)),
            ("a.zip", Some(Archive::Zip)),
            ("a.sh", None),
            (".gz", None),
        ] {
            assert_eq!(Archive::of(name), kind, "{name}");
        }
    }

    #[test]
    fn tars_of_every_compression_unpack_beside_the_file_without_set_id_bits() {
        let tar = tar_of(&[
            ("d", tar::EntryType::Directory, b"", None),
            ("d/f", tar::EntryType::Regular, b"hello", None),
            ("/abs", tar::EntryType::Regular, b"abs", None),
            ("d/l", tar::EntryType::Symlink, b"", Some("/etc/passwd")),
            ("d/h", tar::EntryType::Link, b"", Some("d/f")),
        ]);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for (name, bytes) in [
            ("x.tar", &tar),
            ("sub/x.tgz", &gz),
            ("x.tar.bz2", &bz),
            ("x.tar.xz", &xz),
            ("x.tar.zst", &zst),
        ] {
            let dir = tempfile::tempdir().unwrap();
            assert_eq!(extract_into(dir.path(), name, bytes).unwrap(), 5, "{name}");
            let base = dir.path().join(Path::new(name).parent().unwrap());
            assert_eq!(std::fs::read(base.join("d/f")).unwrap(), b"hello");
            assert_eq!(std::fs::read(base.join("abs")).unwrap(), b"abs");
            assert_eq!(std::fs::read(base.join("d/h")).unwrap(), b"hello");
            assert_eq!(
                std::fs::read_link(base.join("d/l")).unwrap(),
                Path::new("/etc/passwd")
            );
            let mode = std::fs::metadata(base.join("d/f"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o755, "{name}: set-id bits dropped");
            assert!(
                dir.path().join(name).exists(),
                "the archive stays, as Mesos leaves it"
            );
        }
    }

    #[test]
    fn escapes_are_refused_and_write_nothing_outside() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("sandbox");
        std::fs::create_dir(&dir).unwrap();
        let cases: &[(&str, Vec<u8>)] = &[
            (
                "dotdot.tar",
                tar_of(&[("../escaped", tar::EntryType::Regular, b"x", None)]),
            ),
            (
                "through-link.tar",
                tar_of(&[
                    ("up", tar::EntryType::Symlink, b"", Some("..")),
                    ("up/escaped", tar::EntryType::Regular, b"x", None),
                ]),
            ),
            (
                "hardlink-out.tar",
                tar_of(&[("h", tar::EntryType::Link, b"", Some("../escaped"))]),
            ),
            (
                "hardlink-abs.tar",
                tar_of(&[("h", tar::EntryType::Link, b"", Some("/etc/passwd"))]),
            ),
            (
                "device.tar",
                tar_of(&[("dev", tar::EntryType::Char, b"", None)]),
            ),
            (
                "fifo.tar",
                tar_of(&[("p", tar::EntryType::Fifo, b"", None)]),
            ),
        ];
        for (name, bytes) in cases {
            let err = extract_into(&dir, name, bytes).unwrap_err();
            assert!(matches!(err, ExtractError::Refused { .. }), "{name}: {err}");
        }
        assert!(!outer.path().join("escaped").exists());
        // A symlink planted by one URI does not carry a later file out either.
        let target = Target::open(&dir, None).unwrap();
        std::os::unix::fs::symlink(outer.path(), dir.join("out")).unwrap();
        assert!(target.create_file(Path::new("out/escaped"), 0o644).is_err());
        assert!(!outer.path().join("escaped").exists());
        // Replacing the symlink itself is fine: it is inside.
        target.create_file(Path::new("out"), 0o644).unwrap();
        assert!(dir.join("out").is_file());
    }

    #[test]
    fn zip_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        zip.add_directory("conf/", opts).unwrap();
        zip.start_file("conf/run.sh", opts).unwrap();
        zip.write_all(b"#!/bin/sh\n").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        assert_eq!(extract_into(dir.path(), "a.zip", &bytes).unwrap(), 2);
        assert_eq!(
            std::fs::read(dir.path().join("conf/run.sh")).unwrap(),
            b"#!/bin/sh\n"
        );
        let mut bad = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        bad.start_file("../evil", opts).unwrap();
        bad.write_all(b"x").unwrap();
        let bytes = bad.finish().unwrap().into_inner();
        assert!(matches!(
            extract_into(dir.path(), "b.zip", &bytes).unwrap_err(),
            ExtractError::Refused { .. }
        ));

        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"plain data").unwrap();
        extract_into(dir.path(), "data.txt.gz", &e.finish().unwrap()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("data.txt")).unwrap(),
            b"plain data"
        );
    }
}
