//! The fetcher cache, as Mesos's `FetcherProcess` keeps it: files under
//! `--fetcher_cache_dir`, keyed by (user, URI), at most `--fetcher_cache_size` bytes.
//!
//! - The first request for a key creates a pending entry and downloads it; requests
//!   meanwhile wait for that download ("every URI is downloaded at most once per user
//!   while cached").
//! - Every request holds a reference ([`Lease`]) until its container's fetch run ends,
//!   success or failure; a referenced entry is never evicted.
//! - Space is reserved before bytes are written (the announced size first, more as a
//!   longer body arrives). To make room, unreferenced entries are evicted least recently
//!   used first, removed from the table before their file goes; when even that cannot
//!   make room, the download bypasses the cache.
//! - Nothing is persistent: the directory is emptied when the daemon starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::metrics::METRICS;

/// What became of a cache entry's download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pending,
    /// The file is complete in the cache.
    Ready,
    /// The cache could not hold it (no room, a cache I/O error, the downloader gone):
    /// each waiter fetches it directly, as Mesos falls back.
    Bypass,
    /// The source failed (a 404, a refused connection, a stall): every waiter fails too.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: u32,
    uri: String,
}

#[derive(Debug)]
struct Entry {
    serial: u64,
    path: PathBuf,
    /// Bytes reserved (pending) or held (ready).
    size: u64,
    refs: usize,
    last_used: u64,
    status: watch::Sender<Status>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry>,
    serial: u64,
    clock: u64,
    /// Bytes reserved or held by all entries.
    used: u64,
}

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
}

/// A request's reference to an entry; dropping it releases the reference (and, from the
/// downloader of a still pending entry, gives the entry up so that waiters bypass).
#[derive(Debug)]
pub struct Lease {
    cache: Arc<Cache>,
    key: Key,
    serial: u64,
    path: PathBuf,
    owner: bool,
}

/// What [`Cache::acquire`] found.
#[derive(Debug)]
pub enum Acquired {
    /// A new entry: this request downloads it.
    Download(Lease),
    /// An entry another request made; the receiver says when it is done.
    Wait(Lease, watch::Receiver<Status>),
}

/// Removes files the cache let go of, off the async runtime when there is one.
pub fn remove_files(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let work = move || {
        for p in paths {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "cache file not removed");
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(work);
        }
        Err(_) => work(),
    }
}

/// A cache file's name, Mesos's way: `c<serial>-<the name's last 20 characters>`, so
/// that the extension (what extraction goes by) stays.
fn file_name(serial: u64, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tail: String = clean
        .chars()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("c{serial}-{tail}")
}

impl Cache {
    /// The cache in `dir`, emptied first, as Mesos's fetcher does at agent start: nothing
    /// in it is known after a restart. Blocking.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Cache> {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    if entry.file_type()?.is_dir() {
                        std::fs::remove_dir_all(&path)?;
                    } else {
                        std::fs::remove_file(&path)?;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
            }
            Err(e) => return Err(e),
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        METRICS.fetcher_cache_bytes.store(0, Ordering::Relaxed);
        Ok(Cache {
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes reserved or held now.
    pub fn used(&self) -> u64 {
        self.state().used
    }

    /// Takes a reference to the entry of (`uid`, `uri`), creating it (to be downloaded
    /// by this caller, its file named after `name`) when there is none.
    pub fn acquire(self: &Arc<Self>, uid: u32, uri: &str, name: &str) -> Acquired {
        let key = Key {
            uid,
            uri: uri.to_string(),
        };
        let mut state = self.state();
        state.clock += 1;
        let clock = state.clock;
        if let Some(entry) = state.entries.get_mut(&key) {
            entry.refs += 1;
            entry.last_used = clock;
            METRICS.fetcher_cache_hits.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                cache: self.clone(),
                key,
                serial: entry.serial,
                path: entry.path.clone(),
                owner: false,
            };
            return Acquired::Wait(lease, entry.status.subscribe());
        }
        METRICS.fetcher_cache_misses.fetch_add(1, Ordering::Relaxed);
        state.serial += 1;
        let serial = state.serial;
        let path = self.dir.join(file_name(serial, name));
        let (status, _) = watch::channel(Status::Pending);
        state.entries.insert(
            key.clone(),
            Entry {
                serial,
                path: path.clone(),
                size: 0,
                refs: 1,
                last_used: clock,
                status,
            },
        );
        Acquired::Download(Lease {
            cache: self.clone(),
            key,
            serial,
            path,
            owner: true,
        })
    }
}

impl State {
    fn entry(&mut self, key: &Key, serial: u64) -> Option<&mut Entry> {
        self.entries.get_mut(key).filter(|e| e.serial == serial)
    }

    fn set_used(&mut self, used: u64) {
        self.used = used;
        METRICS.fetcher_cache_bytes.store(used, Ordering::Relaxed);
    }

    /// Takes the entry out of the table (it looks uncached from now on) and says why to
    /// its waiters; returns its file.
    fn drop_entry(&mut self, key: &Key, serial: u64, status: Status) -> Option<PathBuf> {
        self.entry(key, serial)?;
        let entry = self.entries.remove(key)?;
        let used = self.used.saturating_sub(entry.size);
        self.set_used(used);
        entry.status.send_replace(status);
        Some(entry.path)
    }
}

impl Lease {
    /// The entry's file in the cache.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reserves `more` bytes for this (pending) entry, evicting unreferenced entries,
    /// least recently used first, if that makes room. `Err` when nothing can: the
    /// entry must bypass. Either way, the files of evicted entries are returned, to be
    /// removed by the caller.
    pub fn reserve(&self, more: u64) -> Result<Vec<PathBuf>, Vec<PathBuf>> {
        let cache = &self.cache;
        let mut state = cache.state();
        if state.entry(&self.key, self.serial).is_none() {
            return Err(Vec::new());
        }
        let free = cache.capacity.saturating_sub(state.used);
        if more <= free {
            let used = state.used + more;
            state.set_used(used);
            if let Some(e) = state.entry(&self.key, self.serial) {
                e.size += more;
            }
            return Ok(Vec::new());
        }
        let mut victims: Vec<(u64, Key, u64)> = state
            .entries
            .iter()
            .filter(|(_, e)| e.refs == 0 && *e.status.borrow() == Status::Ready)
            .map(|(k, e)| (e.last_used, k.clone(), e.size))
            .collect();
        let evictable: u64 = victims.iter().map(|v| v.2).sum();
        // Evict only when that is enough: a cache emptied for nothing helps nobody.
        if free + evictable < more {
            return Err(Vec::new());
        }
        victims.sort_by_key(|v| v.0);
        let mut freed_files = Vec::new();
        for (_, key, _) in victims {
            if cache.capacity.saturating_sub(state.used) >= more {
                break;
            }
            if let Some(entry) = state.entries.remove(&key) {
                let used = state.used.saturating_sub(entry.size);
                state.set_used(used);
                METRICS
                    .fetcher_cache_evictions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(uri = %key.uri, uid = key.uid, bytes = entry.size, "fetcher cache eviction");
                freed_files.push(entry.path);
            }
        }
        let used = state.used + more;
        state.set_used(used);
        if let Some(e) = state.entry(&self.key, self.serial) {
            e.size += more;
        }
        Ok(freed_files)
    }

    /// The download is complete at `size` bytes: waiters may copy it. Reserved bytes
    /// beyond `size` (a body shorter than announced) are given back.
    pub fn ready(&self, size: u64) {
        let mut state = self.cache.state();
        let Some(entry) = state.entry(&self.key, self.serial) else {
            return;
        };
        let unused = entry.size.saturating_sub(size);
        entry.size = size.min(entry.size);
        entry.status.send_replace(Status::Ready);
        let used = state.used.saturating_sub(unused);
        state.set_used(used);
    }

    /// The cache gives this entry up (no room, a cache I/O error): waiters fetch
    /// directly; returns the file to remove.
    pub fn bypass(&self) -> Option<PathBuf> {
        self.cache
            .state()
            .drop_entry(&self.key, self.serial, Status::Bypass)
    }

    /// The source failed: every waiter fails the same way.
    pub fn fail(&self, reason: &str) -> Option<PathBuf> {
        self.cache
            .state()
            .drop_entry(&self.key, self.serial, Status::Failed(reason.to_string()))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.cache.state();
        state.clock += 1;
        let clock = state.clock;
        let Some(entry) = state.entry(&self.key, self.serial) else {
            return;
        };
        entry.refs = entry.refs.saturating_sub(1);
        entry.last_used = clock;
        // The downloader went away (its request was cancelled) before finishing.
        let abandoned = self.owner && *entry.status.borrow() == Status::Pending;
        if abandoned && let Some(path) = state.drop_entry(&self.key, self.serial, Status::Bypass) {
            drop(state);
            remove_files(vec![path]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: u64) -> (tempfile::TempDir, Arc<Cache>) {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(Cache::open(&dir.path().join("fetch"), capacity).unwrap());
        (dir, c)
    }

    fn download(c: &Arc<Cache>, uri: &str, size: u64) -> Result<Lease, ()> {
        let Acquired::Download(lease) = c.acquire(0, uri, uri) else {
            panic!("{uri} was cached");
        };
        match lease.reserve(size) {
            Ok(evicted) => {
                remove_files(evicted);
                std::fs::write(lease.path(), vec![0u8; size as usize]).unwrap();
                lease.ready(size);
                Ok(lease)
            }
            Err(_) => {
                lease.bypass();
                Err(())
            }
        }
    }

    #[test]
    fn opening_empties_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let fetch = dir.path().join("fetch");
        std::fs::create_dir_all(fetch.join("sub")).unwrap();
        std::fs::write(fetch.join("c1-old"), b"x").unwrap();
        Cache::open(&fetch, 10).unwrap();
        assert_eq!(std::fs::read_dir(&fetch).unwrap().count(), 0);
    }

    #[test]
    fn lru_eviction_spares_referenced_entries() {
        let (_d, c) = cache(250);
        drop(download(&c, "a", 100).unwrap());
        let b = download(&c, "b", 100).unwrap(); // held
        // Touch a: it becomes the most recently used.
        match c.acquire(0, "a", "a") {
            Acquired::Wait(lease, rx) => {
                assert_eq!(*rx.borrow(), Status::Ready);
                drop(lease);
            }
            Acquired::Download(_) => panic!("a was evicted"),
        }
        // c needs room: only a is unreferenced, so a goes although b is older.
        drop(download(&c, "c", 100).unwrap());
        assert!(matches!(c.acquire(0, "a", "a"), Acquired::Download(_)));
        assert!(matches!(c.acquire(0, "b", "b"), Acquired::Wait(..)));
        drop(b);
        // Larger than everything evictable: bypass, and nothing is evicted for it.
        let (_d, c) = cache(150);
        let a = download(&c, "a", 100).unwrap();
        assert!(download(&c, "big", 100).is_err());
        assert!(matches!(c.acquire(0, "a", "a"), Acquired::Wait(..)));
        drop(a);
        assert_eq!(c.used(), 100);
    }

    #[test]
    fn waiters_learn_the_outcome_and_keys_are_per_user() {
        let (_d, c) = cache(1000);
        let Acquired::Download(owner) = c.acquire(0, "u", "u") else {
            panic!()
        };
        let Acquired::Wait(waiter, rx) = c.acquire(0, "u", "u") else {
            panic!()
        };
        assert!(matches!(c.acquire(1000, "u", "u"), Acquired::Download(_)));
        owner.fail("HTTP 404");
        assert_eq!(*rx.borrow(), Status::Failed("HTTP 404".into()));
        drop(waiter);
        // The failed entry is gone: the next request downloads anew.
        let Acquired::Download(again) = c.acquire(0, "u", "u") else {
            panic!()
        };
        let Acquired::Wait(_w, rx) = c.acquire(0, "u", "u") else {
            panic!()
        };
        // A downloader that goes away leaves its waiters to fetch directly.
        drop(again);
        assert_eq!(*rx.borrow(), Status::Bypass);
    }

    #[test]
    fn short_bodies_give_back_their_reservation() {
        let (_d, c) = cache(1000);
        let Acquired::Download(lease) = c.acquire(0, "u", "u") else {
            panic!()
        };
        lease.reserve(600).unwrap();
        lease.ready(100);
        assert_eq!(c.used(), 100);
        assert_eq!(
            file_name(7, "a-very-long-file-name-of-an-archive.tar.gz"),
            "c7-of-an-archive.tar.gz"
        );
    }
}
