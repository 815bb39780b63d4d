//! Shared helpers of the integration tests: fixture paths and reference outputs written by
//! `tools/make_fixtures.py` (transformers' own outputs).
#![allow(dead_code)]

use safetensors::SafeTensors;
use std::path::PathBuf;

/// Every fixture directory under `tests/fixtures`.
pub const FIXTURES: [&str; 10] = [
    "mixtral",
    "mixtral_sharded",
    "mixtral_bf16",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
];

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// Reference outputs of one fixture.
pub struct Reference {
    pub input_ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub input_ids_b: Vec<u32>,
    pub logits_b: Vec<f32>,
    pub greedy_ids: Vec<u32>,
    pub greedy_ids_b: Vec<u32>,
    /// `[n_moe_layers, n_a, top_k]` expert ids, largest weight first.
    pub router_topk: Option<(Vec<usize>, Vec<i64>)>,
    pub router_weights: Option<Vec<f32>>,
    pub router_layers: Option<Vec<i64>>,
}

fn i64s(st: &SafeTensors<'_>, name: &str) -> Option<(Vec<usize>, Vec<i64>)> {
    let t = st.tensor(name).ok()?;
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Some((t.shape().to_vec(), v))
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Option<Vec<f32>> {
    let t = st.tensor(name).ok()?;
    Some(
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

fn ids(st: &SafeTensors<'_>, name: &str) -> Vec<u32> {
    i64s(st, name)
        .unwrap_or_else(|| panic!("reference lacks {name}"))
        .1
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// Loads `tests/fixtures/<name>/reference.safetensors`.
pub fn reference(name: &str) -> Reference {
    let bytes =
        std::fs::read(fixture(name).join("reference.safetensors")).expect("reference.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("valid reference");
    Reference {
        input_ids: ids(&st, "input_ids"),
        logits: f32s(&st, "logits").expect("logits"),
        input_ids_b: ids(&st, "input_ids_b"),
        logits_b: f32s(&st, "logits_b").expect("logits_b"),
        greedy_ids: ids(&st, "greedy_ids"),
        greedy_ids_b: ids(&st, "greedy_ids_b"),
        router_topk: i64s(&st, "router_topk"),
        router_weights: f32s(&st, "router_weights"),
        router_layers: i64s(&st, "router_layers").map(|x| x.1),
    }
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Copies a fixture to a fresh temporary directory (for tests that damage it).
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}
