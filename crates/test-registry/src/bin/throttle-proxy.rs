//! A reverse proxy in front of a registry that caps each connection's rate, for the benchmark.
//!
//! `throttle-proxy --upstream http://127.0.0.1:PORT --rate BYTES_PER_SEC [--ignore-range]`
//!
//! Prints `127.0.0.1:PORT` (where it listens) on a line of its own, then serves until killed.

use std::error::Error;
use std::io::Write as _;

use test_registry::{ThrottleOptions, ThrottleProxy};

const USAGE: &str = "usage: throttle-proxy --upstream URL --rate BYTES_PER_SEC [--ignore-range]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut upstream = None;
    let mut rate = None;
    let mut ignore_range = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--upstream" => upstream = args.next(),
            "--rate" => rate = args.next().and_then(|r| r.parse::<u64>().ok()),
            "--ignore-range" => ignore_range = true,
            _ => return Err(USAGE.into()),
        }
    }
    let (Some(upstream), Some(bytes_per_sec)) = (upstream, rate) else {
        return Err(USAGE.into());
    };
    let proxy = ThrottleProxy::start(ThrottleOptions {
        upstream,
        bytes_per_sec,
        ignore_range,
    })
    .await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", proxy.host())?;
    out.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
