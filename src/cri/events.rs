//! GetContainerEvents: the containerizer's lifecycle transitions as kubelet's Evented
//! PLEG reads them, each with the pod's status and its containers' statuses as they are
//! when the transition is announced.
//!
//! One task converts each transition once, whatever the number of clients, and hands it
//! to every client's bounded queue. A client whose queue is full is cut off with an error
//! (kubelet then relists), never silently skipped past; the others are not held up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use k8s_cri::v1 as cri;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::containerizer::Containerizer;
use crate::containerizer::events::{Lifecycle, Transition};

/// Events one client may have queued (beyond what its connection buffers) before it is cut.
pub const CLIENT_QUEUE: usize = 256;

struct Client {
    tx: mpsc::Sender<cri::ContainerEventResponse>,
    cut: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct EventHub {
    clients: Mutex<Vec<Client>>,
    /// Clients cut off for falling behind, since start (verbose Status).
    cut_off: AtomicU64,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").finish_non_exhaustive()
    }
}

pub type EventStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
>;

impl EventHub {
    /// Starts the converting task on `containerizer`'s transitions.
    pub fn start(containerizer: Arc<dyn Containerizer>) -> Arc<EventHub> {
        let hub = Arc::new(EventHub::default());
        let mut rx = containerizer.events();
        let task_hub = hub.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        if task_hub.is_empty() {
                            continue;
                        }
                        // Statuses read exit records from disk: off the async threads.
                        let c = containerizer.clone();
                        match tokio::task::spawn_blocking(move || convert(c.as_ref(), &event)).await
                        {
                            Ok(response) => task_hub.publish(response),
                            Err(_) => task_hub.cut_all(),
                        }
                    }
                    // Transitions were lost: every client would miss some, so every
                    // client is cut and relists.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "container events fell behind");
                        task_hub.cut_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        hub
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_empty(&self) -> bool {
        self.clients().is_empty()
    }

    fn publish(&self, response: cri::ContainerEventResponse) {
        let mut clients = self.clients();
        clients.retain(|c| match c.tx.try_send(response.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                c.cut.store(true, Ordering::SeqCst);
                self.cut_off.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn cut_all(&self) {
        let mut clients = self.clients();
        for c in clients.iter() {
            c.cut.store(true, Ordering::SeqCst);
        }
        self.cut_off
            .fetch_add(clients.len() as u64, Ordering::Relaxed);
        clients.clear();
    }

    /// A new client: every transition from now on, then an error if it was cut off.
    pub fn subscribe(&self) -> EventStream {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let cut = Arc::new(AtomicBool::new(false));
        self.clients().push(Client {
            tx,
            cut: cut.clone(),
        });
        let stream = futures_util::stream::unfold(Some((rx, cut)), |state| async move {
            let (mut rx, cut) = state?;
            match rx.recv().await {
                Some(event) => Some((Ok(event), Some((rx, cut)))),
                None if cut.load(Ordering::SeqCst) => Some((
                    Err(Status::resource_exhausted(
                        "container events: this client fell behind and was cut off; relist",
                    )),
                    None,
                )),
                None => None,
            }
        });
        Box::pin(stream)
    }

    /// (clients now, clients cut off since start), for verbose Status.
    pub fn counts(&self) -> (usize, u64) {
        (self.clients().len(), self.cut_off.load(Ordering::Relaxed))
    }
}

fn convert(containerizer: &dyn Containerizer, event: &Lifecycle) -> cri::ContainerEventResponse {
    let container_event_type = match event.transition {
        Transition::Created => cri::ContainerEventType::ContainerCreatedEvent,
        Transition::Started => cri::ContainerEventType::ContainerStartedEvent,
        Transition::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        Transition::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    };
    // A deleted pod has no status left; its containers went before it.
    let pod_sandbox_status = containerizer
        .pod(&event.pod_id)
        .ok()
        .map(|p| super::status::pod_status(&p));
    cri::ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: container_event_type as i32,
        created_at: crate::containerizer::now_ns(),
        pod_sandbox_status,
        containers_statuses: super::status::container_statuses_of(containerizer, &event.pod_id),
    }
}
