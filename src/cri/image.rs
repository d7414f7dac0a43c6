//! CRI ImageService: the provisioner's image store seen from kubelet.

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;

use super::service_impl;

/// Serves the image RPCs.
#[derive(Debug, Default)]
pub struct CriImages {}

service_impl! {
    impl ImageService for CriImages {}
    unimplemented {
        list_images(cri::ListImagesRequest) -> cri::ListImagesResponse = "ListImages";
        image_status(cri::ImageStatusRequest) -> cri::ImageStatusResponse = "ImageStatus";
        pull_image(cri::PullImageRequest) -> cri::PullImageResponse = "PullImage";
        remove_image(cri::RemoveImageRequest) -> cri::RemoveImageResponse = "RemoveImage";
        image_fs_info(cri::ImageFsInfoRequest) -> cri::ImageFsInfoResponse = "ImageFsInfo";
    }
}
