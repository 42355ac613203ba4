//! Pull an image and unpack it into a directory, with content trust as configured.
//!
//! ```sh
//! cargo run -p haul --example pull_and_unpack -- alpine:3.20 ./rootfs [STORE]
//! ```

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(image), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: pull_and_unpack IMAGE DIR [STORE]");
        std::process::exit(2);
    };
    let mut builder = haul::Haul::builder();
    if let Some(store) = args.next() {
        builder = builder.root(store);
    }
    let haul = builder.build()?;
    for warning in haul.warnings() {
        eprintln!("warning: {warning}");
    }
    match haul
        .unpack(&image, dir.as_ref(), Arc::new(haul::progress::Silent))
        .await
    {
        Ok(done) => {
            println!(
                "{} -> {dir}: {} layers, {} entries",
                done.image.name, done.stats.layers, done.stats.entries
            );
            Ok(())
        }
        // Branch on what went wrong, not on the message.
        Err(e) if e.kind() == haul::ErrorKind::NotFound => {
            eprintln!("no such image: {e}");
            std::process::exit(1);
        }
        Err(e) => Err(e.into()),
    }
}
