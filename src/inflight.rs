//! Work that many callers may ask for at once, done once: the first caller starts it on
//! a detached task, later callers with the same key wait for the same result (Mesos's
//! fetcher-cache semantics). Detached, so a caller that gives up (a client deadline) never
//! cancels work half-way and the next caller reuses what was done.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Entries<T> = Arc<Mutex<HashMap<String, (u64, Shared<BoxFuture<'static, T>>)>>>;

pub struct Inflight<T: Clone> {
    map: Entries<T>,
    /// Tells runs of one key apart, so a finished run removes its own entry only.
    generation: AtomicU64,
}

impl<T: Clone> Default for Inflight<T> {
    fn default() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
            generation: AtomicU64::new(0),
        }
    }
}

impl<T: Clone> std::fmt::Debug for Inflight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or_default();
        write!(f, "Inflight({n} in flight)")
    }
}

impl<T: Clone + Send + Sync + 'static> Inflight<T> {
    /// Waits for the work of `key`, starting it with `start` unless it is in flight.
    /// `panicked` turns a task that died into a `T`.
    pub async fn run<F>(&self, key: &str, start: impl FnOnce() -> F, panicked: fn(String) -> T) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        let shared = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key) {
                Some((_, existing)) => existing.clone(),
                None => {
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                    let work = start();
                    let entries = self.map.clone();
                    let owned_key = key.to_string();
                    // The task forgets its entry itself when done, even if every caller
                    // gave up meanwhile, so a later request (say, after RemoveImage)
                    // starts anew instead of getting an old answer.
                    let task = tokio::spawn(async move {
                        let out = work.await;
                        let mut map = entries.lock().unwrap_or_else(|e| e.into_inner());
                        if map.get(&owned_key).is_some_and(|(g, _)| *g == generation) {
                            map.remove(&owned_key);
                        }
                        out
                    });
                    let shared =
                        async move { task.await.unwrap_or_else(|e| panicked(e.to_string())) }
                            .boxed()
                            .shared();
                    map.insert(key.to_string(), (generation, shared.clone()));
                    shared
                }
            }
        };
        shared.await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_later_ones_start_anew() {
        let inflight: Arc<Inflight<usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |inflight: Arc<Inflight<usize>>, runs: Arc<AtomicUsize>| async move {
            inflight
                .run(
                    "k",
                    move || async move {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 1
                    },
                    |_| 0,
                )
                .await
        };
        let (a, b) = tokio::join!(
            call(inflight.clone(), runs.clone()),
            call(inflight.clone(), runs.clone())
        );
        assert_eq!((a, b), (1, 1));
        assert_eq!(call(inflight.clone(), runs.clone()).await, 2);
    }

    #[tokio::test]
    async fn a_run_every_caller_abandoned_is_forgotten_when_done() {
        let inflight: Arc<Inflight<()>> = Arc::default();
        let waiting = inflight.run(
            "k",
            || tokio::time::sleep(std::time::Duration::from_millis(30)),
            |_| (),
        );
        // The caller gives up (as a client past its deadline) before the work ends.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(5), waiting).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert_eq!(format!("{inflight:?}"), "Inflight(0 in flight)");
    }
}
