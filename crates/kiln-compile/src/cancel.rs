//! How the stages observe an interruption ([`crate::interrupt`], from SIGINT or SIGTERM):
//! loops look at the flag (an atomic load) once per chunk of their work and stop, so that a
//! compile of any depth ends within a fraction of a second. The interrupt cannot be taken
//! back — the program is about to exit —, so what an interrupted stage built is not freed in
//! its way: freeing the millions of nodes of a deep graph takes longer than the second the
//! program has to exit.

use crate::CompileError;

/// Loop iterations between two looks at the flag: an atomic load per thousand nodes keeps a
/// stage's response well under a second at any depth, at no visible cost.
pub(crate) const CHECK_EVERY: usize = 1024;

/// Whether the program was interrupted.
pub(crate) fn requested() -> bool {
    crate::interrupted().is_some()
}

/// [`CompileError::Interrupted`] once the program is interrupted, looking at the flag on
/// every [`CHECK_EVERY`]th iteration `i` of a loop.
pub(crate) fn check_every(i: usize) -> Result<(), CompileError> {
    if i.is_multiple_of(CHECK_EVERY) {
        if let Some(signal) = crate::interrupted() {
            return Err(CompileError::Interrupted { signal });
        }
    }
    Ok(())
}

/// Frees `value` on a thread of its own: the partial result of an interrupted stage.
pub(crate) fn discard<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new()
        .name("kiln-discard".into())
        .spawn(move || drop(value));
}
