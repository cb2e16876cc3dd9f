//! `--remote-cache URL`: the remote tier for commands that compile.

use crate::CompileFlags;
use kiln_compile::RemoteCache;

/// The remote tier the flags (or `KILN_REMOTE_CACHE`) name, unless `--no-cache`. A malformed URL
/// or setting is an error; an unreachable store is not (the compile warns once and goes on).
pub fn open(flags: &CompileFlags) -> anyhow::Result<Option<RemoteCache>> {
    match flags
        .remote_cache
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) if !flags.no_cache => Ok(Some(open_url(url)?)),
        _ => Ok(None),
    }
}

pub fn open_url(url: &str) -> anyhow::Result<RemoteCache> {
    let config = kiln_remote::Config::from_env()?;
    Ok(kiln_remote::open_cache(url, &config)?)
}
