//! A compile unit's artifact: the naga-validated WGSL of its kernels. wgpu has no portable
//! binary, and the driver's own compile (SPIR-V to machine code, MSL to a Metal library) is
//! cached by the driver (Mesa's shader cache, the Metal shader cache), so what kiln caches is the
//! text naga accepted, keyed like every other artifact.
//!
//! Format: a header line, then per kernel `kernel <name> <bytes>\n` and the source.

const HEADER: &str = "kiln-wgpu artifact 1\n";

/// Packs `(name, source)` pairs.
pub fn pack<'a>(kernels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = String::from(HEADER);
    for (name, src) in kernels {
        out.push_str(&format!("kernel {name} {}\n", src.len()));
        out.push_str(src);
    }
    out.into_bytes()
}

/// Why bytes are not a kiln-wgpu artifact ([`unpack`]).
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("not UTF-8 text: {0}")]
    NotText(#[source] std::str::Utf8Error),
    #[error("not a kiln-wgpu artifact (bad header)")]
    BadHeader,
    #[error("truncated kernel header")]
    TruncatedHeader,
    #[error("bad kernel header {0:?}")]
    BadKernelHeader(String),
    #[error("bad source length in {0:?}")]
    BadLength(String),
    #[error("the source of {0} is truncated")]
    TruncatedSource(String),
}

/// The `(name, source)` pairs of an artifact.
pub fn unpack(artifact: &[u8]) -> Result<Vec<(String, String)>, ArtifactError> {
    let text = std::str::from_utf8(artifact).map_err(ArtifactError::NotText)?;
    let mut rest = text.strip_prefix(HEADER).ok_or(ArtifactError::BadHeader)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (line, tail) = rest
            .split_once('\n')
            .ok_or(ArtifactError::TruncatedHeader)?;
        let mut parts = line.split(' ');
        let (Some("kernel"), Some(name), Some(len), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ArtifactError::BadKernelHeader(line.to_string()));
        };
        let len: usize = len
            .parse()
            .map_err(|_| ArtifactError::BadLength(line.to_string()))?;
        if tail.len() < len || !tail.is_char_boundary(len) {
            return Err(ArtifactError::TruncatedSource(name.to_string()));
        }
        out.push((name.to_string(), tail[..len].to_string()));
        rest = &tail[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let a = pack([("k1", "fn k1() {}\n"), ("k2", "ü")]);
        assert_eq!(
            unpack(&a).unwrap(),
            vec![
                ("k1".to_string(), "fn k1() {}\n".to_string()),
                ("k2".to_string(), "ü".to_string())
            ]
        );
        // Cut inside the 2-byte 'ü': no longer text; cut after it: a source too short.
        assert!(matches!(
            unpack(&a[..a.len() - 1]),
            Err(ArtifactError::NotText(_))
        ));
        let b = pack([("k1", "fn k1() {}\n")]);
        assert!(matches!(
            unpack(&b[..b.len() - 1]),
            Err(ArtifactError::TruncatedSource(k)) if k == "k1"
        ));
        assert!(matches!(
            unpack(b"something else"),
            Err(ArtifactError::BadHeader)
        ));
    }
}
