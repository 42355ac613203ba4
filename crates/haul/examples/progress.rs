//! Pull an image with a progress reporter of your own: one line per layer status, and the bytes
//! downloaded at the end.
//!
//! ```sh
//! cargo run -p haul --example progress -- alpine:3.20 [STORE]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use haul::progress::{Event, LayerStatus, Reporter};

/// Prints what each layer goes through. Reporters are called from several tasks at once, so they
/// keep their state in atomics (or a mutex).
#[derive(Default)]
struct Lines {
    layers_done: AtomicU64,
}

impl Reporter for Lines {
    fn report(&self, event: Event) {
        match event {
            // Byte counts arrive many times a second: a bar would use them, lines do not.
            Event::Layer {
                status: LayerStatus::Downloading { .. } | LayerStatus::Extracting { .. },
                ..
            } => {}
            Event::Layer { digest, status } => {
                if status == LayerStatus::PullComplete {
                    self.layers_done.fetch_add(1, Ordering::Relaxed);
                }
                println!("{}: {}", digest.short(), status.label());
            }
            Event::Trusted { signers, .. } => println!("signed by {}", signers.join(", ")),
            Event::Finished { reference, .. } => println!("done: {reference}"),
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(image) = args.next() else {
        eprintln!("usage: progress IMAGE [STORE]");
        std::process::exit(2);
    };
    let mut builder = haul::Haul::builder();
    if let Some(store) = args.next() {
        builder = builder.root(store);
    }
    let haul = builder.build()?;
    let lines = Arc::new(Lines::default());
    let outcome = haul.pull(&image, lines.clone()).await?;
    println!(
        "{} layers pulled; {} blobs, {} bytes downloaded",
        lines.layers_done.load(Ordering::Relaxed),
        outcome.blobs_downloaded,
        outcome.bytes_downloaded
    );
    Ok(())
}
