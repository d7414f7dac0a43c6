//! Mesos's fetcher through the CRI socket: URIs of the `cri-mesos.io/fetch` annotation
//! fetched into each container's sandbox at StartContainer, from an HTTP server run by
//! the test on 127.0.0.1 (it counts requests, can 404, hold a response back and stall),
//! and through the fetcher cache.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{Env, container, container_security, wait_for_log};
use k8s_cri::v1 as cri;
use tonic::Code;

const T: Duration = Duration::from_secs(30);
const FETCH: &str = "cri-mesos.io/fetch";

/// A small HTTP/1.1 server: `/files/NAME` serves a file (404 when unknown),
/// `/gate/NAME` holds it back until [`Server::open`], `/stall/NAME` sends the head and
/// a few bytes then nothing for 30 s. Its threads live as long as the test process.
#[derive(Clone)]
struct Server {
    addr: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap().to_string(),
            files: Arc::default(),
            counts: Arc::default(),
            gate: Arc::default(),
        };
        let s = server.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                std::thread::spawn(move || s.serve(conn));
            }
        });
        server
    }

    fn add(&self, name: &str, data: impl Into<Vec<u8>>) {
        self.files.lock().unwrap().insert(name.into(), data.into());
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn open(&self) {
        let (open, cv) = &*self.gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }

    fn serve(&self, mut conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) if header == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        *self.counts.lock().unwrap().entry(path.clone()).or_default() += 1;
        let (kind, name) = path[1..].split_once('/').unwrap_or(("", ""));
        let data = self.files.lock().unwrap().get(name).cloned();
        let Some(data) = data else {
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        };
        match kind {
            "gate" => {
                let (open, cv) = &*self.gate;
                let guard = open.lock().unwrap();
                let _unused = cv
                    .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
                    .unwrap();
            }
            "stall" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&data[..10]);
                let _ = conn.flush();
                // Longer than any stall timeout of these tests; the thread ends with it.
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            _ => {}
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            data.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&data);
    }
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names: the builder would refuse the hostile ones.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        builder.append(&h, *data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn uris(list: &[serde_json::Value]) -> HashMap<String, String> {
    HashMap::from([(
        FETCH.to_string(),
        serde_json::Value::from(list.to_vec()).to_string(),
    )])
}

fn fetching(
    name: &str,
    image: &str,
    list: &[serde_json::Value],
    cmd: &str,
) -> cri::ContainerConfig {
    let mut c = container(name, image, &["sh", "-c", cmd]);
    c.annotations = uris(list);
    c
}

async fn metric(env: &mut Env, name: &str) -> u64 {
    let address = env.runtime_info().await["httpAddress"].clone();
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn sandbox_of(env: &mut Env, id: &str) -> PathBuf {
    PathBuf::from(env.verbose_info(id).await["sandbox"].as_str().unwrap())
}

async fn exec_out(env: &mut Env, id: &str, cmd: &str) -> String {
    let r = env.exec(id, &["sh", "-c", cmd], 10).await.unwrap();
    assert_eq!(
        r.exit_code,
        0,
        "{cmd}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

async fn remove(env: &mut Env, id: &str) {
    env.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_tarball_is_extracted_and_a_script_made_executable_in_the_sandbox() {
    let server = Server::start();
    server.add(
        "app.tar.gz",
        tar_gz(&[("app/config.txt", b"hello-from-tar\n")]),
    );
    server.add("run", "#!/bin/sh\necho script-ran-as-$(id -u)\n");
    let host_files = tempfile::tempdir().unwrap();
    std::fs::write(host_files.path().join("notes.txt"), "host-notes\n").unwrap();
    let allow = format!("--fetcher_file_allowlist={}", host_files.path().display());
    let mut env = Env::start(&[allow.as_str()]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut pod = env.pod_config("fetch");
    // The pod's URIs reach each of its containers; the container adds its own.
    pod.annotations.extend(uris(&[
        serde_json::json!({"value": server.url("/files/app.tar.gz")}),
    ]));
    let pod_id = env.run_pod(&pod).await;
    let mut config = fetching(
        "app",
        &image,
        &[
            serde_json::json!({"value": server.url("/files/run"), "executable": true,
                               "output_file": "bin/run.sh"}),
            serde_json::json!({"value": format!("file://{}/notes.txt", host_files.path().display())}),
        ],
        "cat $MESOS_SANDBOX/app/config.txt $MESOS_SANDBOX/notes.txt; $MESOS_SANDBOX/bin/run.sh; \
         echo sandbox=$MESOS_SANDBOX; touch $MESOS_SANDBOX/written && echo writable; sleep 1000",
    );
    container_security(&mut config).run_as_user = Some(cri::Int64Value { value: 1000 });
    let id = env.run(&pod_id, &pod, config).await;
    let log = common::log_path(&env.status(&id).await);
    let text = wait_for_log(&log, T, |t| t.contains("writable")).await;
    for expected in [
        "hello-from-tar",
        "host-notes",
        "script-ran-as-1000",
        "sandbox=/mnt/mesos/sandbox",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let listing = exec_out(
        &mut env,
        &id,
        "ls -ln $MESOS_SANDBOX/bin/run.sh $MESOS_SANDBOX/app.tar.gz",
    )
    .await;
    assert!(listing.contains("-rwxr-xr-x"), "{listing}");
    assert!(
        listing.contains(" 1000 "),
        "owned by the container's user: {listing}"
    );
    // On the host, under the work dir, and gone with the container.
    let sandbox = sandbox_of(&mut env, &id).await;
    assert!(sandbox.starts_with(env.daemon.work_dir().join("sandboxes").join(&pod_id)));
    assert!(sandbox.join("app/config.txt").is_file());
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    remove(&mut env, &id).await;
    assert!(!sandbox.exists(), "the sandbox goes with the container");
    env.stop_remove_pod(&pod_id).await;
    assert!(
        !env.daemon
            .work_dir()
            .join("sandboxes")
            .join(&pod_id)
            .exists()
    );
    assert_eq!(server.count("/files/app.tar.gz"), 1);
}

#[tokio::test]
#[ignore = "needs root"]
async fn two_pods_fetching_one_uri_at_once_download_it_once() {
    let server = Server::start();
    server.add("shared.bin", vec![7u8; 300 * 1024]);
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let uri = serde_json::json!({"value": server.url("/gate/shared.bin"), "cache": true});
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let pod = env.pod_config(name);
        let pod_id = env.run_pod(&pod).await;
        let config = fetching("c", &image, std::slice::from_ref(&uri), "sleep 1000");
        ids.push(env.create(&pod_id, &pod, config).await.unwrap());
    }
    let hits_before = metric(&mut env, "cri_mesos_fetcher_cache_hits_total").await;
    let starts: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut client = env.runtime.clone();
            let id = id.clone();
            tokio::spawn(async move {
                client
                    .start_container(cri::StartContainerRequest { container_id: id })
                    .await
            })
        })
        .collect();
    // Both are in: one downloading (held at the server), the other waiting on it.
    let deadline = Instant::now() + T;
    while server.count("/gate/shared.bin") == 0
        || metric(&mut env, "cri_mesos_fetcher_cache_hits_total").await == hits_before
    {
        assert!(
            Instant::now() < deadline,
            "the starts never met in the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.open();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    assert_eq!(server.count("/gate/shared.bin"), 1, "one download for both");
    for id in &ids {
        let size = exec_out(&mut env, id, "wc -c < $MESOS_SANDBOX/shared.bin").await;
        assert_eq!(size.trim(), (300 * 1024).to_string());
    }
    assert!(metric(&mut env, "cri_mesos_fetcher_cache_bytes").await >= 300 * 1024);
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_small_cache_evicts_the_least_recently_used_and_never_a_file_in_use() {
    let server = Server::start();
    server.add("a.bin", vec![b'a'; 100 * 1024]);
    server.add("b.bin", vec![b'b'; 100 * 1024]);
    server.add("slow.txt", "slow\n");
    // Room for one of them, not two.
    let mut env = Env::start(&["--fetcher_cache_size=150KB"]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let cached = |name: &str| serde_json::json!({"value": server.url(&format!("/files/{name}")), "cache": true});
    let p1 = env.pod_config("lru1");
    let p1_id = env.run_pod(&p1).await;
    let p2 = env.pod_config("lru2");
    let p2_id = env.run_pod(&p2).await;

    env.run(
        &p1_id,
        &p1,
        fetching("c1", &image, &[cached("a.bin")], "sleep 1000"),
    )
    .await;
    env.run(
        &p1_id,
        &p1,
        fetching("c2", &image, &[cached("b.bin")], "sleep 1000"),
    )
    .await;
    assert_eq!(
        metric(&mut env, "cri_mesos_fetcher_cache_evictions_total").await,
        1
    );
    // a was the least recently used: evicted for b, so it is downloaded again (and b
    // goes for it).
    env.run(
        &p1_id,
        &p1,
        fetching("c3", &image, &[cached("a.bin")], "sleep 1000"),
    )
    .await;
    assert_eq!(server.count("/files/a.bin"), 2);
    assert_eq!(
        metric(&mut env, "cri_mesos_fetcher_cache_evictions_total").await,
        2
    );

    // c4 holds a (a hit) while its second URI is held at the server.
    let c4 = env
        .create(
            &p1_id,
            &p1,
            fetching(
                "c4",
                &image,
                &[
                    cached("a.bin"),
                    serde_json::json!({"value": server.url("/gate/slow.txt")}),
                ],
                "sleep 1000",
            ),
        )
        .await
        .unwrap();
    let mut client = env.runtime.clone();
    let c4_start = {
        let id = c4.clone();
        tokio::spawn(async move {
            client
                .start_container(cri::StartContainerRequest { container_id: id })
                .await
        })
    };
    let deadline = Instant::now() + T;
    while server.count("/gate/slow.txt") == 0 {
        assert!(Instant::now() < deadline, "c4 never got to its second URI");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // b needs a's room, but a is in use: b bypasses the cache, and c5 still gets it.
    let c5 = env
        .run(
            &p2_id,
            &p2,
            fetching("c5", &image, &[cached("b.bin")], "sleep 1000"),
        )
        .await;
    assert_eq!(
        exec_out(&mut env, &c5, "head -c 3 $MESOS_SANDBOX/b.bin").await,
        "bbb"
    );
    assert_eq!(server.count("/files/b.bin"), 2);
    assert_eq!(
        metric(&mut env, "cri_mesos_fetcher_cache_evictions_total").await,
        2
    );
    server.open();
    c4_start.await.unwrap().unwrap();
    assert_eq!(
        server.count("/files/a.bin"),
        2,
        "c4 was served from the cache"
    );
    // a is still there, b never got in.
    env.run(
        &p2_id,
        &p2,
        fetching(
            "c6",
            &image,
            &[cached("a.bin"), cached("b.bin")],
            "sleep 1000",
        ),
    )
    .await;
    assert_eq!(server.count("/files/a.bin"), 2);
    assert_eq!(server.count("/files/b.bin"), 3);
    assert!(metric(&mut env, "cri_mesos_fetcher_cache_bytes").await <= 150 * 1024);
}

/// The start fails naming the URI; the container is EXITED with a start error, its
/// process is gone, its sandbox empty, and the cache holds no more than `ok.txt` (3
/// bytes, fetched before the failing URI): nothing stays reserved for the failure.
async fn assert_fails(
    env: &mut Env,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    name: &str,
    list: &[serde_json::Value],
    needles: &[&str],
) {
    let image = env.images.busybox.reference();
    let id = env
        .create(
            pod_id,
            pod,
            fetching(name, &image, list, "echo ran; sleep 1000"),
        )
        .await
        .unwrap();
    let pid = env.verbose_info(&id).await["pid"].as_i64().unwrap() as i32;
    let err = env.start_container(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for needle in needles {
        assert!(
            err.message().contains(needle),
            "{needle:?} not in {:?}",
            err.message()
        );
    }
    let status = env.status(&id).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.reason, "StartError");
    assert!(status.message.contains(needles[0]), "{}", status.message);
    let deadline = Instant::now() + T;
    while common::process_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the blocked process {pid} was not killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sandbox = sandbox_of(env, &id).await;
    let left: Vec<_> = std::fs::read_dir(&sandbox).unwrap().collect();
    assert!(left.is_empty(), "{name}: the sandbox still has {left:?}");
    assert!(
        !std::fs::read_to_string(common::log_path(&status))
            .unwrap_or_default()
            .contains("ran")
    );
    assert_eq!(
        metric(env, "cri_mesos_fetcher_cache_bytes").await,
        3,
        "{name}"
    );
    remove(env, &id).await;
    assert!(!sandbox.exists());
}

#[tokio::test]
#[ignore = "needs root"]
async fn failed_fetches_fail_start_container_naming_the_uri_and_leave_nothing() {
    let server = Server::start();
    server.add("ok.txt", "ok\n");
    server.add("big.bin", vec![0u8; 64 * 1024]);
    server.add(
        "evil.tar.gz",
        tar_gz(&[("fine.txt", b"fine"), ("../../escaped", b"gotcha")]),
    );
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/files/x.bin", l.local_addr().unwrap())
    };
    let mut env = Env::start(&["--fetcher_stall_timeout=2secs"]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("fails");
    let pod_id = env.run_pod(&pod).await;
    let ok = serde_json::json!({"value": server.url("/files/ok.txt"), "cache": true});
    let missing = server.url("/files/missing.tar.gz");
    assert_fails(
        &mut env,
        &pod_id,
        &pod,
        "missing",
        &[
            ok.clone(),
            serde_json::json!({"value": missing, "cache": true}),
        ],
        &[missing.as_str(), "404"],
    )
    .await;
    let stall = server.url("/stall/big.bin");
    assert_fails(
        &mut env,
        &pod_id,
        &pod,
        "stalled",
        &[
            ok.clone(),
            serde_json::json!({"value": stall, "cache": true}),
        ],
        &[stall.as_str(), "stalled", "--fetcher_stall_timeout"],
    )
    .await;
    assert_fails(
        &mut env,
        &pod_id,
        &pod,
        "refused",
        &[serde_json::json!({"value": refused})],
        &[refused.as_str(), "onnect"],
    )
    .await;
    let evil = server.url("/files/evil.tar.gz");
    assert_fails(
        &mut env,
        &pod_id,
        &pod,
        "evil",
        &[serde_json::json!({"value": evil})],
        &[evil.as_str(), "../../escaped", "refused"],
    )
    .await;
    let sandboxes = env.daemon.work_dir().join("sandboxes");
    assert!(
        !sandboxes.join("escaped").exists() && !sandboxes.join(&pod_id).join("escaped").exists()
    );
    // ok.txt was fetched (and cached) once for each run and released: a cache hit.
    assert_eq!(server.count("/files/ok.txt"), 1);
}

#[tokio::test]
#[ignore = "needs root"]
async fn malformed_or_forbidden_uris_are_refused_at_create_naming_the_annotation() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let mut bad_pod = env.pod_config("badpod");
    bad_pod.annotations.insert(FETCH.into(), "{not json".into());
    let err = env
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad_pod),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("config.annotations[cri-mesos.io/fetch]"),
        "{}",
        err.message()
    );

    let pod = env.pod_config("refusals");
    let pod_id = env.run_pod(&pod).await;
    for (i, (value, needle)) in [
        (r#"[{"value": "http://h/x", "extract": "yes"}]"#, "extract"),
        (r#"[{"value": "s3://bucket/x"}]"#, "scheme"),
        (
            r#"[{"value": "http://h/x", "output_file": "../../x"}]"#,
            "'..'",
        ),
        (r#"[{"value": "/etc/shadow"}]"#, "--fetcher_file_allowlist"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = container(&format!("c{i}"), &image, &["true"]);
        c.annotations.insert(FETCH.into(), value.into());
        let err = env.create(&pod_id, &pod, c).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{value}: {err:?}");
        assert!(
            err.message()
                .contains("config.annotations[cri-mesos.io/fetch]")
                && err.message().contains(needle),
            "{value}: {}",
            err.message()
        );
    }
    assert!(env.containers().await.is_empty());
    assert_eq!(
        std::fs::read_dir(env.daemon.work_dir().join("meta/containers"))
            .unwrap()
            .count(),
        0
    );
}
