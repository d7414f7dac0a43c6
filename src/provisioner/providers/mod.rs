//! Image providers: where images come from (a registry, or a local directory of archives).

pub mod auth;
pub mod blob;
pub mod error;
pub mod http;
pub mod local;
pub mod manifest;
pub mod node_auth;
pub mod registry;

use std::path::Path;

use self::auth::Credentials;
pub use self::error::{ProviderError, ProviderErrorKind};
use self::local::LocalProvider;
use self::manifest::{LayerDescriptor, ResolvedImage};
use self::registry::RegistryProvider;
use super::reference::ImageReference;

/// The image provider selected by `--docker_registry`: a registry URL, or — as Mesos
/// allows — a local directory of image archives.
#[derive(Clone)]
pub enum Provider {
    Registry(RegistryProvider),
    Local(LocalProvider),
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::Registry(_) => f.write_str("Provider::Registry"),
            Provider::Local(p) => write!(f, "Provider::Local({})", p.dir().display()),
        }
    }
}

impl Provider {
    pub async fn resolve(
        &self,
        image: &ImageReference,
        credentials: Option<&Credentials>,
    ) -> Result<ResolvedImage, ProviderError> {
        match self {
            Provider::Registry(p) => p.resolve(image, credentials).await,
            Provider::Local(p) => p.resolve(image).await,
        }
    }

    pub async fn fetch_blob(
        &self,
        image: &ImageReference,
        credentials: Option<&Credentials>,
        blob: &LayerDescriptor,
        dest: &Path,
    ) -> Result<(), ProviderError> {
        match self {
            Provider::Registry(p) => p.fetch_blob(image, credentials, blob, dest).await,
            Provider::Local(p) => p.fetch_blob(image, blob, dest).await,
        }
    }
}
