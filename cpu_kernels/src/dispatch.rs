//! Run-time choice of the instruction-set path.
//!
//! The path is detected once ([`detect`]) and can be overridden with the environment
//! variable `SPECMOE_ISA` (`scalar`, `avx2`, `avx512`, `neon`) or [`set_active`] (the CLI's
//! `--isa` flag). Asking for a path the CPU cannot run is an error, never a crash.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set path of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar reference; always available.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F (with AVX2/FMA/F16C).
    Avx512,
    /// aarch64 Advanced SIMD (with fp16 conversions).
    Neon,
}

impl Isa {
    /// All paths, fastest first.
    pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar];

    /// Name used by `SPECMOE_ISA`, `--isa` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parses a name as printed by [`Isa::name`].
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && Isa::Avx2.is_supported(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The paths this CPU can run, fastest first (always ends with `Scalar`).
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    fn to_u8(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
            Isa::Neon => 4,
        }
    }

    fn from_u8(v: u8) -> Option<Isa> {
        Some(match v {
            1 => Isa::Scalar,
            2 => Isa::Avx2,
            3 => Isa::Avx512,
            4 => Isa::Neon,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Error from asking for a path that does not exist or that this CPU cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsaError(pub String);

impl std::fmt::Display for IsaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IsaError {}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The fastest path this CPU supports.
pub fn detect() -> Isa {
    Isa::supported()[0]
}

/// Parses a path name and checks that this CPU can run it.
///
/// Errors: an unknown name, or a path the CPU lacks (the message lists the supported ones).
pub fn resolve(name: &str) -> Result<Isa, IsaError> {
    let isa = Isa::parse(name).ok_or_else(|| {
        IsaError(format!(
            "unknown ISA path '{name}': expected one of scalar, avx2, avx512, neon"
        ))
    })?;
    if !isa.is_supported() {
        let sup: Vec<_> = Isa::supported().iter().map(|i| i.name()).collect();
        return Err(IsaError(format!(
            "ISA path '{name}' is not supported by this CPU (supported: {})",
            sup.join(", ")
        )));
    }
    Ok(isa)
}

/// Sets the path used by the kernels' plain entry points.
///
/// Errors: the CPU cannot run `isa`.
pub fn set_active(isa: Isa) -> Result<(), IsaError> {
    if !isa.is_supported() {
        return Err(IsaError(format!(
            "ISA path '{isa}' is not supported by this CPU"
        )));
    }
    ACTIVE.store(isa.to_u8(), Ordering::Relaxed);
    Ok(())
}

/// `isa` if this CPU can run it, else [`Isa::Scalar`]: what every `*_with` entry point
/// actually runs, so asking for a missing path degrades to the portable code instead of
/// executing an unsupported instruction.
pub fn usable(isa: Isa) -> Isa {
    if isa.is_supported() {
        isa
    } else {
        Isa::Scalar
    }
}

/// The path in use: set by [`set_active`], else `SPECMOE_ISA`, else [`detect`].
///
/// An invalid `SPECMOE_ISA` falls back to detection with a warning on stderr.
pub fn active() -> Isa {
    if let Some(isa) = Isa::from_u8(ACTIVE.load(Ordering::Relaxed)) {
        return isa;
    }
    let isa = match std::env::var("SPECMOE_ISA") {
        Ok(v) if !v.is_empty() => match resolve(&v) {
            Ok(isa) => isa,
            Err(e) => {
                eprintln!("warning: SPECMOE_ISA: {e}; using the detected path");
                detect()
            }
        },
        _ => detect(),
    };
    ACTIVE.store(isa.to_u8(), Ordering::Relaxed);
    isa
}
