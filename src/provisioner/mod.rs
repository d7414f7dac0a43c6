//! Mesos's provisioner: image providers fetch images, the store keeps their layers
//! once, and a backend turns an ordered list of layers into a container rootfs.

pub mod backends;
pub mod providers;
pub mod reference;
pub mod store;
