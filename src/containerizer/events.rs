//! Lifecycle transitions of pods and containers, for the CRI's GetContainerEvents.
//!
//! Every transition is announced once and in order per container, whoever notices it:
//! the exit of a container can be seen by the exit-file watcher before StartContainer
//! has announced the start (a command that exits at once), so a stop seen early is held
//! back until the start is out. A pod sandbox's own transitions use its id as the
//! container id, as containerd sends them.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// Raw transitions in flight to the CRI layer before it falls behind: it converts each at
/// once, so only a stalled process gets near this.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One transition: `container_id` equals `pod_id` for the sandbox's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub container_id: String,
    pub pod_id: String,
    pub transition: Transition,
}

/// Where a container is, as far as the events announced go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Started,
    Stopped,
}

#[derive(Debug)]
struct Known {
    pod_id: String,
    phase: Phase,
    /// Its exit was seen while its start was not announced yet.
    stopped_early: bool,
}

#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Lifecycle>,
    known: Mutex<HashMap<String, Known>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
            known: Mutex::default(),
        }
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<Lifecycle> {
        self.tx.subscribe()
    }

    /// Sent under the lock, so that concurrent announcers cannot reorder one container's
    /// transitions; a send never blocks (no subscriber is fine).
    fn send(&self, id: &str, pod_id: &str, transition: Transition) {
        let _ = self.tx.send(Lifecycle {
            container_id: id.to_string(),
            pod_id: pod_id.to_string(),
            transition,
        });
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a restart found: its phase is known again, nothing is announced (events are
    /// not replayed across restarts; clients relist).
    pub fn recovered(&self, id: &str, pod_id: &str, phase: Phase) {
        self.known().insert(
            id.to_string(),
            Known {
                pod_id: pod_id.to_string(),
                phase,
                stopped_early: false,
            },
        );
    }

    pub fn created(&self, id: &str, pod_id: &str) {
        let mut known = self.known();
        if known.contains_key(id) {
            return;
        }
        known.insert(
            id.to_string(),
            Known {
                pod_id: pod_id.to_string(),
                phase: Phase::Created,
                stopped_early: false,
            },
        );
        self.send(id, pod_id, Transition::Created);
    }

    pub fn started(&self, id: &str) {
        let mut known = self.known();
        let Some(k) = known.get_mut(id).filter(|k| k.phase == Phase::Created) else {
            return;
        };
        k.phase = Phase::Started;
        self.send(id, &k.pod_id, Transition::Started);
        if k.stopped_early {
            k.phase = Phase::Stopped;
            self.send(id, &k.pod_id, Transition::Stopped);
        }
    }

    /// Its process ended (exit file written), or a start that failed.
    pub fn stopped(&self, id: &str) {
        let mut known = self.known();
        let Some(k) = known.get_mut(id) else { return };
        match k.phase {
            Phase::Started => {
                k.phase = Phase::Stopped;
                self.send(id, &k.pod_id, Transition::Stopped);
            }
            Phase::Created => k.stopped_early = true,
            Phase::Stopped => {}
        }
    }

    /// A start that failed, or a kill before any start: the container is EXITED without
    /// having run.
    pub fn ended_unstarted(&self, id: &str) {
        let mut known = self.known();
        let Some(k) = known.get_mut(id).filter(|k| k.phase == Phase::Created) else {
            return;
        };
        k.phase = Phase::Stopped;
        self.send(id, &k.pod_id, Transition::Stopped);
    }

    pub fn deleted(&self, id: &str) {
        let mut known = self.known();
        if let Some(k) = known.remove(id) {
            self.send(id, &k.pod_id, Transition::Deleted);
        }
    }

    /// The phase announced last for `id`.
    pub fn phase(&self, id: &str) -> Option<Phase> {
        self.known().get(id).map(|k| k.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut broadcast::Receiver<Lifecycle>) -> Vec<(String, Transition)> {
        let mut out = vec![];
        while let Ok(e) = rx.try_recv() {
            out.push((e.container_id, e.transition));
        }
        out
    }

    #[test]
    fn each_transition_once_and_in_order() {
        let events = Events::default();
        let mut rx = events.subscribe();
        events.created("c", "p");
        events.created("c", "p");
        // The exit is seen before StartContainer announced the start.
        events.stopped("c");
        events.started("c");
        events.stopped("c");
        events.deleted("c");
        events.deleted("c");
        use Transition::*;
        assert_eq!(
            drain(&mut rx),
            [
                ("c".into(), Created),
                ("c".into(), Started),
                ("c".into(), Stopped),
                ("c".into(), Deleted)
            ]
        );
    }

    #[test]
    fn a_failed_start_stops_and_a_never_started_container_is_just_deleted() {
        let events = Events::default();
        let mut rx = events.subscribe();
        events.created("a", "p");
        events.ended_unstarted("a");
        events.started("a");
        events.created("b", "p");
        events.stopped("b");
        events.deleted("b");
        use Transition::*;
        assert_eq!(
            drain(&mut rx),
            [
                ("a".into(), Created),
                ("a".into(), Stopped),
                ("b".into(), Created),
                ("b".into(), Deleted)
            ]
        );
    }

    #[test]
    fn recovered_containers_continue_without_replay() {
        let events = Events::default();
        let mut rx = events.subscribe();
        events.recovered("r", "p", Phase::Started);
        events.stopped("r");
        events.deleted("r");
        // Unknown ids announce nothing.
        events.stopped("ghost");
        events.deleted("ghost");
        use Transition::*;
        assert_eq!(
            drain(&mut rx),
            [("r".into(), Stopped), ("r".into(), Deleted)]
        );
    }
}
