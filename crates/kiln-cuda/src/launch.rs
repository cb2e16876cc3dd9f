//! A kernel's launch spec (written by [`crate::codegen::launch`]) evaluated for one run: what
//! the CUDA device and the emulator pass to a launch. The kernel's arguments are, in this
//! order: the output buffer, the input buffers (in the step's order), the symbols, then
//! `kiln_units`.

use kiln_ir::{Bindings, DType, Expr};
use kiln_program::{LaunchSpec, RunError, UniqueKernel};

/// One launch for a binding.
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub symbols: Vec<i64>,
    pub units: i64,
}

/// Elements (and threads, symbol values) below this are what the kernels' 32-bit index
/// division covers exactly (`kiln_div` in the prelude: see `crate::dialect`).
pub const INDEX_LIMIT: u64 = 1 << 32;

/// The elements of each buffer (`bytes`) of a kernel's output and inputs (`dtypes`, in that
/// order): whole blocks of a quantized type.
pub fn elements(dtypes: &[DType], bytes: &[usize]) -> Vec<u64> {
    dtypes
        .iter()
        .zip(bytes)
        .map(|(d, &b)| (b / d.storage_bytes(d.block_elems()) * d.block_elems()) as u64)
        .collect()
}

/// The decode GEMV of a matmul split in two ([`crate::codegen::decode_rows`]) and the rows that
/// pick it; `None` for a kernel that is not split. The GEMV is `<kernel>`
/// [`crate::codegen::DECODE_SUFFIX`], which `find` looks up in `modules` (the decode kernels'
/// modules, loaded before their matmuls': `Backend::load_runtime`), the newest first; where
/// none holds it, the error names the GEMV with `missing` as its detail.
pub fn resolve_decode<M, F>(
    k: &UniqueKernel,
    modules: &[M],
    find: impl Fn(&M, &str) -> Option<F>,
    missing: &str,
) -> Result<Option<(F, Expr)>, RunError> {
    let Some(rows) = crate::codegen::decode_rows(&k.kernel) else {
        return Ok(None);
    };
    let name = format!("{}{}", k.source.name, crate::codegen::DECODE_SUFFIX);
    let f = modules
        .iter()
        .rev()
        .find_map(|m| find(m, &name))
        .ok_or_else(|| RunError::Kernel {
            kernel: name.clone(),
            detail: missing.into(),
        })?;
    Ok(Some((f, rows.clone())))
}

/// The dtypes of a kernel's output and inputs, in argument order.
pub fn dtypes(k: &kiln_program::Kernel) -> Vec<DType> {
    std::iter::once(k.out_dtype)
        .chain(k.inputs.iter().copied())
        .collect()
}

/// The launch of `spec` for bindings `b`; None when there is no work (an empty tensor).
/// `kernel` names it in errors; `buffers` are the elements of its output and inputs
/// ([`elements`]).
///
/// Kernels divide indices in 32-bit unsigned arithmetic (issue 27: a 64-bit division costs
/// ptxas much of a row kernel's compile time), which is exact while every index they divide
/// and every divisor lies in `[0, 2^32)`: the launch is refused, naming the kernel, when the
/// threads, a symbol, the kernel's iteration or output (`index_extent`) or a buffer's
/// elements reach past it.
pub fn resolve(
    spec: &LaunchSpec,
    b: &Bindings,
    kernel: &str,
    buffers: &[u64],
) -> Result<Option<Launch>, RunError> {
    let units = spec.units.eval(b)?;
    let grid = spec.groups(b)?;
    if units <= 0 || grid.iter().any(|&g| g <= 0) {
        return Ok(None);
    }
    let threads: i128 = spec
        .global
        .iter()
        .map(|g| g.eval(b).map(i128::from))
        .product::<Result<i128, _>>()?;
    let symbols = spec.symbol_values(b)?;
    let mut extents: Vec<(String, i128)> = vec![
        ("threads".into(), threads),
        ("units".into(), units.into()),
        ("index extent".into(), spec.index_extent.eval(b)?.into()),
    ];
    extents.extend(
        spec.symbols
            .iter()
            .zip(&symbols)
            .map(|(s, &v)| (format!("symbol {s}"), i128::from(v))),
    );
    extents.extend(buffers.iter().enumerate().map(|(i, &n)| {
        let what = if i == 0 {
            "output".to_string()
        } else {
            format!("input {}", i - 1)
        };
        (format!("{what} buffer's elements"), n as i128)
    }));
    if let Some((what, v)) = extents
        .iter()
        .find(|(_, v)| *v < 0 || *v >= INDEX_LIMIT as i128)
    {
        return Err(RunError::Kernel {
            kernel: kernel.to_string(),
            detail: format!(
                "its {what} = {v} is outside [0, 2^32), the range its 32-bit index arithmetic covers"
            ),
        });
    }
    // CUDA's grid limits: x < 2^31, y and z < 2^16.
    if grid[0] >= 1 << 31 || grid[1] >= 1 << 16 || grid[2] >= 1 << 16 {
        return Err(RunError::Unsupported(format!(
            "CUDA grid {grid:?} exceeds the device limits (2^31-1, 65535, 65535)"
        )));
    }
    Ok(Some(Launch {
        grid: grid.map(|g| g as u32),
        block: spec.local,
        symbols,
        units,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::Expr;

    fn spec() -> LaunchSpec {
        let s = Expr::sym("s");
        LaunchSpec {
            global: [s.clone(), Expr::Const(1), Expr::Const(1)],
            local: [256, 1, 1],
            index_extent: s.clone().mul(4),
            ..LaunchSpec::units(vec!["s".into()], s, Expr::Const(1))
        }
    }

    #[test]
    fn launches_within_32_bit_indices_resolve() {
        let b: Bindings = [("s".to_string(), 1000)].into();
        let l = resolve(&spec(), &b, "k", &[4000, 16]).unwrap().unwrap();
        assert_eq!(
            elements(&[DType::F32, DType::Q4_0], &[4000, 36]),
            [1000, 64],
            "f32 at 4 bytes, Q4_0 at 32 in 18 bytes"
        );
        assert_eq!((l.grid, l.units, l.symbols), ([4, 1, 1], 1000, vec![1000]));
    }

    #[test]
    fn launches_past_32_bit_indices_are_refused_naming_the_kernel() {
        // The iteration (4 s) reaches 2^32 while s itself and the threads do not.
        let b: Bindings = [("s".to_string(), 1 << 30)].into();
        let err = resolve(&spec(), &b, "kiln_x", &[16])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("kiln_x") && err.contains("index extent = 4294967296"),
            "{err}"
        );
        // A buffer of 2^32 elements.
        let b: Bindings = [("s".to_string(), 16)].into();
        let err = resolve(&spec(), &b, "kiln_y", &[64, 1 << 32])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("kiln_y") && err.contains("input 0 buffer"),
            "{err}"
        );
    }
}
