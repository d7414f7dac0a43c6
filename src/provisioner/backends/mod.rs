//! Rootfs backends (overlay, aufs, copy, bind).
