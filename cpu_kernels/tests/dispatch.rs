//! Path selection: parsing, support checks and errors for unknown or unsupported paths.

use specmoe_cpu_kernels::dispatch::{active, detect, resolve, set_active, usable};
use specmoe_cpu_kernels::Isa;

#[test]
fn supported_paths_are_ordered_and_end_with_scalar() {
    let s = Isa::supported();
    assert_eq!(*s.last().unwrap(), Isa::Scalar);
    assert_eq!(detect(), s[0]);
    assert!(s.contains(&active()));
    for isa in &s {
        assert!(isa.is_supported());
        assert_eq!(resolve(isa.name()).unwrap(), *isa);
        assert_eq!(usable(*isa), *isa);
    }
}

#[test]
fn names_parse_case_insensitively() {
    for isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
        assert_eq!(
            Isa::parse(&format!(" {} ", isa.name().to_uppercase())),
            Some(isa)
        );
        assert_eq!(isa.to_string(), isa.name());
    }
    assert_eq!(Isa::parse("sse9"), None);
}

#[test]
fn unknown_path_is_an_error() {
    let e = resolve("sse9").unwrap_err();
    assert!(e.to_string().contains("unknown ISA path 'sse9'"), "{e}");
}

#[test]
fn unsupported_path_is_an_error_not_a_crash() {
    // NEON on x86-64, the x86 paths on aarch64: at least one path is always missing.
    let missing: Vec<Isa> = Isa::ALL.into_iter().filter(|i| !i.is_supported()).collect();
    assert!(!missing.is_empty());
    for isa in missing {
        let e = resolve(isa.name()).unwrap_err();
        assert!(e.to_string().contains("not supported by this CPU"), "{e}");
        assert!(
            e.to_string().contains("scalar"),
            "lists the supported paths: {e}"
        );
        let e = set_active(isa).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert_eq!(usable(isa), Isa::Scalar);
    }
    // A failed set_active leaves the active path alone.
    assert!(active().is_supported());
}

#[test]
fn set_active_accepts_a_supported_path() {
    let before = active();
    set_active(detect()).unwrap();
    assert_eq!(active(), detect());
    set_active(before).unwrap();
}
