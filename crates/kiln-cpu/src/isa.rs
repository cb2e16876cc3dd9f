//! Which vector instructions the CPU kernels are written for, and so how wide the packed
//! weight panels are: AVX-512 (16 f32 lanes, 32-column panels, a 12 x 32 GEMM micro-kernel)
//! or AVX2 (8 lanes, 16-column panels, 6 x 16; also what machines without AVX2 get, with the
//! portable C paths). The C prelude derives the same choice from the compiler's target macros
//! (`__AVX512F__` ...) and stops the compile if it disagrees with the panel width kiln-cpu
//! defined (`KILN_NR`), so the layout a weight is packed in always matches its readers.
//!
//! The choice follows the compiling CPU (`-march=native`, already in the cache key);
//! `KILN_CPU_ISA=avx2` forces the AVX2 kernels on an AVX-512 machine (the compile flags then end
//! in `-mno-avx512f`, which is part of the compiler identity and so of every cache key), to
//! compare the two on one machine.

use kiln_ir::DType;

/// The vector ISA the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 F, BW, DQ and VL.
    Avx512,
    /// AVX2 with FMA, or the portable paths where the target has neither.
    Avx2,
}

/// What the user asked for with `KILN_CPU_ISA`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsaRequest {
    /// The widest the compiling CPU has (unset, `auto` or `native`).
    Auto,
    /// This one.
    Force(Isa),
}

/// The environment variable that forces an ISA.
pub const ISA_ENV: &str = "KILN_CPU_ISA";

/// Target-feature flags (as gcc resolves `-march=native`) that the AVX-512 kernels need.
pub const AVX512_FLAGS: [&str; 4] = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"];

impl Isa {
    /// Columns per weight panel (`KILN_NR`): two vectors.
    pub fn panel(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
        }
    }

    /// Whether the CPU this process runs on has the AVX-512 subsets the kernels use.
    pub fn host_has_avx512() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The widest panel any ISA uses: scratch is sized for it, whatever the kernels were compiled for.
pub const MAX_PANEL: usize = 32;

/// A `KILN_CPU_ISA` that names no ISA; the message names the variable and the accepted values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    #[error("{env}={0:?} is not a CPU kernel ISA: use avx2, avx512 or auto (the widest the CPU has)", env = ISA_ENV)]
    Unknown(String),
    #[error("{env}={0:?} is not a quantized matmul path: use int8 (AVX-512 VNNI, or AVX2 for the types it has), dequant or auto", env = QUANT_ENV)]
    UnknownQuant(String),
    #[error("{env} / {quant}: {0}", env = ISA_ENV, quant = QUANT_ENV)]
    Unreadable(std::env::VarError),
}

impl IsaRequest {
    /// `KILN_CPU_ISA`: unset, empty, `auto` or `native` for the widest the CPU has; `avx2` or
    /// `avx512`. Anything else is an error naming the variable and the accepted values.
    pub fn from_env() -> Result<IsaRequest, IsaError> {
        match std::env::var(ISA_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(IsaRequest::Auto),
            Ok(v) => IsaRequest::parse(&v),
            Err(e) => Err(IsaError::Unreadable(e)),
        }
    }

    /// A value of `KILN_CPU_ISA` (see [`IsaRequest::from_env`]).
    pub fn parse(v: &str) -> Result<IsaRequest, IsaError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" | "native" => Ok(IsaRequest::Auto),
            "avx2" => Ok(IsaRequest::Force(Isa::Avx2)),
            "avx512" => Ok(IsaRequest::Force(Isa::Avx512)),
            other => Err(IsaError::Unknown(other.to_string())),
        }
    }
}

/// The environment variable that picks the quantized matmul path (`auto`, `int8`, `dequant`).
pub const QUANT_ENV: &str = "KILN_CPU_QUANT";

/// The target-feature flag the integer quantized path needs with AVX-512.
pub const VNNI_FLAG: &str = "-mavx512vnni";

/// The target-feature flag the integer quantized path needs with the AVX2 kernels.
pub const AVX2_FLAG: &str = "-mavx2";

/// The quantized weight types whose matmuls take the integer path: a bit per type, as the C
/// prelude's `kiln_quant_int8` has them (bit 0 Q8_0, 1 Q4_0, 2 Q4_K, 3 Q5_K, 4 Q6_K). A module
/// says its own (the device packs by that, `pack::Panels`); the compiler predicts it from the
/// ISA and target ([`crate::CCompiler::quant_int8`]), from the same table as the prelude's
/// `KILN_QINT8_<TYPE>` ([`Int8Types::VNNI`], [`Int8Types::AVX2`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Int8Types(u32);

impl Int8Types {
    /// No type: every quantized matmul dequantizes to f32.
    pub const NONE: Int8Types = Int8Types(0);
    /// AVX-512 with VNNI (`vpdpbusd`): all five types.
    pub const VNNI: Int8Types = Int8Types(0b1_1111);
    /// The AVX2 kernels (`vpmaddubsw` + `vpmaddwd`): the types whose AVX2 integer kernels exist
    /// (the prelude's AVX2 `KILN_QINT8_<TYPE>`; the others dequantize to f32 there).
    pub const AVX2: Int8Types = Int8Types(0b1_1110); // Q4_0, Q4_K, Q5_K, Q6_K

    /// The bit of `dtype` (0 for a type without an integer path).
    pub fn bit(dtype: DType) -> u32 {
        match dtype {
            DType::Q8_0 => 1,
            DType::Q4_0 => 2,
            DType::Q4_K => 4,
            DType::Q5_K => 8,
            DType::Q6_K => 16,
            _ => 0,
        }
    }

    /// The mask a module says (`kiln_quant_int8`); None if it names a bit no type has.
    pub fn from_bits(bits: u32) -> Option<Int8Types> {
        (bits & !Self::VNNI.0 == 0).then_some(Int8Types(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether `dtype`'s matmuls take the integer path.
    pub fn has(self, dtype: DType) -> bool {
        self.0 & Self::bit(dtype) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The types' names (`q8_0, q4_0`), or `none`.
impl std::fmt::Display for Int8Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ]
        .into_iter()
        .filter(|d| self.has(*d))
        .map(|d| d.to_string())
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// How quantized weights are multiplied: with `KILN_CPU_QUANT` unset (or `auto`), on the
/// integer path for every type the kernels' ISA has it for ([`Int8Types`]: all five with
/// AVX-512 VNNI, `vpdpbusd`; those of [`Int8Types::AVX2`] with AVX2, `vpmaddubsw` +
/// `vpmaddwd`; activations quantized to int8 per 16 or 32 values), the others by dequantizing
/// to f32 in registers; `dequant` forces the latter for every type (the compile flags then
/// hold `-DKILN_QUANT_DEQUANT`, so the cache key changes with it), `int8` asks for the former
/// and is an error where no type can have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantRequest {
    Auto,
    Int8,
    Dequant,
}

impl QuantRequest {
    /// `KILN_CPU_QUANT` (see [`QuantRequest`]).
    pub fn from_env() -> Result<QuantRequest, IsaError> {
        match std::env::var(QUANT_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(QuantRequest::Auto),
            Ok(v) => QuantRequest::parse(&v),
            Err(e) => Err(IsaError::Unreadable(e)),
        }
    }

    /// A value of `KILN_CPU_QUANT`.
    pub fn parse(v: &str) -> Result<QuantRequest, IsaError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(QuantRequest::Auto),
            "int8" => Ok(QuantRequest::Int8),
            "dequant" | "f32" => Ok(QuantRequest::Dequant),
            other => Err(IsaError::UnknownQuant(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_types_are_the_preludes_bits() {
        let t = Int8Types::from_bits(0b10010).unwrap();
        assert!(t.has(DType::Q4_0) && t.has(DType::Q6_K));
        assert!(!t.has(DType::Q8_0) && !t.has(DType::Q4_K) && !t.has(DType::F32));
        assert_eq!(t.to_string(), "q4_0, q6_k");
        assert_eq!(Int8Types::NONE.to_string(), "none");
        assert_eq!(Int8Types::from_bits(32), None, "no type has bit 5");
        assert_eq!(
            Int8Types::from_bits(Int8Types::VNNI.bits()),
            Some(Int8Types::VNNI)
        );
        // AVX2's types are a subset of VNNI's (every type VNNI has an integer path for).
        assert_eq!(Int8Types::AVX2.bits() & !Int8Types::VNNI.bits(), 0);
    }

    #[test]
    fn the_variable_is_parsed_or_named_in_the_error() {
        assert_eq!(IsaRequest::parse("").unwrap(), IsaRequest::Auto);
        assert_eq!(IsaRequest::parse("Native").unwrap(), IsaRequest::Auto);
        assert_eq!(
            IsaRequest::parse("avx2").unwrap(),
            IsaRequest::Force(Isa::Avx2)
        );
        assert_eq!(
            IsaRequest::parse(" AVX512 ").unwrap(),
            IsaRequest::Force(Isa::Avx512)
        );
        assert_eq!(QuantRequest::parse("").unwrap(), QuantRequest::Auto);
        assert_eq!(QuantRequest::parse("INT8").unwrap(), QuantRequest::Int8);
        assert_eq!(
            QuantRequest::parse("dequant").unwrap(),
            QuantRequest::Dequant
        );
        let q = QuantRequest::parse("int4").unwrap_err().to_string();
        assert!(q.contains("KILN_CPU_QUANT") && q.contains("dequant"), "{q}");
        let e = IsaRequest::parse("sse9").unwrap_err();
        assert_eq!(e, IsaError::Unknown("sse9".into()));
        let e = e.to_string();
        assert!(e.contains("KILN_CPU_ISA") && e.contains("avx2"), "{e}");
    }
}
