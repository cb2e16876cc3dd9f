//! The compile report for humans, on stderr (`--json` prints the report itself on stdout).

use kiln_compile::CompileReport;

/// The report for humans, on stderr.
pub fn print_report(r: &CompileReport) {
    eprintln!(
        "compiled {} kernels ({} unique, {} from cache, {} built in {} compiler invocations) in {:.0} ms on {} thread(s)",
        r.kernels_total, r.kernels_unique, r.cache_hits, r.compiled, r.compiler_invocations, r.compile_ms, r.threads
    );
    for s in &r.stages {
        eprintln!("  {:<18} {:>9.1} ms", s.name, s.ms);
    }
    eprintln!(
        "  parallel efficiency {:.2}, peak RSS {:.0} MB, artifact digest {}",
        r.parallel_efficiency,
        r.peak_rss_mb,
        &r.artifact_digest[..16]
    );
    if let Some(remote) = &r.remote {
        eprintln!(
            "  remote cache {}: {} kernels fetched ({:.1} MB), {} missing, {} uploads ({:.1} MB), {} errors",
            remote.location,
            r.remote_hits,
            r.remote_bytes_down as f64 / 1e6,
            r.remote_misses,
            remote.uploads,
            r.remote_bytes_up as f64 / 1e6,
            r.remote_errors
        );
    }
    if let Some(s) = &r.shard {
        eprintln!(
            "  shard {}/{}: {} of the compile units ({} kernels)",
            s.index, s.count, s.units, s.kernels
        );
    }
}
