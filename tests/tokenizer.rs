//! Tokenizer: prompts encode as transformers' `tokenizer(text)`; streamed decoding emits only
//! complete UTF-8 and reassembles the full text.

mod common;

use common::{fixture, reference};
use specmoe::tokenizer::{StreamDecoder, Tokenizer};

#[test]
fn encoding_matches_transformers_with_and_without_bos() {
    for name in ["mixtral", "qwen2_moe"] {
        let dir = fixture(name);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let r = reference(name);
        assert_eq!(
            tok.encode(json["prompt_a"].as_str().unwrap()).unwrap(),
            r.input_ids,
            "{name} prompt A"
        );
        assert_eq!(
            tok.encode(json["prompt_b"].as_str().unwrap()).unwrap(),
            r.input_ids_b,
            "{name} prompt B"
        );
    }
    // Mixtral-style tokenizers add BOS (id 1), Qwen-style ones do not.
    assert_eq!(reference("mixtral").input_ids[0], 1);
    assert_ne!(reference("qwen2_moe").input_ids[0], 1);
}

#[test]
fn stream_decoding_emits_whole_characters() {
    let tok = Tokenizer::from_dir(&fixture("mixtral")).unwrap();
    let text = "Café ☕ naïve — 日本";
    let ids = tok.encode(text).unwrap();
    let mut dec = StreamDecoder::new();
    let mut pieces = Vec::new();
    let mut held_back = 0;
    for &id in &ids[1..] {
        match dec.push(&tok, id).unwrap() {
            Some(p) => pieces.push(p),
            None => held_back += 1,
        }
    }
    if let Some(p) = dec.finish(&tok).unwrap() {
        pieces.push(p);
    }
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    // The byte-level BPE splits some multi-byte characters across tokens.
    assert!(
        held_back > 0,
        "expected at least one incomplete character to be held back"
    );
}
