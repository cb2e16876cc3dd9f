//! Writing kernel text: lines appended to a `String`, and the assembly of a translation unit.
//!
//! `writeln!` into a `String` returns a `Result` that can never be an error; [`Emit`] and the
//! [`emit!`](crate::emit!) macro write the same text without one, so a renderer reads as the
//! text it writes.

use std::fmt;

/// Kernel text being written: appends lines without a `Result` (a `String` cannot fail to
/// grow the way a file or a socket can).
pub trait Emit {
    /// Appends the formatted `args`, then a newline (what `writeln!` writes).
    fn line(&mut self, args: fmt::Arguments<'_>);
    /// Appends each of `lines` on its own line, after `indent`.
    fn lines(&mut self, indent: &str, lines: impl IntoIterator<Item = String>);
}

impl Emit for String {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        match args.as_str() {
            Some(text) => self.push_str(text),
            None => self.push_str(&fmt::format(args)),
        }
        self.push('\n');
    }

    fn lines(&mut self, indent: &str, lines: impl IntoIterator<Item = String>) {
        for l in lines {
            self.push_str(indent);
            self.push_str(&l);
            self.push('\n');
        }
    }
}

/// `emit!(out, "format", args..)`: appends the formatted line and a newline to `out` (a
/// `String` or `&mut String`), like `writeln!` without its `Result`.
#[macro_export]
macro_rules! emit {
    ($out:expr, $($fmt:tt)+) => {{
        use $crate::emit::Emit as _;
        $out.line(::std::format_args!($($fmt)+))
    }};
}

/// One translation unit for a device compiler: `prelude`, then each kernel's source after a
/// blank line. The CPU's C compiler, NVRTC and the CUDA emulator all compile this shape.
pub fn translation_unit<'a>(prelude: &str, sources: impl IntoIterator<Item = &'a str>) -> String {
    let mut unit = String::from(prelude);
    for s in sources {
        unit.push('\n');
        unit.push_str(s);
    }
    unit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_writes_what_writeln_writes() {
        use std::fmt::Write;
        let (n, name) = (3, "kiln_o");
        let mut expected = String::new();
        writeln!(
            expected,
            "    for (int {name} = {n}; {name} > 0; --{name}) {{"
        )
        .unwrap();
        writeln!(expected, "plain").unwrap();
        let mut s = String::new();
        let out = &mut s;
        emit!(out, "    for (int {name} = {n}; {name} > 0; --{name}) {{");
        emit!(s, "plain");
        assert_eq!(s, expected);
        s.lines("  ", ["a".to_string(), "b".to_string()]);
        assert!(s.ends_with("plain\n  a\n  b\n"));
    }

    #[test]
    fn a_unit_is_the_prelude_then_each_source_after_a_newline() {
        assert_eq!(translation_unit("P", ["a\n", "b\n"]), "P\na\n\nb\n");
        assert_eq!(translation_unit("P", []), "P");
    }
}
