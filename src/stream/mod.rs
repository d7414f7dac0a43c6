//! The streaming server behind the Exec, Attach and PortForward RPCs: the RPCs hand out
//! single-use URLs, the client connects there and upgrades to SPDY/3.1.

pub mod fdio;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod session;
pub mod spdy;
pub mod token;
pub mod websocket;

pub use server::{StreamServer, StreamServerError};
