//! The command line end to end: generate (text and JSON, batch input), logits, bench.

mod common;

use common::{fixture, max_abs_diff, reference};
use std::process::Command;

fn specmoe(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_specmoe"))
        .args(args)
        .output()
        .expect("run specmoe");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "specmoe {args:?} failed: {se}");
    (so, se)
}

/// Runs specmoe with `args`, expecting it to fail: whether it succeeded, and its stderr.
fn specmoe_stderr(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_specmoe"))
        .args(args)
        .output()
        .expect("run specmoe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn generate_json_matches_reference_greedy() {
    let r = reference("mixtral");
    let dir = fixture("mixtral");
    let ids: Vec<String> = r.input_ids.iter().map(|x| x.to_string()).collect();
    let (out, err) = specmoe(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--token-ids",
        &ids.join(","),
        "--max-new-tokens",
        "32",
        "--ignore-eos",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let got: Vec<u32> = v["output_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, r.greedy_ids);
    assert_eq!(v["prompt_ids"].as_array().unwrap().len(), r.input_ids.len());
    assert!(v["stats"]["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(err.contains("decode:"), "stats line on stderr: {err}");
}

#[test]
fn generate_text_and_jsonl_batch() {
    let dir = fixture("llama");
    let m = dir.to_str().unwrap();
    let (out, err) = specmoe(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "The quick brown fox",
        "--max-new-tokens",
        "8",
        "--ignore-eos",
    ]);
    assert!(!out.trim().is_empty(), "text output");
    assert!(err.contains("prompt tokens:"), "{err}");
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("p.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"Hello there\"}\n\n{\"prompt\": \"A longer prompt for the batch\"}\n",
    )
    .unwrap();
    let (out, _) = specmoe(&[
        "generate",
        "--model",
        m,
        "--input",
        input.to_str().unwrap(),
        "--max-new-tokens",
        "5",
        "--ignore-eos",
        "--format",
        "json",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["output_ids"].as_array().unwrap().len(), 5);
        assert!(l["text"].is_string());
    }
}

#[test]
fn logits_command_matches_reference() {
    let r = reference("qwen3_moe");
    let dir = fixture("qwen3_moe");
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("l.safetensors");
    let ids: Vec<String> = r.input_ids.iter().map(|x| x.to_string()).collect();
    specmoe(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--token-ids",
        &ids.join(","),
        "--out",
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let l = st.tensor("logits").unwrap();
    assert_eq!(
        l.shape(),
        &[r.input_ids.len(), r.logits.len() / r.input_ids.len()]
    );
    let got: Vec<f32> = l
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(max_abs_diff(&got, &r.logits) <= 1e-4);
    assert_eq!(
        st.tensor("input_ids").unwrap().shape(),
        &[r.input_ids.len()]
    );
}

#[test]
fn logits_from_prompt_text_uses_the_tokenizer() {
    let dir = fixture("mixtral");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let prompt = json["prompt_a"].as_str().unwrap();
    let r = reference("mixtral");
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("l.safetensors");
    specmoe(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        prompt,
        "--out",
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> = st
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    assert_eq!(ids, r.input_ids, "tokenizer(prompt_a) as transformers");
}

#[test]
fn bench_on_a_checkpoint_reports_json() {
    let dir = fixture("mixtral");
    let (out, _) = specmoe(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--batch",
        "2",
        "--prompt-len",
        "8",
        "--gen-len",
        "4",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["weight_gbps"].as_f64().unwrap() > 0.0);
    assert_eq!(v["stats"]["generated_tokens"].as_u64().unwrap(), 8);
}

#[test]
fn generate_without_model_uses_the_bundled_one() {
    let (out, err) = specmoe(&[
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "6",
    ]);
    assert!(err.contains("bundled model"), "{err}");
    assert!(!out.is_empty());
}

#[test]
fn bench_kernels_reports_named_entries() {
    let (out, _) = specmoe(&[
        "bench",
        "kernels",
        "--quick",
        "--format",
        "json",
        "--threads",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["ceilings"]["dram_read"][0]["gbps"].as_f64().unwrap() > 0.0);
    let names: Vec<&str> = v["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    for want in [
        "matmul_bf16_t1",
        "matmul_bf16_t8",
        "matmul_bf16_t64",
        "attn_verify_n1_l2048",
        "attn_verify_n8_l2048",
        "attn_verify_n1_l2048_hm",
        "attn_verify_n8_l2048_bf16_hm",
    ] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
    for k in v["kernels"].as_array().unwrap() {
        assert!(k["seconds"].as_f64().unwrap() > 0.0);
        assert!(["memory", "compute"].contains(&k["bound"].as_str().unwrap()));
    }
}

#[test]
fn bare_draft_flag_uses_the_bundled_draft() {
    let t = tempfile::tempdir().unwrap();
    // A bare --draft resolves to $SPECMOE_DRAFT (here a fixture sharing the target's tokenizer).
    let out = Command::new(env!("CARGO_BIN_EXE_specmoe"))
        .env("SPECMOE_DRAFT", fixture("llama"))
        .args([
            "generate",
            "--model",
            fixture("mixtral").to_str().unwrap(),
            "--token-ids",
            "1,5,9",
            "--max-new-tokens",
            "6",
            "--draft",
            "--format",
            "json",
        ])
        .current_dir(t.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("bundled draft"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert!(v["stats"]["speculative"]["target_steps"].as_u64().unwrap() >= 1);
}

#[test]
fn mismatched_draft_tokenizer_is_refused() {
    let d = common::copy_fixture("llama");
    let p = d.path().join("tokenizer.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let key = vocab.keys().find(|k| k.len() > 2).unwrap().clone();
    let id = vocab.remove(&key).unwrap();
    vocab.insert(format!("{key}X"), id);
    std::fs::write(&p, v.to_string()).unwrap();
    let (ok, err) = specmoe_stderr(&[
        "generate",
        "--model",
        fixture("mixtral").to_str().unwrap(),
        "--token-ids",
        "1,5",
        "--draft",
        d.path().to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("tokenizer") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bench_with_a_draft_reports_each_draft_length_over_rounds() {
    let (out, _) = specmoe(&[
        "bench",
        "--model",
        fixture("mixtral").to_str().unwrap(),
        "--draft",
        fixture("llama").to_str().unwrap(),
        "--draft-len",
        "1,auto",
        "--repeat",
        "2",
        "--prompt-len",
        "6",
        "--gen-len",
        "8",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rounds"].as_u64(), Some(2));
    assert_eq!(v["serial_draft_len"].as_str(), Some("auto"));
    let rows = v["speculative"].as_array().unwrap();
    let lens: Vec<&str> = rows
        .iter()
        .map(|r| r["draft_len"].as_str().unwrap())
        .collect();
    assert_eq!(lens, ["1", "auto"]);
    for r in rows {
        assert_eq!(r["identical_output"].as_bool(), Some(true), "{r}");
        let acc = r["acceptance_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r}");
        assert!(r["speedup"].as_f64().unwrap() > 0.0, "{r}");
        // Each step commits between 1 and k + 1 tokens per sequence.
        let tps = r["tokens_per_step"].as_f64().unwrap();
        assert!(
            tps >= 1.0 && tps <= r["mean_draft_len"].as_f64().unwrap() + 1.0,
            "{r}"
        );
    }
    // k = 1: 7 decode tokens after the first need between 4 and 7 target steps.
    let steps = rows[0]["target_steps"].as_u64().unwrap();
    assert!((4..=7).contains(&steps), "{}", rows[0]);
}

#[test]
fn bench_refuses_zero_rounds() {
    let (ok, err) = specmoe_stderr(&[
        "bench",
        "--model",
        fixture("mixtral").to_str().unwrap(),
        "--repeat",
        "0",
    ]);
    assert!(!ok && err.contains("--repeat"), "{err}");
}

#[test]
fn draft_vocab_flag_restricts_the_bundled_draft_head() {
    // The bundled draft ships token_counts.json: `auto` uses its 1024 most frequent tokens,
    // `all` the whole head; the output is the target's either way.
    let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let run = |vocab: &str| {
        let (out, _) = specmoe(&[
            "bench",
            "--model",
            model.join("tiny-mixtral").to_str().unwrap(),
            "--draft",
            model.join("tiny-draft").to_str().unwrap(),
            "--draft-vocab",
            vocab,
            "--draft-len",
            "2",
            "--repeat",
            "1",
            "--prompt-len",
            "6",
            "--gen-len",
            "12",
            "--format",
            "json",
        ]);
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let auto = run("auto");
    assert_eq!(auto["draft_vocab"].as_u64(), Some(1024));
    assert_eq!(
        auto["speculative"][0]["identical_output"].as_bool(),
        Some(true)
    );
    let all = run("all");
    assert!(all.get("draft_vocab").is_none(), "{all}");
    // A number without token_counts.json beside the draft, and a bad value, are errors.
    for (draft, vocab, want) in [
        (fixture("llama"), "16", "token_counts.json"),
        (model.join("tiny-draft"), "zero", "--draft-vocab"),
    ] {
        let (ok, err) = specmoe_stderr(&[
            "generate",
            "--model",
            fixture("mixtral").to_str().unwrap(),
            "--draft",
            draft.to_str().unwrap(),
            "--draft-vocab",
            vocab,
            "--token-ids",
            "1,2,3",
            "--max-new-tokens",
            "2",
        ]);
        assert!(!ok && err.contains(want), "{err}");
    }
}

#[test]
fn serial_draft_len_flag_is_checked_and_keeps_the_output() {
    // A cap of 1 (every serial block one draft) or `auto`: the same greedy text either way;
    // 0 or a word is refused with the flag's name, on `generate` and `bench` alike.
    let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let (t, d) = (model.join("tiny-mixtral"), model.join("tiny-draft"));
    let run = |cap: &str| {
        specmoe(&[
            "generate",
            "--model",
            t.to_str().unwrap(),
            "--draft",
            d.to_str().unwrap(),
            "--serial-draft-len",
            cap,
            "--draft-overlap",
            "on",
            "--prompt",
            "Lists are",
            "--max-new-tokens",
            "12",
            "--format",
            "json",
        ])
        .0
    };
    let ids = |out: String| {
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["output_ids"].clone()
    };
    let (one, auto) = (ids(run("1")), ids(run("auto")));
    assert_eq!(one.as_array().map(|a| a.len()), Some(12), "{one}");
    assert_eq!(one, auto);
    for cmd in ["generate", "bench"] {
        for bad in ["0", "some"] {
            let (ok, err) = specmoe_stderr(&[
                cmd,
                "--model",
                t.to_str().unwrap(),
                "--draft",
                d.to_str().unwrap(),
                "--serial-draft-len",
                bad,
                "--prompt",
                "Lists are",
            ]);
            assert!(
                !ok && err.contains("--serial-draft-len") && !err.contains("panicked"),
                "{cmd} {bad}: {err}"
            );
        }
    }
}
