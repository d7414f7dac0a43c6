//! The CRI endpoint: one unix socket serving RuntimeService and ImageService.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::containerizer::Containerizer;
use crate::cri::image::CriImages;
use crate::cri::runtime::CriRuntime;
use crate::flags::Flags;
use crate::provisioner::Provisioner;
use crate::stream::StreamServer;

/// kubelet's own limit for CRI messages; large ListContainers answers need it.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another runtime is already serving on {0}; refusing to start")]
    SocketInUse(PathBuf),
    #[error("cannot prepare the socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the CRI socket, root-only (0660), replacing a stale socket file but never a
/// live one: a second daemon on the same node must not steal the first one's clients.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => return Err(ServeError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => {
            // Refused (or not a socket): nobody answers, so the file is stale.
            std::fs::remove_file(path)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(err)?;
        }
    }
    // The mode is set through the umask so the socket is never briefly world-reachable.
    let old = set_umask(0o117);
    let listener = UnixListener::bind(path);
    set_umask(old);
    let listener = listener.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(mask)).bits()
}

/// Serves both CRI services until `shutdown` completes, then removes the socket.
/// Containers are left alone: a restart must not touch running workloads. The image
/// service is the provisioner's store, which the containerizer provisions from.
pub async fn serve(
    flags: Arc<Flags>,
    containerizer: Arc<dyn Containerizer>,
    provisioner: Arc<Provisioner>,
    streaming: Arc<StreamServer>,
    listener: UnixListener,
    http_address: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let runtime = RuntimeServiceServer::new(
        CriRuntime::new(flags.clone(), containerizer.clone(), streaming)
            .with_http_address(http_address),
    )
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let images = ImageServiceServer::new(CriImages::new(provisioner, containerizer))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    tracing::info!(socket = %flags.listen.display(), "serving CRI v1");
    let result = tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("cri", method = %request.uri().path()))
        .layer(crate::http::rpc_metrics::RpcMetricsLayer)
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(&flags.listen) {
        tracing::warn!(socket = %flags.listen.display(), error = %e, "could not remove the socket");
    }
    result.map_err(ServeError::from)
}
