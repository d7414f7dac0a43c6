//! Work that many callers may ask for at once, done once: the first caller starts it on
//! a detached task, later callers with the same key wait for the same result (Mesos's
//! fetcher-cache semantics). Detached, so a caller that gives up (a client deadline) never
//! cancels work half-way and the next caller reuses what was done.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

pub struct Inflight<T: Clone> {
    map: Mutex<HashMap<String, Shared<BoxFuture<'static, T>>>>,
}

impl<T: Clone> Default for Inflight<T> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
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
                Some(existing) => existing.clone(),
                None => {
                    let task = tokio::spawn(start());
                    let shared =
                        async move { task.await.unwrap_or_else(|e| panicked(e.to_string())) }
                            .boxed()
                            .shared();
                    map.insert(key.to_string(), shared.clone());
                    shared
                }
            }
        };
        let result = shared.await;
        // Finished entries go, so a later request (say, after RemoveImage) starts anew.
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, f| f.peek().is_none());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
