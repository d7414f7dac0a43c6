//! The cri-mesos daemon: flags, logging, the CRI socket, signals.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cri_mesos::containerizer::{self, Containerizer};
use cri_mesos::flags::{self, Flags};
use cri_mesos::provisioner::{Provisioner, ProvisionerConfig};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let flags = match Flags::from_env() {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("cri-mesos: {e}");
            return ExitCode::from(2);
        }
    };
    // The isolator chain is the isolator registry's to select; a chain the flags cannot
    // have is a flag error like the others.
    if let Err(e) = cri_mesos::isolators::registry::chain(&flags) {
        eprintln!("cri-mesos: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = cri_mesos::failpoint::check() {
        eprintln!("cri-mesos: {e}");
        return ExitCode::from(2);
    }
    init_tracing(&flags);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cri-mesos: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let flags = Arc::new(flags);
    // Configuration the kernel or the disk refuses (an aufs backend without aufs, a bad CA
    // file) is a flag error too: exit 2 before the socket is opened.
    let containerizer = {
        let _guard = runtime.enter();
        let created = Provisioner::create(&ProvisionerConfig::from_flags(&flags))
            .map_err(anyhow::Error::from)
            .and_then(|p| {
                containerizer::create(flags.clone(), p.clone())
                    .map(|c| (c, p))
                    .map_err(anyhow::Error::from)
            });
        let recovered = created.and_then(|(c, p)| {
            runtime
                .block_on(c.recover())
                .map(|()| (c, p))
                .map_err(anyhow::Error::from)
        });
        match recovered {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cri-mesos: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let (containerizer, provisioner) = containerizer;
    // Before the CRI socket: a taken port is a configuration error like a bad flag.
    let http = match cri_mesos::http::bind(flags.http_address) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cri-mesos: {e}");
            return ExitCode::from(2);
        }
    };
    // A certificate that does not load is a flag error: exit 2 before serving.
    let tls = match (
        &flags.streaming_tls_cert_file,
        &flags.streaming_tls_key_file,
    ) {
        (Some(cert), Some(key)) => match cri_mesos::stream::server::load_tls(cert, key) {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                eprintln!("cri-mesos: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    match runtime.block_on(run(flags, containerizer, provisioner, http, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cri-mesos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(flags: &Flags) {
    // RUST_LOG, when set, wins: it can target modules, which --logging_level cannot.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            flags::tracing_level(&flags.logging_level).unwrap_or("info"),
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(
    flags: Arc<Flags>,
    containerizer: Arc<dyn Containerizer>,
    provisioner: Arc<Provisioner>,
    http: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    for dir in [&flags.work_dir, &flags.runtime_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The socket first: a daemon that must refuse to start (another one serves) leaves the
    // host as it found it.
    let listener = cri_mesos::server::bind(&flags.listen)?;
    for dir in [&flags.work_dir, &flags.runtime_dir] {
        // Canonical: mountinfo shows resolved paths, and bidirectional volumes under these
        // dirs must find them shared.
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        if let Err(e) = cri_mesos::launcher::propagation::make_shared(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make a shared mount; bidirectional volumes under it will be refused");
        }
    }
    let (streaming, streaming_listener) = cri_mesos::stream::StreamServer::bind(
        flags.streaming_address,
        containerizer.clone(),
        flags.streaming_idle_timeout,
        tls,
    )
    .await?;
    let stop_streaming = tokio_util::sync::CancellationToken::new();
    let streaming_task = tokio::spawn(
        streaming
            .clone()
            .serve(streaming_listener, stop_streaming.clone().cancelled_owned()),
    );
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping, containers keep running"),
            _ = int.recv() => tracing::info!("SIGINT: stopping, containers keep running"),
        }
    };
    let http_address = http
        .local_addr()
        .context("the HTTP listener has no address")?;
    tracing::info!(address = %http_address, "serving HTTP (/monitor/statistics, /containers, /metrics, /health)");
    let http_containerizer = containerizer.clone();
    tokio::spawn(async move {
        if let Err(e) =
            cri_mesos::http::serve(http, http_containerizer, std::future::pending()).await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    let served = cri_mesos::server::serve(
        flags,
        containerizer,
        provisioner,
        streaming,
        listener,
        http_address,
        shutdown,
    )
    .await;
    stop_streaming.cancel();
    let _ = streaming_task.await;
    served?;
    Ok(())
}
