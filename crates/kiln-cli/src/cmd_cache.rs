use clap::Subcommand;
use kiln_compile::KernelCache;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Entries and bytes in the kernel cache ($KILN_CACHE_DIR or ~/.cache/kiln).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry.
    Clear,
}

pub fn run(c: CacheCommand) -> anyhow::Result<()> {
    let cache = KernelCache::open(KernelCache::default_dir()).map_err(anyhow::Error::msg)?;
    match c {
        CacheCommand::Stats { json } => {
            let s = cache.stats();
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("kernel cache: {}", s.dir.display());
                println!("  {} entries, {:.1} MB", s.entries, s.bytes as f64 / 1e6);
                for (b, n) in &s.by_backend {
                    println!("  {b}: {n} entries");
                }
            }
        }
        CacheCommand::Clear => {
            let n = cache.clear()?;
            println!("removed {n} entries from {}", cache.dir().display());
        }
    }
    Ok(())
}
