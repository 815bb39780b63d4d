//! Loading: small checkpoints are copied so that every tensor starts on a cache line, with
//! the bytes of the file unchanged.

use safetensors::SafeTensors;
use specmoe::checkpoint::load_tensors;
use std::path::Path;

#[test]
fn small_checkpoint_tensors_are_cache_line_aligned_and_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mixtral_bf16");
    let file = std::fs::read(dir.join("model.safetensors")).expect("fixture");
    let st = SafeTensors::deserialize(&file).expect("valid fixture");
    let header = 8 + u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    // The file itself places some tensor off a 64-byte boundary (so the copy is exercised).
    let misaligned = st.tensors().iter().any(|(_, v)| {
        let off = v.data().as_ptr() as usize - file.as_ptr() as usize;
        assert!(off >= header);
        !off.is_multiple_of(64)
    });
    assert!(misaligned, "fixture has no misaligned tensor; pick another");
    let store = load_tensors(&dir).expect("load");
    assert_eq!(store.len(), st.len());
    for (name, view) in st.tensors() {
        let t = store
            .get(&name, view.shape())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.bytes().as_ptr() as usize % 64, 0, "{name} is not aligned");
        assert_eq!(t.bytes(), view.data(), "{name}: bytes differ from the file");
    }
}
