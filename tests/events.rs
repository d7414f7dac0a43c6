//! GetContainerEvents through the socket, as kubelet's Evented PLEG reads them: every
//! transition once and in order for every client, with the pod's and its containers'
//! statuses; a client that stops reading is cut off while the others keep receiving.

mod common;

use std::time::Duration;

use common::{Env, container};
use k8s_cri::v1 as cri;
use tonic::Code;
use tonic::codec::Streaming;

const T: Duration = Duration::from_secs(20);

use cri::ContainerEventType::{
    ContainerCreatedEvent as Created, ContainerDeletedEvent as Deleted,
    ContainerStartedEvent as Started, ContainerStoppedEvent as Stopped,
};

async fn subscribe(env: &Env) -> Streaming<cri::ContainerEventResponse> {
    // A connection of its own: a stalled stream must not hold up another client's.
    let mut client = env.daemon.runtime_client().await.unwrap();
    client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Streaming<cri::ContainerEventResponse>) -> cri::ContainerEventResponse {
    tokio::time::timeout(T, stream.message())
        .await
        .expect("an event in time")
        .expect("no error")
        .expect("the stream goes on")
}

fn kind(e: &cri::ContainerEventResponse) -> cri::ContainerEventType {
    cri::ContainerEventType::try_from(e.container_event_type).unwrap()
}

fn state_of(e: &cri::ContainerEventResponse, id: &str) -> Option<cri::ContainerState> {
    e.containers_statuses
        .iter()
        .find(|s| s.id == id)
        .map(|s| cri::ContainerState::try_from(s.state).unwrap())
}

#[tokio::test]
#[ignore = "needs root"]
async fn two_clients_see_every_transition_once_in_order_with_statuses() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut a = subscribe(&env).await;
    let mut b = subscribe(&env).await;

    let pod = env.pod_config("events");
    let pod_id = env.run_pod(&pod).await;
    let sleeper = env
        .run(
            &pod_id,
            &pod,
            container("sleeper", &image, &["sleep", "1000"]),
        )
        .await;
    // Exits at once: its stop is seen by the exit watcher, perhaps before the start is
    // announced, and must still come after it.
    let quick = env
        .run(&pod_id, &pod, container("quick", &image, &["true"]))
        .await;
    let mut seen_a = vec![];
    let mut seen_b = vec![];
    for _ in 0..7 {
        seen_a.push(next(&mut a).await);
        seen_b.push(next(&mut b).await);
    }
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    for id in [&sleeper, &quick] {
        env.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    env.stop_remove_pod(&pod_id).await;
    for _ in 0..5 {
        seen_a.push(next(&mut a).await);
        seen_b.push(next(&mut b).await);
    }

    let expected = [
        (&pod_id, Created),
        (&pod_id, Started),
        (&sleeper, Created),
        (&sleeper, Started),
        (&quick, Created),
        (&quick, Started),
        (&quick, Stopped),
        (&sleeper, Stopped),
        (&sleeper, Deleted),
        (&quick, Deleted),
        (&pod_id, Stopped),
        (&pod_id, Deleted),
    ];
    for seen in [&seen_a, &seen_b] {
        let got: Vec<_> = seen.iter().map(|e| (&e.container_id, kind(e))).collect();
        let want: Vec<_> = expected.iter().map(|(id, k)| (*id, *k)).collect();
        assert_eq!(got, want);
        for e in seen.iter() {
            assert!(e.created_at > 0);
        }
    }
    // The statuses are the ones of the moment of each transition.
    let e = &seen_a;
    assert_eq!(
        e[0].pod_sandbox_status.as_ref().unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(e[0].pod_sandbox_status.as_ref().unwrap().id, pod_id);
    assert_eq!(
        state_of(&e[2], &sleeper),
        Some(cri::ContainerState::ContainerCreated)
    );
    assert_eq!(
        state_of(&e[3], &sleeper),
        Some(cri::ContainerState::ContainerRunning)
    );
    assert_eq!(
        state_of(&e[6], &quick),
        Some(cri::ContainerState::ContainerExited)
    );
    assert_eq!(
        state_of(&e[7], &sleeper),
        Some(cri::ContainerState::ContainerExited)
    );
    assert_eq!(state_of(&e[8], &sleeper), None, "gone once deleted");
    assert_eq!(
        e[10].pod_sandbox_status.as_ref().unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert!(e[11].pod_sandbox_status.is_none());

    // Nothing more: no transition was announced twice.
    let extra = tokio::time::timeout(Duration::from_millis(500), a.message()).await;
    assert!(extra.is_err(), "no further event: {extra:?}");
}

#[tokio::test]
#[ignore = "needs root"]
async fn pod_sandbox_status_lists_the_pods_containers() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("statuses");
    let pod_id = env.run_pod(&pod).await;
    let running = env
        .run(
            &pod_id,
            &pod,
            container("running", &image, &["sleep", "1000"]),
        )
        .await;
    let created = env
        .create(&pod_id, &pod, container("created", &image, &["true"]))
        .await
        .unwrap();
    let other_pod = env.pod_config("other");
    let other_id = env.run_pod(&other_pod).await;
    env.run(
        &other_id,
        &other_pod,
        container("elsewhere", &image, &["sleep", "1000"]),
    )
    .await;
    let status = env
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.timestamp > 0);
    let got: Vec<_> = status
        .containers_statuses
        .iter()
        .map(|s| (s.id.clone(), s.state))
        .collect();
    assert_eq!(
        got,
        [
            (running, cri::ContainerState::ContainerRunning as i32),
            (created, cri::ContainerState::ContainerCreated as i32)
        ]
    );
    env.stop_remove_pod(&pod_id).await;
    env.stop_remove_pod(&other_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_client_that_stops_reading_is_cut_off_and_the_others_keep_receiving() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut reader = subscribe(&env).await;
    let mut stalled = subscribe(&env).await;
    let pod = env.pod_config("slow-client");
    let pod_id = env.run_pod(&pod).await;
    // Big statuses (annotations ride along in every event) fill the stalled client's
    // connection buffers quickly; then its queue fills and it is cut.
    let annotations: std::collections::HashMap<String, String> =
        [("big".to_string(), "x".repeat(64 * 1024))].into();
    for i in 0..4 {
        let mut c = container(&format!("big{i}"), &image, &["sleep", "1000"]);
        c.annotations = annotations.clone();
        env.run(&pod_id, &pod, c).await;
    }
    let mut received = 2 + 4 * 2;
    for _ in 0..received {
        next(&mut reader).await;
    }
    let cycles = cri_mesos::cri::events::CLIENT_QUEUE / 3 + 30;
    for i in 0..cycles {
        let id = env
            .create(
                &pod_id,
                &pod,
                container(&format!("c{i}"), &image, &["true"]),
            )
            .await
            .unwrap();
        env.runtime
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
        // The reader keeps up. A created container is killed by its removal, so it ends
        // EXITED before it goes: created, stopped, deleted.
        for want in [Created, Stopped, Deleted] {
            assert_eq!(kind(&next(&mut reader).await), want);
            received += 1;
        }
    }
    // The stalled client gets what was buffered for it, then the error that tells it to
    // relist.
    let mut buffered = 0;
    let err = loop {
        match tokio::time::timeout(T, stalled.message()).await.unwrap() {
            Ok(Some(_)) => buffered += 1,
            Ok(None) => panic!("ended without an error after {buffered} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(buffered < received, "{buffered} of {received}");
    let info = env.runtime_info().await;
    let counts: serde_json::Value = serde_json::from_str(&info["containerEvents"]).unwrap();
    assert_eq!(counts["cutOff"], 1, "{counts}");
    assert_eq!(counts["clients"], 1, "{counts}");
    env.stop_remove_pod(&pod_id).await;
}
