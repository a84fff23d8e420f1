//! Serves the fuzzing `ScratchDevice` on a socket, for trying real clients (QEMU's
//! `vfio-user-pci`, libvfio-user's `client` sample) against the server.
//!
//! `cargo run -p hwrr-vfio-user --example scratch_server -- SOCKET [spec|qemu|auto] [--once]`

use hwrr_vfio_user::fuzzing::ScratchDevice;
use hwrr_vfio_user::{DmaLayout, Server, ServerOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: scratch_server SOCKET [spec|qemu|auto] [--once]")?;
    let dma_layout = match args.get(1).map(String::as_str) {
        Some("spec") => DmaLayout::Spec,
        Some("qemu") => DmaLayout::Qemu,
        _ => DmaLayout::Auto,
    };
    let once = args.iter().any(|a| a == "--once");
    let mut server = Server::bind(
        path,
        ServerOptions {
            dma_layout,
            once,
            ..Default::default()
        },
    )?;
    eprintln!("serving ScratchDevice on {path} (layout {dma_layout:?}, once {once})");
    let summary = server.serve(&mut ScratchDevice::new())?;
    println!("{summary:?}");
    Ok(())
}
