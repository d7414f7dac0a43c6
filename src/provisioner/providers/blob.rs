//! Blobs by digest: hashing, verifying a small blob in memory, and [`BlobWriter`],
//! which streams a layer to a file while checking its size and digest.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::error::ProviderError;

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(crate) fn verify(blob: &str, expected: &str, bytes: &[u8]) -> Result<(), ProviderError> {
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(ProviderError::DigestMismatch {
            blob: blob.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

pub(crate) async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), "cannot remove failed blob: {e}");
    }
}

/// A file being filled with a blob of known digest and size. The size is
/// checked while writing so an endless or oversized stream stops early.
pub(crate) struct BlobWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: PathBuf,
    name: String,
    expected: String,
    /// 0 = unknown.
    size: u64,
    written: u64,
    hasher: Sha256,
}

impl BlobWriter {
    pub(crate) async fn create(
        path: &Path,
        name: &str,
        expected: &str,
        size: u64,
    ) -> Result<Self, ProviderError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ProviderError::io(path, e))?;
        Ok(Self {
            file: tokio::io::BufWriter::with_capacity(256 << 10, file),
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: expected.to_string(),
            size,
            written: 0,
            hasher: Sha256::new(),
        })
    }

    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), ProviderError> {
        self.written += chunk.len() as u64;
        if self.size != 0 && self.written > self.size {
            return Err(ProviderError::SizeMismatch {
                blob: self.name.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ProviderError::io(&self.path, e))
    }

    pub(crate) async fn finish(mut self) -> Result<(), ProviderError> {
        if self.size != 0 && self.written != self.size {
            return Err(ProviderError::SizeMismatch {
                blob: self.name,
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if actual != self.expected {
            return Err(ProviderError::DigestMismatch {
                blob: self.name,
                expected: self.expected,
                actual,
            });
        }
        let path = self.path;
        // No fsync: the blob is a staging file the store extracts and deletes at once;
        // what must survive is the committed layer, not its download.
        self.file
            .flush()
            .await
            .map_err(|e| ProviderError::io(&path, e))
    }
}
