//! Exec, Attach and PortForward through the CRI socket and the streaming server, with
//! a SPDY client written here (tests/common/spdy.rs) against real containers.

mod common;

use std::time::{Duration, Instant};

use common::spdy::{self, Collected};
use common::{Env, container};
use k8s_cri::v1 as cri;
use tonic::Code;

const V4: &str = "v4.channel.k8s.io";

async fn exec_url(env: &mut Env, req: cri::ExecRequest) -> Result<String, tonic::Status> {
    env.runtime.exec(req).await.map(|r| r.into_inner().url)
}

fn exec_req(
    id: &str,
    cmd: &[&str],
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    }
}

/// Opens the v4 streams kubectl opens (error first), returning their ids:
/// [error, stdin, stdout, stderr, resize] (0 when not opened).
async fn open_exec_streams(
    w: &mut spdy::Writer,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> [u32; 5] {
    let mut ids = [0; 5];
    ids[0] = w.open(&[("streamtype", "error")]).await;
    if stdin {
        ids[1] = w.open(&[("streamtype", "stdin")]).await;
    }
    if stdout {
        ids[2] = w.open(&[("streamtype", "stdout")]).await;
    }
    if stderr {
        ids[3] = w.open(&[("streamtype", "stderr")]).await;
    }
    if tty {
        ids[4] = w.open(&[("streamtype", "resize")]).await;
    }
    ids
}

fn status_of(c: &Collected, error_id: u32) -> serde_json::Value {
    serde_json::from_slice(c.data.get(&error_id).expect("a status on the error stream"))
        .expect("JSON status")
}

/// One sleeping container and its pod.
async fn setup(env: &mut Env, name: &str) -> (String, String, cri::PodSandboxConfig) {
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config(name);
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            container("main", &image, &["sleep", "100000"]),
        )
        .await;
    (pod_id, id, pod)
}

#[tokio::test]
#[ignore = "needs root"]
async fn exec_echo_exit_codes_big_stdin_and_single_use_tokens() {
    let mut env = Env::start(&[]).await;
    let (pod_id, id, _) = setup(&mut env, "exec").await;

    // echo: stdout, and Success on the error stream.
    let url = exec_url(
        &mut env,
        exec_req(&id, &["echo", "hello"], false, true, true, false),
    )
    .await
    .unwrap();
    let (mut w, mut r, proto) = spdy::upgrade(&url, &[V4, "v3.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto.as_deref(), Some(V4));
    let ids = open_exec_streams(&mut w, false, true, true, false).await;
    let c = r.collect().await;
    assert_eq!(c.text(ids[2]), "hello\n");
    assert_eq!(c.text(ids[3]), "");
    assert_eq!(status_of(&c, ids[0])["status"], "Success");
    assert!(c.fin.contains(&ids[2]) && c.goaway, "{c:?}");

    // The same token again, and one never issued: 404.
    let (status, _) = spdy::upgrade(&url, &[V4])
        .await
        .err()
        .expect("reused token refused");
    assert_eq!(status, 404);
    let bogus = format!(
        "{}/exec/AAAAAAAAAAAAAAAAAAAAAA",
        url.split("/exec/").next().unwrap()
    );
    assert_eq!(spdy::upgrade(&bogus, &[V4]).await.err().unwrap().0, 404);

    // A non-zero exit code, stdout and stderr kept apart.
    let url = exec_url(
        &mut env,
        exec_req(
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            true,
            true,
            false,
        ),
    )
    .await
    .unwrap();
    let (mut w, mut r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    let ids = open_exec_streams(&mut w, false, true, true, false).await;
    let c = r.collect().await;
    assert_eq!(
        (c.text(ids[2]).as_str(), c.text(ids[3]).as_str()),
        ("out\n", "err\n")
    );
    let st = status_of(&c, ids[0]);
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "3", "{st}");

    // An unknown command: a failure status naming it.
    let url = exec_url(
        &mut env,
        exec_req(&id, &["no-such-cmd"], false, true, true, false),
    )
    .await
    .unwrap();
    let (mut w, mut r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    let ids = open_exec_streams(&mut w, false, true, true, false).await;
    let c = r.collect().await;
    let st = status_of(&c, ids[0]);
    assert_eq!(st["status"], "Failure");
    assert!(
        st["message"].as_str().unwrap().contains("no-such-cmd"),
        "{st}"
    );

    // cat: 10 MiB through stdin come back intact (no WINDOW_UPDATE is ever sent).
    let url = exec_url(&mut env, exec_req(&id, &["cat"], true, true, false, false))
        .await
        .unwrap();
    let (mut w, mut r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    let ids = open_exec_streams(&mut w, true, true, false, false).await;
    let payload: Vec<u8> = (0..10u32 << 20).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(32 << 10) {
            w.data(ids[1], chunk, false).await;
        }
        w.data(ids[1], &[], true).await;
        w
    });
    let c = r.collect().await;
    let _w = writer.await.unwrap();
    let got = c.data.get(&ids[2]).cloned().unwrap_or_default();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "stdout differs from stdin");
    assert_eq!(status_of(&c, ids[0])["status"], "Success");

    // Older protocols: v2 has no resize and no JSON status.
    let url = exec_url(
        &mut env,
        exec_req(&id, &["sh", "-c", "exit 2"], false, true, false, false),
    )
    .await
    .unwrap();
    let (mut w, mut r, proto) = spdy::upgrade(&url, &["v2.channel.k8s.io"]).await.unwrap();
    assert_eq!(proto.as_deref(), Some("v2.channel.k8s.io"));
    let ids = open_exec_streams(&mut w, false, true, false, false).await;
    let c = r.collect().await;
    assert!(c.text(ids[0]).contains("exit code"), "{c:?}");

    // An unknown subprotocol is refused.
    let url = exec_url(
        &mut env,
        exec_req(&id, &["true"], false, true, false, false),
    )
    .await
    .unwrap();
    assert_eq!(
        spdy::upgrade(&url, &["v9.channel.k8s.io"])
            .await
            .err()
            .unwrap()
            .0,
        403
    );

    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn exec_requests_are_validated() {
    let mut env = Env::start(&[]).await;
    let (pod_id, id, pod) = setup(&mut env, "validate").await;
    let cases = [
        (
            exec_req(&id, &["true"], false, false, false, false),
            Code::InvalidArgument,
            "stdin",
        ),
        (
            exec_req(&id, &["true"], false, true, true, true),
            Code::InvalidArgument,
            "stderr",
        ),
        (
            exec_req(&id, &[], false, true, false, false),
            Code::InvalidArgument,
            "cmd",
        ),
        (
            exec_req("", &["true"], false, true, false, false),
            Code::InvalidArgument,
            "container_id",
        ),
        (
            exec_req("nope", &["true"], false, true, false, false),
            Code::NotFound,
            "nope",
        ),
    ];
    for (req, code, word) in cases {
        let err = exec_url(&mut env, req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(word), "{err:?}");
    }
    // A container that is not running.
    let image = env.images.busybox.reference();
    let done = env
        .run(&pod_id, &pod, container("done", &image, &["true"]))
        .await;
    env.wait_exited(&done, Duration::from_secs(20)).await;
    let err = exec_url(
        &mut env,
        exec_req(&done, &["true"], false, true, false, false),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = env
        .runtime
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: false,
            tty: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = env
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = env
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![70000],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Verbose Status names the streaming server's bound address.
    let info = env
        .runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner()
        .info;
    let streaming: serde_json::Value = serde_json::from_str(&info["streaming"]).unwrap();
    let addr: std::net::SocketAddr = streaming["address"].as_str().unwrap().parse().unwrap();
    assert_ne!(addr.port(), 0);
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn exec_with_a_tty_sees_its_resize() {
    let mut env = Env::start(&[]).await;
    let (pod_id, id, _) = setup(&mut env, "tty").await;
    // Prints the size once it is the one sent (a read per line from the client), then
    // exits 5: the tty session reports its exit code too.
    let script = "while :; do s=$(stty size); [ \"$s\" = \"45 123\" ] && break; read x; done; echo size=$s; exit 5";
    let url = exec_url(
        &mut env,
        exec_req(&id, &["sh", "-c", script], true, true, false, true),
    )
    .await
    .unwrap();
    let (mut w, mut r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    let ids = open_exec_streams(&mut w, true, true, false, true).await;
    w.data(ids[4], br#"{"Width":123,"Height":45}"#, false).await;
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = Collected::default();
    while !out.contains("size=45 123") {
        assert!(Instant::now() < deadline, "no size=45 123 in {out:?}");
        w.data(ids[1], b"\n", false).await;
        c = r
            .collect_until(|c| {
                String::from_utf8_lossy(c.data.get(&ids[2]).map(|v| &v[..]).unwrap_or(&[]))
                    .contains('\n')
            })
            .await;
        out.push_str(&c.text(ids[2]));
    }
    let rest = r.collect().await;
    let mut merged = c;
    for (k, v) in rest.data {
        merged.data.entry(k).or_default().extend(v);
    }
    let st = status_of(&merged, ids[0]);
    assert_eq!(st["details"]["causes"][0]["message"], "5", "{st}");
    env.stop_remove_pod(&pod_id).await;
}

/// Pids of processes whose command line is exactly `cmd` inside the container.
async fn pids_of(env: &mut Env, id: &str, cmd: &str) -> Vec<String> {
    let ps = env.exec(id, &["ps", "-o", "pid,args"], 10).await.unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.trim_start().split_once(' ').map(|(_, a)| a.trim()) == Some(cmd))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_vanished_client_or_garbage_ends_its_session_only() {
    let mut env = Env::start(&[]).await;
    let (pod_id, id, _) = setup(&mut env, "vanish").await;
    let daemon = env.daemon.pid().unwrap() as i32;
    let supervisor = supervisor_pid(&pod_id);
    let fds_before = (fd_count(daemon), fd_count(supervisor));

    // A long-lived cat session stays usable through everything below.
    let url = exec_url(&mut env, exec_req(&id, &["cat"], true, true, false, false))
        .await
        .unwrap();
    let (mut cat_w, mut cat_r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    let cat = open_exec_streams(&mut cat_w, true, true, false, false).await;

    // A session whose client disappears: its process is killed.
    let url = exec_url(
        &mut env,
        exec_req(&id, &["sleep", "4242"], false, true, false, false),
    )
    .await
    .unwrap();
    let (mut w, r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    open_exec_streams(&mut w, false, true, false, false).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids_of(&mut env, &id, "sleep 4242").await.is_empty() {
        assert!(Instant::now() < deadline, "sleep 4242 never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((w, r));
    while !pids_of(&mut env, &id, "sleep 4242").await.is_empty() {
        assert!(Instant::now() < deadline, "sleep 4242 survived its client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Garbage: a frame of SPDY version 2, then bytes that are not SPDY at all. The
    // connection ends with GOAWAY; the server keeps serving.
    for junk in [
        &[0x80u8, 2, 0, 1, 0, 0, 0, 0][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let url = exec_url(
            &mut env,
            exec_req(&id, &["sleep", "4343"], false, true, false, false),
        )
        .await
        .unwrap();
        let (mut w, mut r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
        w.raw(junk).await;
        let c = r.collect().await;
        assert!(c.goaway, "{c:?}");
    }
    // DATA on a stream that was never opened: that stream is reset, the session goes on.
    cat_w.data(99, b"stray", false).await;
    cat_w.data(cat[1], b"still here\n", true).await;
    let c = cat_r.collect().await;
    assert!(c.resets.iter().any(|(s, _)| *s == 99), "{c:?}");
    assert_eq!(c.text(cat[2]), "still here\n");
    assert_eq!(status_of(&c, cat[0])["status"], "Success");
    assert!(pids_of(&mut env, &id, "sleep 4343").await.is_empty());
    // Every session is over: the daemon and the supervisor hold no more descriptors
    // than before the first one.
    drop((cat_w, cat_r));
    let deadline = Instant::now() + Duration::from_secs(20);
    while (fd_count(daemon), fd_count(supervisor)) > fds_before {
        assert!(
            Instant::now() < deadline,
            "descriptors leaked: {fds_before:?} -> {:?}",
            (fd_count(daemon), fd_count(supervisor))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.stop_remove_pod(&pod_id).await;
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The host pid of a pod's supervisor (its command line names the pod).
fn supervisor_pid(pod_id: &str) -> i32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("cri-mesos-supervisor") && cmd.contains(pod_id) {
            // The first one: the pod's pid-namespace holder is its child.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            let parent =
                std::fs::read(format!("/proc/{}/cmdline", ppid.unwrap_or("0"))).unwrap_or_default();
            if !String::from_utf8_lossy(&parent).contains("cri-mesos-supervisor") {
                return pid;
            }
        }
    }
    panic!("no supervisor for pod {pod_id}");
}

#[tokio::test]
#[ignore = "needs root"]
async fn an_idle_session_is_closed_and_its_process_killed() {
    let mut env = Env::start(&["--streaming_idle_timeout=1secs"]).await;
    let (pod_id, id, _) = setup(&mut env, "idle").await;
    let url = exec_url(
        &mut env,
        exec_req(&id, &["sleep", "4545"], false, true, false, false),
    )
    .await
    .unwrap();
    let (mut w, mut r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    open_exec_streams(&mut w, false, true, false, false).await;
    // Nothing is sent either way: the server ends the connection.
    let c = r.collect().await;
    assert!(c.goaway, "{c:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pids_of(&mut env, &id, "sleep 4545").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "sleep 4545 survived its idle session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.stop_remove_pod(&pod_id).await;
}

/// One forwarded connection over an open port-forward session: sends `msg`, half-closes,
/// returns what came back on the data stream and the error stream.
async fn forward_once(
    w: &mut spdy::Writer,
    r: &mut spdy::Reader,
    port: u16,
    request: u32,
    msg: &[u8],
) -> (Vec<u8>, String) {
    let port = port.to_string();
    let request = request.to_string();
    let error = w
        .open(&[
            ("streamtype", "error"),
            ("port", &port),
            ("requestid", &request),
        ])
        .await;
    let data = w
        .open(&[
            ("streamtype", "data"),
            ("port", &port),
            ("requestid", &request),
        ])
        .await;
    w.data(data, msg, true).await;
    let c = r
        .collect_until(|c| c.fin.contains(&data) && c.fin.contains(&error))
        .await;
    (
        c.data.get(&data).cloned().unwrap_or_default(),
        c.text(error),
    )
}

async fn port_forward_url(env: &mut Env, pod_id: &str) -> String {
    env.runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// Port-forwards to an `nc -ll -e cat` echo server on `port` in the pod: both
/// directions, several connections at once on one session, and a port nobody listens on.
async fn check_port_forward(env: &mut Env, pod_id: &str, port: u16) {
    let url = port_forward_url(env, pod_id).await;
    let (mut w, mut r, proto) = spdy::upgrade(&url, &["portforward.k8s.io"]).await.unwrap();
    assert_eq!(proto.as_deref(), Some("portforward.k8s.io"));
    // The server may still be starting: connection refused shows on the error stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut request = 0;
    loop {
        let (got, err) = forward_once(&mut w, &mut r, port, request, b"ping\n").await;
        request += 1;
        if err.is_empty() {
            assert_eq!(got, b"ping\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "echo server never answered: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two connections open at once, answered independently.
    let p = port.to_string();
    let mut pairs = Vec::new();
    for n in [request, request + 1] {
        let rid = n.to_string();
        let e = w
            .open(&[("streamtype", "error"), ("port", &p), ("requestid", &rid)])
            .await;
        let d = w
            .open(&[("streamtype", "data"), ("port", &p), ("requestid", &rid)])
            .await;
        pairs.push((e, d));
    }
    w.data(pairs[1].1, b"second\n", true).await;
    w.data(pairs[0].1, b"first\n", true).await;
    let c = r
        .collect_until(|c| {
            pairs
                .iter()
                .all(|(e, d)| c.fin.contains(e) && c.fin.contains(d))
        })
        .await;
    assert_eq!(c.text(pairs[0].1), "first\n");
    assert_eq!(c.text(pairs[1].1), "second\n");
    // Nothing listens on port+1: the error stream says so, the session goes on.
    let (_, err) = forward_once(&mut w, &mut r, port + 1, request + 2, b"x").await;
    assert!(err.contains(&format!("127.0.0.1:{}", port + 1)), "{err}");
    let (got, err) = forward_once(&mut w, &mut r, port, request + 3, b"again\n").await;
    assert_eq!((got.as_slice(), err.as_str()), (&b"again\n"[..], ""));
}

#[tokio::test]
#[ignore = "needs root"]
async fn port_forward_reaches_the_pod_network_and_a_host_network_pod() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("pf");
    let pod_id = env.run_pod(&pod).await;
    env.run(
        &pod_id,
        &pod,
        container("echo", &image, &["nc", "-ll", "-p", "8080", "-e", "cat"]),
    )
    .await;
    check_port_forward(&mut env, &pod_id, 8080).await;

    let mut host = env.pod_config("pf-host");
    common::pod_security(&mut host).namespace_options = Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..Default::default()
    });
    let host_id = env.run_pod(&host).await;
    // A port unlikely to be taken on the host, and not the same for parallel runs.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let p = port.to_string();
    env.run(
        &host_id,
        &host,
        container("echo", &image, &["nc", "-ll", "-p", &p, "-e", "cat"]),
    )
    .await;
    check_port_forward(&mut env, &host_id, port).await;
    env.stop_remove_pod(&host_id).await;
    env.stop_remove_pod(&pod_id).await;
}

async fn attach_url(env: &mut Env, id: &str, stdin: bool, stderr: bool) -> String {
    env.runtime
        .attach(cri::AttachRequest {
            container_id: id.into(),
            stdin,
            tty: false,
            stdout: true,
            stderr,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// Reads until `stream` has received text containing `want`.
async fn read_until_text(r: &mut spdy::Reader, stream: u32, want: &str) -> Collected {
    r.collect_until(|c| {
        String::from_utf8_lossy(c.data.get(&stream).map(|v| &v[..]).unwrap_or(&[])).contains(want)
    })
    .await
}

#[tokio::test]
#[ignore = "needs root"]
async fn attach_is_live_with_stdin_and_stdin_once() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("attach");
    let pod_id = env.run_pod(&pod).await;

    // A container printing a line a second: two attach clients see it live, without
    // stdin (the container has none).
    let ticker = env
        .run(
            &pod_id,
            &pod,
            container(
                "ticker",
                &image,
                &[
                    "sh",
                    "-c",
                    "i=0; while :; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 1; done",
                ],
            ),
        )
        .await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let url = attach_url(&mut env, &ticker, false, true).await;
        let (mut w, r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
        let ids = open_exec_streams(&mut w, false, true, true, false).await;
        clients.push((w, r, ids));
    }
    for (_, r, ids) in &mut clients {
        let c = read_until_text(r, ids[2], "tick").await;
        assert!(c.text(ids[2]).starts_with("tick "), "{c:?}");
        let c = read_until_text(r, ids[3], "tock").await;
        assert!(c.text(ids[3]).contains("tock "), "{c:?}");
    }
    // One client leaves; the other still gets output.
    let (w, r, _) = clients.remove(0);
    drop((w, r));
    let (_, r, ids) = &mut clients[0];
    let c = read_until_text(r, ids[2], "\n").await;
    assert!(c.text(ids[2]).contains("tick"), "{c:?}");

    // A stdin_once container echoing its stdin: the attach's input reaches it, and the
    // end of that input is its EOF (it exits; the session ends with Success).
    let mut cfg = container(
        "echo",
        &image,
        &["sh", "-c", "while read l; do echo got $l; done; echo bye"],
    );
    cfg.stdin = true;
    cfg.stdin_once = true;
    let echo = env.run(&pod_id, &pod, cfg).await;
    let url = attach_url(&mut env, &echo, true, true).await;
    let (mut w, mut r, _) = spdy::upgrade(&url, &[V4]).await.unwrap();
    let ids = open_exec_streams(&mut w, true, true, true, false).await;
    w.data(ids[1], b"one\n", false).await;
    let c = read_until_text(&mut r, ids[2], "got one").await;
    assert_eq!(c.text(ids[2]), "got one\n");
    w.data(ids[1], b"two\n", true).await;
    let c = r.collect().await;
    assert_eq!(c.text(ids[2]), "got two\nbye\n");
    assert_eq!(status_of(&c, ids[0])["status"], "Success");
    let st = env.wait_exited(&echo, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0);
    // The log has everything too: the fan-out never took output from it.
    let log = common::log_path(&env.status(&ticker).await);
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("stdout F tick 0")
    );
    env.stop_remove_pod(&pod_id).await;
}

/// Connects to 127.0.0.1:`port` (a crictl port-forward), sends `msg` and reads the echo.
async fn echo_through(port: u16, msg: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(msg).await.ok()?;
    s.shutdown().await.ok()?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.ok()?;
    Some(got)
}

#[tokio::test]
#[ignore = "needs root"]
async fn crictl_exec_attach_and_port_forward_with_both_transports() {
    let mut env = Env::start(&[]).await;
    let image = env.images.busybox.reference();
    env.pull(&image).await;
    let pod = env.pod_config("crictl");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .run(
            &pod_id,
            &pod,
            container("main", &image, &["nc", "-ll", "-p", "8080", "-e", "cat"]),
        )
        .await;

    for transport in ["spdy", "websocket"] {
        let out = env
            .crictl(
                &[
                    "exec",
                    "--transport",
                    transport,
                    &id,
                    "sh",
                    "-c",
                    "echo out; echo err >&2; exit 3",
                ],
                b"",
            )
            .await;
        // crictl exits 1 and names the command's exit code.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{transport}: {out:?}");
        assert!(
            stderr.contains("exit code 3"),
            "{transport}: {out:?}\n{}",
            env.daemon.log()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{transport}");
        assert!(stderr.contains("err\n"), "{transport}: {out:?}");
        // stdin through -i.
        let out = env
            .crictl(
                &["exec", "-i", "--transport", transport, &id, "cat"],
                b"piped\n",
            )
            .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "piped\n",
            "{transport}: {out:?}"
        );
    }
    // `exec -it` as a user types it, on a terminal (script(1) gives crictl one); crictl
    // sends the terminal's size on the resize stream once the session is up.
    let cmd = format!(
        "stty rows 33 cols 77; {} --runtime-endpoint unix://{} exec -it {id} sh -c 'until [ \"$(stty size)\" = \"33 77\" ]; do sleep 0.1; done; stty size; exit 4'",
        common::crictl(),
        env.daemon.socket().display()
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("33 77"),
        "stty size shows the terminal's size: {text:?}"
    );
    assert!(text.contains("exit code 4"), "{text:?}");

    // attach -i to a stdin_once container: the input reaches it, its EOF ends it.
    let mut cfg = container(
        "echo",
        &image,
        &["sh", "-c", "while read l; do echo got $l; done"],
    );
    cfg.stdin = true;
    cfg.stdin_once = true;
    let echo = env.run(&pod_id, &pod, cfg).await;
    let out = env.crictl(&["attach", "-i", &echo], b"hello\n").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got hello\n",
        "{out:?}"
    );

    // port-forward, both transports, to the nc echo server.
    for (n, transport) in ["spdy", "websocket"].into_iter().enumerate() {
        let local = 30000 + (std::process::id() % 10000) as u16 + n as u16;
        let mapping = format!("{local}:8080");
        let mut pf = tokio::process::Command::new(common::crictl())
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", env.daemon.socket().display()))
            .args(["port-forward", "--transport", transport, &pod_id, &mapping])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(got) = echo_through(local, b"through crictl\n").await
                && got == b"through crictl\n"
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{transport} port-forward never echoed\n{}",
                env.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A second connection over the same session.
        assert_eq!(
            echo_through(local, b"again\n").await.as_deref(),
            Some(&b"again\n"[..])
        );
        pf.kill().await.unwrap();
    }
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn websocket_exec_attach_and_tunnelled_port_forward() {
    use common::ws;
    let mut env = Env::start(&[]).await;
    let (pod_id, id, pod) = setup(&mut env, "ws").await;

    // v5: stdout/stderr apart, the exit code in the status, stdin closed by [255, 0].
    let url = exec_url(
        &mut env,
        exec_req(
            &id,
            &["sh", "-c", "cat; echo err >&2; exit 6"],
            true,
            true,
            true,
            false,
        ),
    )
    .await
    .unwrap();
    let (mut s, chosen) = ws::connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io")
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some("v5.channel.k8s.io"));
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    for chunk in payload.chunks(16 << 10) {
        ws::send(&mut s, 0, chunk).await;
    }
    ws::send(&mut s, 255, &[0]).await;
    let got = ws::collect(&mut s, false).await;
    assert!(ws::channel(&got, 1) == payload, "stdout is stdin");
    assert_eq!(ws::channel(&got, 2), b"err\n");
    let st: serde_json::Value = serde_json::from_slice(&ws::channel(&got, 3)).unwrap();
    assert_eq!(st["details"]["causes"][0]["message"], "6", "{st}");
    // The first message is the empty one on the lowest writable channel (kubelet's).
    assert_eq!(got[0], (1, vec![]));

    // v4 base64: text messages.
    let url = exec_url(
        &mut env,
        exec_req(&id, &["echo", "b64"], false, true, false, false),
    )
    .await
    .unwrap();
    let (mut s, chosen) = ws::connect(&url, "v4.base64.channel.k8s.io").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("v4.base64.channel.k8s.io"));
    let got = ws::collect(&mut s, true).await;
    assert_eq!(ws::channel(&got, 1), b"b64\n");
    let st: serde_json::Value = serde_json::from_slice(&ws::channel(&got, 3)).unwrap();
    assert_eq!(st["status"], "Success");

    // An unknown subprotocol is refused; the token is spent either way.
    let url = exec_url(
        &mut env,
        exec_req(&id, &["true"], false, true, false, false),
    )
    .await
    .unwrap();
    assert_eq!(
        ws::connect(&url, "v9.channel.k8s.io").await.err(),
        Some(400)
    );
    assert_eq!(
        ws::connect(&url, "v5.channel.k8s.io").await.err(),
        Some(404)
    );

    // Attach over WebSocket to a ticking container.
    let image = env.images.busybox.reference();
    let ticker = env
        .run(
            &pod_id,
            &pod,
            container(
                "ticker",
                &image,
                &["sh", "-c", "while :; do echo tick; sleep 1; done"],
            ),
        )
        .await;
    let url = attach_url(&mut env, &ticker, false, false).await;
    let (mut s, _) = ws::connect(&url, "v5.channel.k8s.io").await.unwrap();
    loop {
        match futures_util::StreamExt::next(&mut s).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) if b.len() > 1 => {
                assert_eq!(&b[..], b"\x01tick\n");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("attach ended: {other:?}"),
        }
    }
    drop(s);

    // Port-forward: SPDY inside the WebSocket, to an nc echo server.
    env.run(
        &pod_id,
        &pod,
        container("echo", &image, &["nc", "-ll", "-p", "8080", "-e", "cat"]),
    )
    .await;
    let url = port_forward_url(&mut env, &pod_id).await;
    let (mut w, mut r) = ws::spdy_tunnel(&url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for request in 0.. {
        let (got, err) = forward_once(&mut w, &mut r, 8080, request, b"tunnel\n").await;
        if err.is_empty() {
            assert_eq!(got, b"tunnel\n");
            break;
        }
        assert!(Instant::now() < deadline, "never echoed: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.stop_remove_pod(&pod_id).await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn the_streaming_server_speaks_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let cert_arg = format!("--streaming_tls_cert_file={}", cert.display());
    let key_arg = format!("--streaming_tls_key_file={}", key.display());
    let mut env = Env::start(&[&cert_arg, &key_arg]).await;
    let (pod_id, id, _) = setup(&mut env, "tls").await;
    let url = exec_url(
        &mut env,
        exec_req(&id, &["true"], false, true, false, false),
    )
    .await
    .unwrap();
    assert!(url.starts_with("https://"), "{url}");
    // crictl verifies nothing by default (as critest): a TLS session end to end.
    for transport in ["spdy", "websocket"] {
        let out = env
            .crictl(
                &["exec", "--transport", transport, &id, "echo", "over tls"],
                b"",
            )
            .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "over tls\n",
            "{transport}: {out:?}"
        );
    }
    env.stop_remove_pod(&pod_id).await;
}
