use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {}

pub fn run(b: BenchCommand) -> anyhow::Result<()> {
    match b {}
}
