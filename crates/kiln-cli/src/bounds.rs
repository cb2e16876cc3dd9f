//! Every count a flag takes is bounded by what it can meaningfully be, and a value past the
//! bound is a usage error naming the flag (clap adds it) and the bound, before any work: a
//! typo must not allocate gigabytes or run for hours. (Thread counts: [`crate::parse_threads`].)

/// A whole number in `min..=max`; `what` says what the bound is.
fn count(s: &str, min: u64, max: u64, what: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{n} is not in {min}..={max} ({what})"));
    }
    Ok(n)
}

/// `--layers`: at most [`kiln_models::config::MAX_LAYERS`].
pub fn layers(s: &str) -> Result<usize, String> {
    count(
        s,
        1,
        kiln_models::config::MAX_LAYERS as u64,
        "kiln builds at most this many decoder layers",
    )
    .map(|n| n as usize)
}

/// `--max-new-tokens`, `bench decode --tokens`: no context is longer than
/// [`kiln_models::config::MAX_DIM`] positions (generation stops at the model's own context).
pub fn new_tokens(s: &str) -> Result<usize, String> {
    count(
        s,
        0,
        kiln_models::config::MAX_DIM,
        "no model's context is longer",
    )
    .map(|n| n as usize)
}

/// `bench decode --prompt-len`: 1 to the longest context any config may declare.
pub fn prompt_len(s: &str) -> Result<usize, String> {
    count(
        s,
        1,
        kiln_models::config::MAX_DIM,
        "no model's context is longer",
    )
    .map(|n| n as usize)
}

/// `--memory-budget-mb`: up to 16 TiB, more memory than any one machine has.
pub fn memory_mb(s: &str) -> Result<u64, String> {
    count(s, 1, 1 << 24, "16 TiB, more than any machine holds")
}

/// The longest `--compile-timeout`: a day; one compiler invocation running longer has hung.
pub const MAX_COMPILE_TIMEOUT_SECS: u64 = 86_400;

/// `--compile-timeout` (and `KILN_COMPILE_TIMEOUT`), in seconds.
pub fn compile_timeout(s: &str) -> Result<u64, String> {
    count(
        s,
        1,
        MAX_COMPILE_TIMEOUT_SECS,
        "a day: a compiler running longer has hung",
    )
}

/// `bench compile --repeat`.
pub fn repeat(s: &str) -> Result<usize, String> {
    count(s, 1, 1000, "runs per configuration").map(|n| n as usize)
}

/// `bench compile --shards`: each 1 to [`kiln_compile::shard::MAX_SHARDS`].
pub fn shards(s: &str) -> Result<usize, String> {
    count(
        s,
        1,
        kiln_compile::shard::MAX_SHARDS as u64,
        "machines in one precompile",
    )
    .map(|n| n as usize)
}

/// `--temperature`: a finite number >= 0.
pub fn temperature(s: &str) -> Result<f32, String> {
    let t: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(t.is_finite() && t >= 0.0) {
        return Err(format!("{t} is not a finite number >= 0 (0: greedy)"));
    }
    Ok(t)
}

/// `--top-p`: in (0, 1].
pub fn top_p(s: &str) -> Result<f32, String> {
    let p: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(p > 0.0 && p <= 1.0) {
        return Err(format!("{p} is not in (0, 1]"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_named_and_enforced() {
        assert_eq!(layers("10000"), Ok(10_000));
        let e = layers("4294967296").unwrap_err();
        assert!(e.contains("1..=10000"), "{e}");
        assert!(new_tokens("18446744073709551615").is_err());
        assert!(memory_mb("17592186044416").is_err());
        assert!(compile_timeout("86401").is_err());
        assert!(temperature("inf").is_err() && temperature("NaN").is_err());
        assert!(top_p("0").is_err() && top_p("1").is_ok());
    }
}
