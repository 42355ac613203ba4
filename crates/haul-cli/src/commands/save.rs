//! `haul save`: images from the store as a tar archive, like `docker save`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use haul::archive::{self, ArchiveFormat};

use crate::cli::{GlobalArgs, SaveArgs, SaveFormat};
use crate::context;

pub async fn run(global: &GlobalArgs, args: &SaveArgs) -> anyhow::Result<ExitCode> {
    context::load_config(global)?;
    let store = context::open_store(global)?;
    let format = match args.format {
        SaveFormat::DockerArchive => ArchiveFormat::DockerArchive,
        SaveFormat::OciArchive => ArchiveFormat::OciArchive,
    };
    let images = args.images.clone();
    // Like docker: without -o (or with `-o -`) the archive goes to stdout, never to a terminal.
    let file = args.output.clone().filter(|o| o.as_os_str() != "-");
    if file.is_none() && std::io::stdout().is_terminal() {
        // docker's text.
        anyhow::bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
    }
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        match file {
            Some(file) => {
                archive::save_to_file(&store, &images, format, &file)?;
            }
            None => {
                let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                archive::save(&store, &images, format, &mut out)?;
                out.flush()?;
            }
        }
        Ok(())
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}
