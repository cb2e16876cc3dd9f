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

/// The `(name, source)` pairs of an artifact.
pub fn unpack(artifact: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(artifact).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let mut rest = text
        .strip_prefix(HEADER)
        .ok_or("not a kiln-wgpu artifact (bad header)")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (line, tail) = rest.split_once('\n').ok_or("truncated kernel header")?;
        let mut parts = line.split(' ');
        let (Some("kernel"), Some(name), Some(len), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad kernel header {line:?}"));
        };
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad source length in {line:?}"))?;
        if tail.len() < len || !tail.is_char_boundary(len) {
            return Err(format!("the source of {name} is truncated"));
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
        assert!(unpack(&a[..a.len() - 1]).is_err());
        assert!(unpack(b"something else").is_err());
    }
}
