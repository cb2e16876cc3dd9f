//! A kernel's launch spec (written by [`crate::codegen::launch`]) evaluated for one run: what
//! the CUDA device and the emulator pass to a launch. The kernel's arguments are, in this
//! order: the output buffer, the input buffers (in the step's order), the symbols, then
//! `kiln_units`.

use kiln_ir::Bindings;
use kiln_program::{LaunchSpec, RunError};

/// One launch for a binding.
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub symbols: Vec<i64>,
    pub units: i64,
}

/// The launch of `spec` for bindings `b`; None when there is no work (an empty tensor).
pub fn resolve(spec: &LaunchSpec, b: &Bindings) -> Result<Option<Launch>, RunError> {
    let units = spec.units.eval(b)?;
    let grid = spec.groups(b)?;
    if units <= 0 || grid.iter().any(|&g| g <= 0) {
        return Ok(None);
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
        symbols: spec.symbol_values(b)?,
        units,
    }))
}
