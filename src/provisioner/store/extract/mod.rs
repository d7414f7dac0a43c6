//! Unpacking one image layer (a tar stream, plain, gzip'd or zstd'd) into a fresh
//! directory, with whiteouts converted to overlayfs's format.
//!
//! A layer is untrusted input: it must never create, change or delete anything outside
//! `rootfs`. Every name is therefore resolved one component at a time from a descriptor
//! of `rootfs`, each directory opened with `O_NOFOLLOW`, and every final step uses a
//! `*at` call that does not follow a symlink either. No symlink is ever followed, neither
//! one from an earlier entry of the layer nor one in the name itself. The rules:
//! - an absolute name is taken relative to `rootfs`, as docker does (`/etc/passwd` is
//!   `rootfs/etc/passwd`): tools such as old `docker export` produced such names;
//! - a name with a `..` component is rejected (docker only cleans `a/../b`; no real layer
//!   needs it, and refusing is simpler to reason about than confining);
//! - a name that reaches through a symlink (or a non-directory) is rejected: within one
//!   layer such an entry can only be a trick, since a tar of a real tree never has one;
//! - an entry replaces whatever the layer already had at its name, except that a
//!   directory over a directory merges (as docker does); the old entry is removed first,
//!   so a file never writes through a symlink and a symlink can replace a directory;
//! - a hardlink's target must be an earlier non-directory entry of this layer, reached
//!   without symlinks; an absolute target is relative to `rootfs` as above.
//!
//! Whiteouts (`.wh.<name>`, `.wh..wh..opq`) become what overlayfs reads: a 0:0 character
//! device at `<name>`, and `trusted.overlay.opaque=y` on the opaque directory. The
//! [`LayerSummary`] lists them too, so the copy backend (and anyone without overlayfs)
//! can apply them without scanning the tree.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::unpack::Unpacker;
use crate::provisioner::fsat::*;

mod unpack;

/// The xattr overlayfs reads to make a directory hide the lower layers' contents.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Prefix of every xattr overlayfs interprets; a layer may not bring its own.
pub const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

pub(super) const WH_PREFIX: &[u8] = b".wh.";
/// AUFS's own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): never part of the image.
pub(super) const WH_META_PREFIX: &[u8] = b".wh..wh.";
pub(super) const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression an OCI or Docker layer media type declares:
    /// `application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]` (and the `nondistributable`
    /// variants), `application/vnd.docker.image.rootfs.diff.tar.gzip` (and `foreign`).
    /// Anything unknown is `None`; [`unpack_layer`] sniffs the stream anyway.
    pub fn from_media_type(media_type: &str) -> Compression {
        let media_type = media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media_type.ends_with("+gzip")
            || media_type.ends_with(".gzip")
            || media_type.ends_with(".tar.gz")
            || media_type == "application/gzip"
            || media_type == "application/x-gzip"
        {
            Compression::Gzip
        } else if media_type.ends_with("+zstd")
            || media_type.ends_with(".zstd")
            || media_type == "application/zstd"
        {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression the first bytes of a blob show (gzip `1f 8b`, zstd `28 b5 2f fd`);
    /// `None` for anything else, a tar stream included.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What [`unpack_layer`] learnt about a layer; the store keeps it beside the rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerSummary {
    /// `sha256:<hex>` of the uncompressed tar stream (the image config's diff_id).
    pub diff_id: String,
    /// Paths (relative to the layer root) this layer deletes from the layers below.
    pub whiteouts: Vec<PathBuf>,
    /// Directories (relative; `.` for the root) that hide the lower layers' contents.
    pub opaque_dirs: Vec<PathBuf>,
    /// Bytes of regular file data in the layer.
    pub size_bytes: u64,
    /// Inodes the layer uses (hardlinks share one).
    pub entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer rootfs {path}: {source}")]
    Rootfs { path: PathBuf, source: io::Error },
    #[error("reading the layer stream: {0}")]
    Stream(#[source] io::Error),
    #[error("tar entry {entry:?} rejected: {reason}")]
    Rejected { entry: String, reason: String },
    #[error("tar entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the layer tar in `reader` into `rootfs`, an existing empty directory, and
/// returns its summary. `compression` is what the manifest declares; the stream's magic
/// bytes win when they disagree (registries and `docker save` mislabel layers).
/// Blocking: run it on a blocking thread.
pub fn unpack_layer(
    mut reader: impl Read,
    compression: Compression,
    rootfs: &Path,
) -> Result<LayerSummary, ExtractError> {
    let root =
        nix::fcntl::open(rootfs, dir_flags(), Mode::empty()).map_err(|e| ExtractError::Rootfs {
            path: rootfs.to_path_buf(),
            source: e.into(),
        })?;

    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ExtractError::Stream(e)),
        }
    }
    let sniffed = Compression::sniff(&head[..got]);
    if sniffed != compression {
        tracing::debug!(declared = ?compression, found = ?sniffed, "layer compression differs from its media type");
    }
    let input = io::Cursor::new(head[..got].to_vec()).chain(reader);
    let decoded = match sniffed {
        Compression::None => Decoder::Plain(input),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(input))),
        Compression::Zstd => Decoder::Zstd(Box::new(
            zstd::stream::read::Decoder::new(input).map_err(ExtractError::Stream)?,
        )),
    };
    let mut hashed = HashingReader {
        inner: decoded,
        hasher: Sha256::new(),
    };

    let mut unpacker = Unpacker::new(root);
    {
        let mut archive = tar::Archive::new(&mut hashed);
        for entry in archive.entries().map_err(ExtractError::Stream)? {
            let mut entry = entry.map_err(ExtractError::Stream)?;
            unpacker.apply(&mut entry)?;
        }
    }
    // The archive stops at the first zero block; the diff_id covers the whole stream.
    io::copy(&mut hashed, &mut io::sink()).map_err(ExtractError::Stream)?;
    let mut summary = unpacker.finish()?;
    summary.diff_id = format!("sha256:{}", hex::encode(hashed.hasher.finalize()));
    Ok(summary)
}

enum Decoder<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A tar writer for tests that writes raw ustar headers, so it can produce the names
/// and links that well-behaved builders refuse (`..`, absolute paths, tricks).
#[cfg(test)]
pub(crate) mod testtar;

#[cfg(test)]
mod tests;
