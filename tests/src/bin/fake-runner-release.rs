//! `fake-runner-release --version V --arch A --out DIR [--pad-mb N --pad-files M]`: builds a fake
//! runner release tarball and prints `<path> <sha256> <size>`.

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Build a fake actions/runner release tarball")]
struct Cli {
    /// Runner version, e.g. 2.336.0
    #[arg(long)]
    version: String,
    /// x64, arm64 or arm
    #[arg(long, default_value = "x64")]
    arch: String,
    /// Output directory
    #[arg(long)]
    out: std::path::PathBuf,
    /// Megabytes of incompressible padding under externals/
    #[arg(long, default_value_t = 0)]
    pad_mb: u64,
    /// Number of padding files
    #[arg(long, default_value_t = 0)]
    pad_files: u32,
    /// The listener binary (default: fake-runner-listener next to this program)
    #[arg(long)]
    listener: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pad_files = if cli.pad_mb > 0 && cli.pad_files == 0 {
        1
    } else {
        cli.pad_files
    };
    let spec = runner_agent_tests::fake_runner::ReleaseSpec {
        version: cli.version,
        arch: cli.arch,
        listener: cli
            .listener
            .unwrap_or_else(runner_agent_tests::fake_runner::listener_binary),
        pad_bytes: cli.pad_mb << 20,
        pad_files,
    };
    let built = runner_agent_tests::fake_runner::build_release(&spec, &cli.out)
        .context("cannot build the fake runner release")?;
    println!("{} {} {}", built.path.display(), built.sha256, built.size);
    Ok(())
}
