use crate::out;
use clap::Subcommand;
use kiln_compile::KernelCache;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Entries, size and size limit of the kernel cache ($KILN_CACHE_DIR or ~/.cache/kiln).
    /// Reads only: creates and changes nothing.
    Stats {
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove every kiln entry (other files in the folder stay).
    Clear,
    /// Check every entry (whole, checksum, filed under its own key); exits 1 naming each bad
    /// one. Changes nothing: a compile removes and rebuilds bad entries itself.
    Verify {
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove temp files left by killed processes, then the least recently used entries while
    /// the cache is over its limit (KILN_CACHE_MAX_MB; kiln does this after every compile that
    /// adds entries).
    Prune {
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Upload every local entry the remote cache lacks.
    Push(SyncArgs),
    /// Download every remote entry the local cache lacks (each checked before it is stored).
    Pull(SyncArgs),
}

impl CacheCommand {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            CacheCommand::Stats { json }
            | CacheCommand::Verify { json }
            | CacheCommand::Prune { json } => *json,
            CacheCommand::Push(a) | CacheCommand::Pull(a) => a.json,
            CacheCommand::Clear => false,
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1u64 << 20) as f64)
}

fn limit(cache: &KernelCache) -> String {
    cache
        .max_bytes()
        .map_or_else(|| "no limit".into(), |b| format!("limit {}", mb(b)))
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
    let cache = KernelCache::at(KernelCache::default_dir())?;
    // The folder named (KILN_CACHE_DIR, else the default) must be a folder, if it exists at
    // all; a missing one is an empty cache to `stats` (which says so) and an error to
    // `verify`: there is nothing there to vouch for.
    let exists = match std::fs::metadata(cache.dir()) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => anyhow::bail!(
            "the kernel cache {} (KILN_CACHE_DIR, else the default) is not a folder",
            cache.dir().display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => anyhow::bail!("the kernel cache {}: {e}", cache.dir().display()),
    };
    let missing = || {
        format!(
            "there is no kernel cache at {} (KILN_CACHE_DIR, else the default): nothing was \
             compiled into it yet",
            cache.dir().display()
        )
    };
    match c {
        CacheCommand::Stats { json } => {
            let s = cache.stats();
            if json {
                let mut v = serde_json::to_value(&s)?;
                v["exists"] = exists.into();
                out::json(&v)?;
            } else if !exists {
                out::line(&missing())?;
            } else {
                let mut text = format!(
                    "kernel cache: {}\n  {} entries, {} ({})\n",
                    s.dir.display(),
                    s.entries,
                    mb(s.bytes),
                    limit(&cache)
                );
                for (b, n) in &s.by_backend {
                    text += &format!("  {b}: {n} entries\n");
                }
                if s.temp_files > 0 {
                    text += &format!("  {} temp files (writes in progress or left by killed processes; `kiln cache prune` removes old ones)\n", s.temp_files);
                }
                out::print(&text)?;
            }
        }
        CacheCommand::Clear => {
            let n = cache.clear()?;
            out::line(&format!(
                "removed {n} entries from {}",
                cache.dir().display()
            ))?;
        }
        CacheCommand::Verify { .. } if !exists => anyhow::bail!("{}", missing()),
        CacheCommand::Verify { json } => {
            let s = cache.stats();
            let bad = cache.verify();
            if json {
                let bad: Vec<_> = bad
                    .iter()
                    .map(|(p, r)| serde_json::json!({ "path": p, "reason": r.to_string() }))
                    .collect();
                out::json(
                    &serde_json::json!({ "entries": s.entries, "bad": bad, "temp_files": s.temp_files }),
                )?;
            } else {
                let mut text = String::new();
                for (p, r) in &bad {
                    text += &format!("bad entry {}: {r}\n", p.display());
                }
                text += &format!(
                    "{} entries checked in {}, {} bad\n",
                    s.entries,
                    cache.dir().display(),
                    bad.len()
                );
                out::print(&text)?;
            }
            if !bad.is_empty() {
                return Err(out::AlreadyReported(format!(
                    "{} bad kernel cache entries",
                    bad.len()
                ))
                .into());
            }
        }
        CacheCommand::Prune { json } => {
            let p = cache.prune()?;
            if json {
                out::json(&p)?;
            } else {
                let s = cache.stats();
                out::line(&format!(
                    "removed {} entries ({}) and {} stale temp files from {}; {} entries, {} ({}) remain",
                    p.entries,
                    mb(p.bytes),
                    p.temp_files,
                    cache.dir().display(),
                    s.entries,
                    mb(s.bytes),
                    limit(&cache)
                ))?;
            }
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
    let config = kiln_remote::Config::from_env()?;
    let remote = kiln_remote::open(&a.remote_cache, &config)?;
    let r = if push {
        kiln_remote::sync::push(cache, &remote)
    } else {
        kiln_remote::sync::pull(cache, &remote)
    }?;
    if a.json {
        out::json(&r)?;
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
        out::line(&format!(
            "{verb} {} entries ({:.1} MB) from {from} to {to}; {} of {} were there already, {} rejected",
            r.copied,
            r.bytes as f64 / 1e6,
            r.present,
            r.listed,
            r.rejected
        ))?;
    }
    Ok(())
}
