//! vfio-user protocol: messages, server and client.
//!
//! - [`protocol`]: every message header and body as typed structs with checked parsing and
//!   encoding.
//! - [`server`]: serves any [`hwrr_device::Device`] on a UNIX socket (QEMU ≥ 10.1's `vfio-user-pci`,
//!   libvfio-user and rust-vmm clients).
//! - [`client`]: talks to a vfio-user server, serves its DMA requests, and wraps it as a
//!   [`hwrr_device::Device`] ([`client::RemoteDevice`]).
#![deny(missing_docs)]

pub mod client;
pub mod fuzzing;
pub mod protocol;
pub mod server;
mod wire;

pub use client::{Client, ClientError, ClientOptions, DmaDirection, RemoteDevice};
pub use protocol::{DmaLayout, ProtocolError};
pub use server::{ServeSummary, Server, ServerError, ServerOptions};
