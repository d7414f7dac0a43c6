//! CRI ImageService: the provisioner's image store seen from kubelet.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Code, Request, Response, Status};

use crate::containerizer::Containerizer;
use crate::provisioner::backends::BackendError;
use crate::provisioner::providers::ProviderErrorKind;
use crate::provisioner::providers::auth::Credentials;
use crate::provisioner::reference::ImageReference;
use crate::provisioner::store::ImageRecord;
use crate::provisioner::{ProvisionError, Provisioner};

/// Serves the image RPCs.
pub struct CriImages {
    provisioner: Arc<Provisioner>,
    /// For ImageFsInfo's container filesystem: what the writable layers hold.
    containerizer: Arc<dyn Containerizer>,
}

impl std::fmt::Debug for CriImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriImages")
            .field("provisioner", &self.provisioner)
            .finish_non_exhaustive()
    }
}

impl CriImages {
    pub fn new(provisioner: Arc<Provisioner>, containerizer: Arc<dyn Containerizer>) -> Self {
        Self {
            provisioner,
            containerizer,
        }
    }

    /// Resolves what a client names an image by: an id, a tag, a digest, or a short name
    /// that normalises to one of those (`busybox` → `docker.io/library/busybox:latest`).
    fn find(&self, image: &str) -> Option<ImageRecord> {
        let store = self.provisioner.store();
        store.lookup(image).or_else(|| {
            let reference = ImageReference::parse(image).ok()?;
            store.lookup(&reference.to_string()).or_else(|| {
                reference
                    .digest
                    .as_ref()
                    .and_then(|d| store.lookup(&reference.digested_name(d)))
            })
        })
    }
}

/// Maps provisioner failures onto the gRPC codes kubelet and crictl expect.
pub fn provision_status(error: &ProvisionError) -> Status {
    let code = match error.root() {
        ProvisionError::Reference(_) => Code::InvalidArgument,
        ProvisionError::ImageNotFound(_) => Code::NotFound,
        ProvisionError::NodeCredentials { .. } => Code::FailedPrecondition,
        ProvisionError::Provider(e) => match e.kind() {
            ProviderErrorKind::Unreachable => Code::Unavailable,
            ProviderErrorKind::NotFound => Code::NotFound,
            ProviderErrorKind::Unauthorized => Code::Unauthenticated,
            ProviderErrorKind::BadInput => Code::InvalidArgument,
            ProviderErrorKind::Corrupt | ProviderErrorKind::Other => Code::Internal,
        },
        ProvisionError::Backend(BackendError::BindMultiLayer { .. }) => Code::FailedPrecondition,
        ProvisionError::DiffIdMismatch { .. }
        | ProvisionError::BadConfig { .. }
        | ProvisionError::Extract { .. } => Code::Internal,
        _ => Code::Internal,
    };
    Status::new(code, super::validate::bounded(error.to_string()))
}

fn credentials(auth: Option<cri::AuthConfig>) -> Option<Credentials> {
    let auth = auth?;
    let opt = |s: String| (!s.is_empty()).then_some(s);
    let creds = Credentials {
        username: opt(auth.username),
        password: opt(auth.password),
        auth: opt(auth.auth),
        identity_token: opt(auth.identity_token),
        registry_token: opt(auth.registry_token),
    };
    let empty = creds.username.is_none()
        && creds.password.is_none()
        && creds.auth.is_none()
        && creds.identity_token.is_none()
        && creds.registry_token.is_none();
    (!empty).then_some(creds)
}

/// The user an image runs as by default: CRI wants a numeric uid or else a user name.
fn image_user(record: &ImageRecord) -> (Option<cri::Int64Value>, String) {
    let user = record
        .config
        .pointer("/config/User")
        .and_then(|u| u.as_str())
        .unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

fn to_cri(record: &ImageRecord) -> cri::Image {
    let (uid, username) = image_user(record);
    cri::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size.max(1),
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn image_name(spec: Option<cri::ImageSpec>, field: &str) -> Result<String, Status> {
    let image = spec.map(|s| s.image).unwrap_or_default();
    if image.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    Ok(image)
}

#[tonic::async_trait]
impl ImageService for CriImages {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => self.find(&name).iter().map(to_cri).collect(),
            None => self
                .provisioner
                .store()
                .images()
                .iter()
                .map(to_cri)
                .collect(),
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image, "image.image")?;
        // A missing image is an empty answer, not an error: kubelet decides to pull on it.
        let Some(record) = self.find(&name) else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if request.verbose {
            let details = serde_json::json!({
                "id": record.id,
                "manifestDigest": record.manifest_digest,
                "layers": record.layers.iter().map(|l| format!("sha256:{l}")).collect::<Vec<_>>(),
                "backend": self.provisioner.backend_name(),
                "config": record.config,
            });
            info.insert("info".to_string(), details.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(&record)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image, "image.image")?;
        let span = tracing::info_span!("pull", image = %name);
        let _enter = span.enter();
        let record = self
            .provisioner
            .pull(&name, credentials(request.auth))
            .await
            .map_err(|e| provision_status(&e))?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_name(request.into_inner().image, "image.image")?;
        // Idempotent: removing what is not there succeeds.
        if let Some(record) = self.find(&name) {
            self.provisioner
                .remove_image(&record.id)
                .await
                .map_err(|e| provision_status(&e))?;
            tracing::info!(image = %name, id = %record.id, "image removed");
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let timestamp = crate::containerizer::now_ns();
        let usage =
            |mountpoint: &std::path::Path, (bytes, inodes): (u64, u64)| cri::FilesystemUsage {
                timestamp,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: mountpoint.display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            };
        let store = self.provisioner.store();
        // The writable layers, where ContainerStats' `writable_layer` says they are, as
        // `disk/du` last measured them; without it none is named and kubelet takes the
        // image filesystem for both, as the CRI says.
        let containers = self
            .containerizer
            .writable_usage()
            .map(|used| usage(self.provisioner.containers_dir(), used));
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage(store.root(), store.usage())],
            container_filesystems: containers.into_iter().collect(),
        }))
    }
}
