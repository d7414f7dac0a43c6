//! Checkpoints: state that must survive a runtime restart is written atomically
//! (temp file, fsync, rename, fsync of the directory) before a client hears of it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("checkpoint {path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content,
/// never a torn file: readers after a restart see only what was fully written.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io_err = |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .ok_or_else(|| io_err(io::Error::other("no parent directory")))?;
    fs::create_dir_all(dir).map_err(io_err)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// [`atomic_write`] of a value as JSON.
pub fn checkpoint<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| CheckpointError::Json {
        path: path.display().to_string(),
        source,
    })?;
    atomic_write(path, &bytes)
}

/// [`checkpoint`] from async code: the value is encoded here, the write and its fsyncs
/// run on a blocking thread so the runtime's workers never wait on the disk.
pub async fn checkpoint_async<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| CheckpointError::Json {
        path: path.display().to_string(),
        source,
    })?;
    write_async(path, bytes).await
}

/// [`atomic_write`] from async code (see [`checkpoint_async`]).
pub async fn write_async(path: &Path, bytes: Vec<u8>) -> Result<(), CheckpointError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || atomic_write(&owned, &bytes))
        .await
        .map_err(|e| CheckpointError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Reads a checkpoint written by [`checkpoint`]; `Ok(None)` when there is none.
pub fn recover<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, CheckpointError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| CheckpointError::Json {
                    path: path.display().to_string(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        checkpoint(&path, &vec![1, 2, 3]).unwrap();
        checkpoint(&path, &vec![4]).unwrap();
        assert_eq!(recover::<Vec<i32>>(&path).unwrap(), Some(vec![4]));
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        assert_eq!(recover::<Vec<i32>>(&dir.path().join("none")).unwrap(), None);
    }
}
