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
    /// Upload every local entry the remote cache lacks.
    Push(SyncArgs),
    /// Download every remote entry the local cache lacks (each checked before it is stored).
    Pull(SyncArgs),
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// The remote cache: redis://host:port/db, s3://bucket/prefix or file:///shared/path.
    #[arg(
        long,
        env = "KILN_REMOTE_CACHE",
        value_name = "URL",
        hide_env_values = true
    )]
    remote_cache: String,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
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
        CacheCommand::Push(a) | CacheCommand::Pull(a) if a.remote_cache.trim().is_empty() => {
            anyhow::bail!("--remote-cache (or KILN_REMOTE_CACHE) is empty")
        }
        CacheCommand::Push(a) => sync(&cache, &a, true)?,
        CacheCommand::Pull(a) => sync(&cache, &a, false)?,
    }
    Ok(())
}

fn sync(cache: &KernelCache, a: &SyncArgs, push: bool) -> anyhow::Result<()> {
    let config = kiln_remote::Config::from_env().map_err(anyhow::Error::msg)?;
    let remote = kiln_remote::open(&a.remote_cache, &config).map_err(anyhow::Error::msg)?;
    let r = if push {
        kiln_remote::sync::push(cache, &remote)
    } else {
        kiln_remote::sync::pull(cache, &remote)
    }
    .map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let (verb, from, to) = if push {
            (
                "uploaded",
                cache.dir().display().to_string(),
                remote.url.to_string(),
            )
        } else {
            (
                "downloaded",
                remote.url.to_string(),
                cache.dir().display().to_string(),
            )
        };
        println!(
            "{verb} {} entries ({:.1} MB) from {from} to {to}; {} of {} were there already, {} rejected",
            r.copied,
            r.bytes as f64 / 1e6,
            r.present,
            r.listed,
            r.rejected
        );
    }
    Ok(())
}
