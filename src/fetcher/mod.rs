//! Mesos's fetcher: the URIs a container names are fetched into its sandbox while it is
//! FETCHING (after isolation, before its process is released), one URI after another,
//! through the [`cache`] when a URI asks for it.
//!
//! As Mesos: a URI lands in the sandbox at its `output_file` or its last path segment;
//! an `executable` one gets mode 0755; otherwise an archive (by its name) is unpacked
//! beside it and the archive stays. Everything belongs to the container's user. A cache
//! failure of any kind falls back to fetching directly; a source failure (a 404, a
//! refused connection, a stall) fails the fetch, naming the URI.

pub mod cache;
pub mod extract;
pub mod http;
pub mod uri;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::cache::{Acquired, Cache, Lease, Status, remove_files};
use self::extract::{Archive, Target};
pub use self::uri::{FETCH_ANNOTATION, FetchUri, Source, UriError};
use crate::metrics::METRICS;
use crate::provisioner::fsat::open_dir;

/// A URI that could not be fetched; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fetching {uri}: {reason}")]
pub struct FetchError {
    pub uri: String,
    pub reason: String,
}

/// What the fetcher is made from (the flags' part of it).
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    pub cache_dir: PathBuf,
    /// 0: no cache.
    pub cache_size: u64,
    pub stall_timeout: Duration,
    /// Host directories `file` URIs may read from; empty: none.
    pub file_allowlist: Vec<PathBuf>,
    /// Host (or `host:port`) → PEM file trusted for it (the registries' `ca_file`).
    pub cas: HashMap<String, PathBuf>,
}

impl FetcherConfig {
    pub fn from_flags(flags: &crate::flags::Flags) -> FetcherConfig {
        FetcherConfig {
            cache_dir: flags.fetcher_cache_dir.clone(),
            cache_size: flags.fetcher_cache_size,
            stall_timeout: flags.fetcher_stall_timeout,
            file_allowlist: flags.fetcher_file_allowlist.clone(),
            cas: flags
                .registries
                .iter()
                .filter_map(|(host, r)| Some((host.clone(), r.ca_file.clone()?)))
                .collect(),
        }
    }
}

#[derive(Debug)]
pub struct Fetcher {
    http: http::HttpClient,
    cache: Option<Arc<Cache>>,
    file_allowlist: Vec<PathBuf>,
}

/// Where a URI's bytes come from, opened.
enum Opened {
    Http(http::Body),
    File { file: tokio::fs::File, len: u64 },
}

impl Opened {
    fn announced(&self) -> Option<u64> {
        match self {
            Opened::Http(body) => body.announced,
            Opened::File { len, .. } => Some(*len),
        }
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        let chunk = match self {
            Opened::Http(body) => body.chunk().await?,
            Opened::File { file, .. } => {
                let mut buf = vec![0u8; 256 * 1024];
                let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
                buf.truncate(n);
                (n > 0).then(|| Bytes::from(buf))
            }
        };
        if let Some(c) = &chunk {
            METRICS
                .fetcher_bytes_fetched
                .fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        Ok(chunk)
    }
}

/// How the downloader of a cache entry ended.
enum Filled {
    /// In the cache: copy it to the sandbox like any waiter.
    Cached,
    /// The cache gave up half-way; the rest went straight to the sandbox.
    Direct(std::fs::File),
}

/// A cache reservation is taken at least this much at a time for a body longer than
/// announced (or of unknown length).
const RESERVE_STEP: u64 = 1 << 20;

fn join_error(e: tokio::task::JoinError) -> String {
    format!("fetcher task failed: {e}")
}

impl Fetcher {
    /// The fetcher, its cache directory emptied (Mesos does at agent start). Blocking.
    pub fn new(config: FetcherConfig) -> Result<Fetcher, String> {
        let cache = if config.cache_size > 0 {
            let cache = Cache::open(&config.cache_dir, config.cache_size)
                .map_err(|e| format!("--fetcher_cache_dir {}: {e}", config.cache_dir.display()))?;
            Some(Arc::new(cache))
        } else {
            None
        };
        Ok(Fetcher {
            http: http::HttpClient::new(config.cas, config.stall_timeout)?,
            cache,
            file_allowlist: config.file_allowlist,
        })
    }

    /// Refuses `file` URIs outside the allow-list (before anything is created for them).
    pub fn check(&self, uris: &[FetchUri]) -> Result<(), UriError> {
        for (i, uri) in uris.iter().enumerate() {
            if let Ok(Source::File(path)) = uri.source()
                && self.allowed_dir(&path).is_none()
            {
                return Err(UriError {
                    reason: format!(
                        "entry {i} ({}): {}",
                        crate::quote::quote(&uri.value),
                        self.not_allowed()
                    ),
                });
            }
        }
        Ok(())
    }

    fn not_allowed(&self) -> String {
        if self.file_allowlist.is_empty() {
            "file URIs are refused: --fetcher_file_allowlist names no directory".into()
        } else {
            format!(
                "not under a directory of --fetcher_file_allowlist ({})",
                self.file_allowlist
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }

    fn allowed_dir(&self, path: &Path) -> Option<&Path> {
        self.file_allowlist
            .iter()
            .find(|dir| path.starts_with(dir) && path != dir.as_path())
            .map(PathBuf::as_path)
    }

    /// Fetches `uris` in order into `sandbox`, everything owned by `owner` (uid, gid),
    /// whose uid also keys the cache. Cache references are held until the run ends.
    pub async fn fetch(
        &self,
        uris: &[FetchUri],
        sandbox: &Path,
        owner: (u32, u32),
    ) -> Result<(), FetchError> {
        if uris.is_empty() {
            return Ok(());
        }
        let dir = sandbox.to_path_buf();
        let target = tokio::task::spawn_blocking(move || Target::open(&dir, Some(owner)))
            .await
            .map_err(|e| FetchError {
                uri: String::new(),
                reason: join_error(e),
            })?
            .map_err(|e| FetchError {
                uri: uris[0].value.clone(),
                reason: e.to_string(),
            })?;
        let target = Arc::new(target);
        let mut leases = Vec::new();
        for uri in uris {
            let started = std::time::Instant::now();
            let err = |reason: String| FetchError {
                uri: uri.value.clone(),
                reason,
            };
            let dest = uri.destination().map_err(&err)?;
            let source = uri.source().map_err(&err)?;
            let cached = uri.cache && self.cache.is_some();
            let file = if cached {
                self.fetch_cached(uri, &source, &dest, owner.0, &target, &mut leases)
                    .await
            } else {
                self.fetch_direct(&source, &dest, &target).await
            }
            .map_err(&err)?;
            let bytes = Target::size_of(&file);
            let (target2, dest2) = (target.clone(), dest.clone());
            let (executable, extract) = (uri.executable, uri.extract);
            let unpacked = tokio::task::spawn_blocking(move || -> Result<u64, String> {
                if executable {
                    target2
                        .set_mode(&file, 0o755, &dest2)
                        .map_err(|e| e.to_string())?;
                    return Ok(0);
                }
                let name = dest2.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match Archive::of(name).filter(|_| extract) {
                    Some(kind) => target2
                        .extract(kind, file, &dest2)
                        .map_err(|e| format!("extracting: {e}")),
                    None => Ok(0),
                }
            })
            .await
            .map_err(|e| err(join_error(e)))?
            .map_err(&err)?;
            tracing::info!(
                uri = %uri.value,
                file = %dest.display(),
                bytes,
                unpacked,
                cached,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "fetched"
            );
        }
        drop(leases);
        Ok(())
    }

    async fn open(&self, source: &Source) -> Result<Opened, String> {
        match source {
            Source::Http(url) => Ok(Opened::Http(self.http.get(url).await?)),
            Source::File(path) => {
                let dir = self
                    .allowed_dir(path)
                    .ok_or_else(|| self.not_allowed())?
                    .to_path_buf();
                let path = path.clone();
                let (file, len) = tokio::task::spawn_blocking(move || open_beneath(&dir, &path))
                    .await
                    .map_err(join_error)??;
                Ok(Opened::File {
                    file: tokio::fs::File::from_std(file),
                    len,
                })
            }
        }
    }

    /// Creates the sandbox file `dest` (0644, the user's).
    async fn create(target: &Arc<Target>, dest: &Path) -> Result<tokio::fs::File, String> {
        let (target, dest) = (target.clone(), dest.to_path_buf());
        let file = tokio::task::spawn_blocking(move || target.create_file(&dest, 0o644))
            .await
            .map_err(join_error)?
            .map_err(|e| e.to_string())?;
        Ok(tokio::fs::File::from_std(file))
    }

    /// Streams the rest of `opened` into `out`, returning it as a std file.
    async fn stream(mut opened: Opened, mut out: tokio::fs::File) -> Result<std::fs::File, String> {
        while let Some(chunk) = opened.chunk().await? {
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("writing into the sandbox: {e}"))?;
        }
        out.flush()
            .await
            .map_err(|e| format!("writing into the sandbox: {e}"))?;
        Ok(out.into_std().await)
    }

    async fn fetch_direct(
        &self,
        source: &Source,
        dest: &Path,
        target: &Arc<Target>,
    ) -> Result<std::fs::File, String> {
        let opened = self.open(source).await?;
        let out = Self::create(target, dest).await?;
        Self::stream(opened, out).await
    }

    /// Through the cache: download it (first request) or wait for it, then copy it
    /// into the sandbox; the lease joins `leases`, released when the run ends.
    async fn fetch_cached(
        &self,
        uri: &FetchUri,
        source: &Source,
        dest: &Path,
        uid: u32,
        target: &Arc<Target>,
        leases: &mut Vec<Lease>,
    ) -> Result<std::fs::File, String> {
        let cache = self.cache.as_ref().expect("caller checked");
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
            .to_string();
        let status = match cache.acquire(uid, &uri.value, &name) {
            Acquired::Download(lease) => {
                let opened = match self.open(source).await {
                    Ok(o) => o,
                    Err(reason) => {
                        remove_files(lease.fail(&reason).into_iter().collect());
                        return Err(reason);
                    }
                };
                let filled = self.fill(&lease, opened, dest, target).await;
                leases.push(lease);
                match filled? {
                    Filled::Direct(file) => return Ok(file),
                    Filled::Cached => Status::Ready,
                }
            }
            Acquired::Wait(lease, mut rx) => {
                let status = rx
                    .wait_for(|s| *s != Status::Pending)
                    .await
                    .map(|s| s.clone())
                    .unwrap_or(Status::Bypass);
                leases.push(lease);
                status
            }
        };
        match status {
            Status::Ready => {
                let from = leases.last().expect("pushed above").path().to_path_buf();
                let (target2, dest2) = (target.clone(), dest.to_path_buf());
                let copied =
                    tokio::task::spawn_blocking(move || -> Result<std::fs::File, String> {
                        let mut src = std::fs::File::open(&from)
                            .map_err(|e| format!("cache file {}: {e}", from.display()))?;
                        let mut out = target2
                            .create_file(&dest2, 0o644)
                            .map_err(|e| e.to_string())?;
                        std::io::copy(&mut src, &mut out)
                            .map_err(|e| format!("copying from the cache: {e}"))?;
                        Ok(out)
                    })
                    .await
                    .map_err(join_error)?;
                match copied {
                    Ok(file) => Ok(file),
                    // A cache failure falls back to fetching directly.
                    Err(reason) => {
                        tracing::warn!(uri = %uri.value, %reason, "fetcher cache failed; fetching directly");
                        self.fetch_direct(source, dest, target).await
                    }
                }
            }
            Status::Failed(reason) => Err(reason),
            Status::Bypass | Status::Pending => self.fetch_direct(source, dest, target).await,
        }
    }

    /// The downloader's part: the body into the cache file, space reserved as it comes.
    /// When the cache cannot take it (no room, an I/O error), the entry is given up and
    /// the body goes on into the sandbox.
    async fn fill(
        &self,
        lease: &Lease,
        mut opened: Opened,
        dest: &Path,
        target: &Arc<Target>,
    ) -> Result<Filled, String> {
        let mut reserved = 0u64;
        let mut usable = true;
        if let Some(n) = opened.announced() {
            match lease.reserve(n) {
                Ok(evicted) => {
                    remove_files(evicted);
                    reserved = n;
                }
                Err(evicted) => {
                    remove_files(evicted);
                    usable = false;
                }
            }
        }
        let mut file = if usable {
            match tokio::fs::File::create(lease.path()).await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(path = %lease.path().display(), error = %e, "fetcher cache file not created");
                    None
                }
            }
        } else {
            None
        };
        let mut written = 0u64;
        while let Some(f) = file.as_mut() {
            let chunk = match opened.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(reason) => {
                    remove_files(lease.fail(&reason).into_iter().collect());
                    return Err(reason);
                }
            };
            let len = chunk.len() as u64;
            if written + len > reserved {
                let need = written + len - reserved;
                // A step ahead when there is room for it, else just what this chunk needs.
                let step = need.max(RESERVE_STEP);
                let got = match lease.reserve(step) {
                    Ok(evicted) => Ok((evicted, step)),
                    Err(evicted) => {
                        remove_files(evicted);
                        lease.reserve(need).map(|e| (e, need))
                    }
                };
                match got {
                    Ok((evicted, n)) => {
                        remove_files(evicted);
                        reserved += n;
                    }
                    Err(evicted) => {
                        remove_files(evicted);
                        tracing::info!(
                            bytes = written + len,
                            "larger than the cache can hold: bypassing it"
                        );
                        return self
                            .divert(lease, file.take(), Some(chunk), opened, dest, target)
                            .await;
                    }
                }
            }
            if let Err(e) = f.write_all(&chunk).await {
                tracing::warn!(error = %e, "writing the fetcher cache; bypassing it");
                // What was written may be partial: start the sandbox copy from the cache
                // file's first `written` bytes only.
                let _ = f.set_len(written).await;
                return self
                    .divert(lease, file.take(), Some(chunk), opened, dest, target)
                    .await;
            }
            written += len;
        }
        match file {
            Some(mut f) => {
                if let Err(e) = f.flush().await {
                    tracing::warn!(error = %e, "writing the fetcher cache; bypassing it");
                    return self
                        .divert(lease, Some(f), None, opened, dest, target)
                        .await;
                }
                lease.ready(written);
                Ok(Filled::Cached)
            }
            None => self.divert(lease, None, None, opened, dest, target).await,
        }
    }

    /// Gives the cache entry up and sends the body to the sandbox: what is already in
    /// the cache file, then `pending`, then the rest of the stream.
    async fn divert(
        &self,
        lease: &Lease,
        partial: Option<tokio::fs::File>,
        pending: Option<Bytes>,
        opened: Opened,
        dest: &Path,
        target: &Arc<Target>,
    ) -> Result<Filled, String> {
        let cache_file = lease.bypass();
        let mut out = Self::create(target, dest).await?;
        if let Some(partial) = partial {
            drop(partial);
            if let Some(path) = &cache_file {
                let mut src = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| format!("cache file {}: {e}", path.display()))?;
                tokio::io::copy(&mut src, &mut out)
                    .await
                    .map_err(|e| format!("copying from the cache: {e}"))?;
            }
        }
        if let Some(path) = &cache_file
            && let Err(e) = tokio::fs::remove_file(path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cache file not removed");
        }
        if let Some(chunk) = pending {
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("writing into the sandbox: {e}"))?;
        }
        Self::stream(opened, out).await.map(Filled::Direct)
    }
}

/// Opens the regular file `path` below the allowed directory `dir` without following a
/// symlink at any step below it (a link planted there cannot reach other host files).
fn open_beneath(dir: &Path, path: &Path) -> Result<(std::fs::File, u64), String> {
    let rel = path
        .strip_prefix(dir)
        .map_err(|_| "not allowed".to_string())?;
    let comps: Vec<&[u8]> = rel.components().map(|c| c.as_os_str().as_bytes()).collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err("names no file".into());
    };
    let walk_error = |e: Errno| match e {
        Errno::ENOENT => "no such file".to_string(),
        Errno::ELOOP | Errno::ENOTDIR => {
            "goes through a symlink (or a non-directory), which the fetcher never follows"
                .to_string()
        }
        e => e.to_string(),
    };
    let mut cur: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .into();
    for comp in parents {
        cur = open_dir(cur.as_fd(), comp).map_err(walk_error)?;
    }
    let fd = openat(
        &cur,
        *last,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(walk_error)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    Ok((file, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves `body` to every connection without a Content-Length (the end is the close).
    fn unannounced(body: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                let _ = conn.write_all(&body);
            }
        });
        format!("http://{addr}/data.bin")
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_are_cached_while_they_fit_and_diverted_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(FetcherConfig {
            cache_dir: dir.path().join("fetch"),
            cache_size: 150 << 10,
            stall_timeout: Duration::from_secs(5),
            file_allowlist: Vec::new(),
            cas: HashMap::new(),
        })
        .unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let uri = |value: String| FetchUri {
            value,
            executable: false,
            extract: true,
            cache: true,
            output_file: None,
        };
        for (size, cached) in [(300usize << 10, 0u64), (100 << 10, 100 << 10)] {
            let sandbox = tempfile::tempdir().unwrap();
            let url = unannounced(vec![b'x'; size]);
            fetcher
                .fetch(&[uri(url)], sandbox.path(), (uid, gid))
                .await
                .unwrap();
            let got = std::fs::read(sandbox.path().join("data.bin")).unwrap();
            assert_eq!(got.len(), size);
            let cache = fetcher.cache.as_ref().unwrap();
            assert_eq!(cache.used(), cached, "{size} bytes");
            let files = std::fs::read_dir(dir.path().join("fetch")).unwrap().count();
            assert_eq!(files, usize::from(cached > 0));
        }
    }

    #[test]
    fn file_uris_stay_in_their_allowed_directory() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::write(allowed.join("sub/ok"), b"ok").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), allowed.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), allowed.join("dirlink")).unwrap();
        let (_, len) = open_beneath(&allowed, &allowed.join("sub/ok")).unwrap();
        assert_eq!(len, 2);
        for bad in ["link", "dirlink/secret", "sub", "missing"] {
            assert!(open_beneath(&allowed, &allowed.join(bad)).is_err(), "{bad}");
        }
        let fetcher = Fetcher::new(FetcherConfig {
            cache_dir: dir.path().join("fetch"),
            cache_size: 0,
            stall_timeout: Duration::from_secs(1),
            file_allowlist: vec![allowed.clone()],
            cas: HashMap::new(),
        })
        .unwrap();
        let uri = |v: &str| FetchUri {
            value: v.into(),
            executable: false,
            extract: true,
            cache: false,
            output_file: None,
        };
        assert!(
            fetcher
                .check(&[uri(&format!("{}/sub/ok", allowed.display()))])
                .is_ok()
        );
        let err = fetcher
            .check(&[uri(&format!("{}/secret", dir.path().display()))])
            .unwrap_err();
        assert!(
            err.to_string().contains("--fetcher_file_allowlist"),
            "{err}"
        );
    }
}
