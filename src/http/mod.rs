//! The agent's HTTP endpoints on `--http_address` (Mesos's agent port, 5051): the Mesos
//! views of the containers, Prometheus metrics and a health check. Served on the same
//! async runtime as the CRI, never in its way: every handler only reads.

pub mod monitor;
pub mod rpc_metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_cri::v1 as cri;

use crate::containerizer::Containerizer;
use crate::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
#[error("--http_address={address}: cannot bind: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the address (at start, before the CRI socket, so that a taken port is a flag
/// error: exit 2 naming it).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let listener =
        std::net::TcpListener::bind(address).map_err(|source| BindError { address, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| BindError { address, source })?;
    Ok(listener)
}

type Shared = Arc<dyn Containerizer>;

fn router(containerizer: Shared) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK\n" }))
        .route("/monitor/statistics", get(statistics))
        .route("/monitor/statistics.json", get(statistics))
        .route("/containers", get(containers))
        .route("/metrics", get(metrics))
        .with_state(containerizer)
}

async fn statistics(State(c): State<Shared>) -> impl IntoResponse {
    axum::Json(monitor::statistics_json(c.as_ref()).await)
}

async fn containers(State(c): State<Shared>) -> impl IntoResponse {
    axum::Json(monitor::containers_json(c.as_ref()).await)
}

async fn metrics(State(c): State<Shared>) -> impl IntoResponse {
    let mut pods = [("ready", 0u64), ("notready", 0)];
    for p in c.pods() {
        pods[usize::from(!p.ready)].1 += 1;
    }
    let containers = c.containers();
    let mut by_state: [(&str, u64); 3] = [("created", 0), ("running", 0), ("exited", 0)];
    for record in &containers {
        let i = match record.cri_state(&record.exit()) {
            cri::ContainerState::ContainerCreated => 0,
            cri::ContainerState::ContainerRunning => 1,
            _ => 2,
        };
        by_state[i].1 += 1;
    }
    let labelled = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter()
            .map(|(state, n)| (format!("state=\"{state}\""), *n))
            .collect()
    };
    let text = METRICS.render(&[
        (
            "cri_mesos_pods",
            "Pod sandboxes, by state.",
            labelled(&pods),
        ),
        (
            "cri_mesos_containers",
            "Containers, by state.",
            labelled(&by_state),
        ),
    ]);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
}

/// Serves the endpoints until `shutdown` completes; unknown paths are 404.
pub async fn serve(
    listener: std::net::TcpListener,
    containerizer: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router(containerizer))
        .with_graceful_shutdown(shutdown)
        .await
}
