//! `haul rmi`: removes names (untags), like `docker rmi`. Content stays for a prune to reclaim,
//! or goes at once with `--prune`.

use std::io::Write;
use std::process::ExitCode;

use haul::reference::Reference;

use crate::cli::{GlobalArgs, RmiArgs};
use crate::context;
use crate::terminal;

pub async fn run(global: &GlobalArgs, args: &RmiArgs) -> anyhow::Result<ExitCode> {
    context::load_config(global)?;
    let store = context::open_store(global)?;
    let mut errors = Vec::new();
    for image in &args.images {
        match haul::tag::untag(&store, image, args.force).await {
            Ok(removed) => {
                for name in removed {
                    let shown = name
                        .parse::<Reference>()
                        .map(|r| r.familiar_string())
                        .unwrap_or(name);
                    writeln!(std::io::stdout(), "Untagged: {}", terminal::escape(&shown))?;
                }
            }
            Err(e) => errors.push(anyhow::Error::new(e)),
        }
    }
    if args.prune && errors.is_empty() {
        let report = haul::gc::prune(&store, &haul::gc::PruneOptions::default()).await?;
        super::prune::print_report(&store, &report)?;
    }
    super::inspect::last_error(errors)
}
