//! Bad input gets a clear error naming the file, tensor or flag, a non-zero exit, and never a
//! panic. Each case damages a private copy of a fixture.

mod common;

use common::{copy_fixture, fixture};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::path::Path;
use std::process::Command;

fn specmoe(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_specmoe"))
        .args(args)
        .output()
        .expect("run specmoe");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("panicked"),
        "specmoe panicked on {args:?}: {stderr}"
    );
    (out.status.success(), stderr)
}

fn expect_error(args: &[&str], needles: &[&str]) {
    let (ok, err) = specmoe(args);
    assert!(!ok, "specmoe {args:?} should fail");
    for n in needles {
        assert!(
            err.contains(n),
            "error for {args:?} should mention '{n}': {err}"
        );
    }
}

fn generate_ids(dir: &Path) -> Vec<String> {
    [
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--token-ids",
        "1,5,9",
        "--max-new-tokens",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

fn run_generate(dir: &Path, needles: &[&str]) {
    let args = generate_ids(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_error(&args, needles);
}

/// Rewrites `model.safetensors` of `dir` with `edit` applied to the tensor list.
fn rewrite(dir: &Path, edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut ts);
    let views: Vec<(String, TensorView<'_>)> = ts
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

const TARGET: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn missing_safetensors_file() {
    let d = copy_fixture("mixtral");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    run_generate(d.path(), &["no model.safetensors"]);
}

#[test]
fn truncated_safetensors_file() {
    let d = copy_fixture("mixtral");
    let p = d.path().join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len / 2).unwrap();
    run_generate(d.path(), &["model.safetensors", "truncated"]);
}

#[test]
fn missing_shard_of_sharded_checkpoint() {
    let d = copy_fixture("mixtral_sharded");
    let shard = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("model-0000")
        })
        .expect("a shard");
    std::fs::remove_file(&shard).unwrap();
    run_generate(
        d.path(),
        &["missing", shard.file_name().unwrap().to_str().unwrap()],
    );
}

#[test]
fn tensor_with_wrong_shape() {
    let d = copy_fixture("mixtral");
    rewrite(d.path(), |ts| {
        let t = ts.iter_mut().find(|t| t.0 == TARGET).unwrap();
        let rows = t.2[0];
        t.2 = vec![rows / 2, t.2[1] * 2];
    });
    run_generate(d.path(), &[TARGET, "shape"]);
}

#[test]
fn tensor_with_wrong_dtype() {
    let d = copy_fixture("mixtral");
    rewrite(d.path(), |ts| {
        let t = ts.iter_mut().find(|t| t.0 == TARGET).unwrap();
        t.1 = Dtype::I32;
    });
    run_generate(d.path(), &[TARGET, "dtype"]);
}

#[test]
fn missing_tensor() {
    let d = copy_fixture("mixtral");
    rewrite(d.path(), |ts| ts.retain(|t| t.0 != TARGET));
    run_generate(d.path(), &[TARGET, "missing"]);
}

#[test]
fn unknown_architecture() {
    let d = copy_fixture("mixtral");
    let p = d.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["architectures"] = serde_json::json!(["GptOssForCausalLM"]);
    std::fs::write(&p, v.to_string()).unwrap();
    run_generate(
        d.path(),
        &["config.json", "unknown architecture", "GptOssForCausalLM"],
    );
}

#[test]
fn unreadable_tokenizer() {
    let d = copy_fixture("mixtral");
    std::fs::write(d.path().join("tokenizer.json"), "{ this is not a tokenizer").unwrap();
    expect_error(
        &[
            "generate",
            "--model",
            d.path().to_str().unwrap(),
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "2",
        ],
        &["tokenizer.json"],
    );
}

#[test]
fn prompt_longer_than_context() {
    let dir = fixture("mixtral");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ctx = cfg["max_position_embeddings"].as_u64().unwrap() as usize;
    let ids = vec!["5"; ctx + 1].join(",");
    expect_error(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--token-ids",
            &ids,
            "--max-new-tokens",
            "1",
        ],
        &["context"],
    );
}

#[test]
fn token_ids_outside_the_vocabulary() {
    let dir = fixture("mixtral");
    expect_error(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--token-ids",
            "1,999999",
            "--max-new-tokens",
            "1",
        ],
        &["999999", "vocabulary"],
    );
    expect_error(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--token-ids",
            "1,x",
        ],
        &["--token-ids", "'x'"],
    );
}

#[test]
fn unwritable_logits_out() {
    let dir = fixture("mixtral");
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-dir").join("l.safetensors");
    expect_error(
        &[
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--token-ids",
            "1,2",
            "--out",
            missing.to_str().unwrap(),
        ],
        &["--out", "does not exist"],
    );
    // An existing file is left untouched when the run fails (here: bad token id).
    let existing = t.path().join("keep.safetensors");
    std::fs::write(&existing, b"precious").unwrap();
    expect_error(
        &[
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--token-ids",
            "999999",
            "--out",
            existing.to_str().unwrap(),
        ],
        &["vocabulary"],
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
}

#[test]
fn bad_flags() {
    let dir = fixture("mixtral");
    let m = dir.to_str().unwrap();
    expect_error(
        &["generate", "--model", m, "--prompt", "x", "--top-p", "0"],
        &["--top-p"],
    );
    expect_error(
        &["generate", "--model", m, "--prompt", "x", "--isa", "sse9"],
        &["--isa", "sse9"],
    );
    expect_error(
        &["bench", "--shape", "mixtral-9x9b"],
        &["--shape", "mixtral-9x9b"],
    );
    expect_error(
        &["generate", "--model", "/nonexistent/model", "--prompt", "x"],
        &["/nonexistent/model"],
    );
}
