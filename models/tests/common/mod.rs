//! Tiny models written at test time: a llama-architecture GGUF with random
//! weights and a byte-level BPE vocabulary in its metadata, and a BERT
//! embedder (safetensors, config.json, tokenizer.json). Nothing is downloaded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

/// ChatML, as SmolLM2 writes it (with its default system prompt).
pub const TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const HIDDEN: usize = 64;
pub const CONTEXT: u32 = 96;

/// GPT-2's byte-to-character table, in byte order.
pub fn byte_chars() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for byte in 0..256u32 {
        if !printable.contains(&byte) {
            printable.push(byte);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = printable.into_iter().zip(chars).collect();
    pairs.sort();
    pairs.into_iter().map(|(_, c)| char::from_u32(c).expect("valid char").to_string()).collect()
}

/// The tiny vocabulary: specials, the 256 byte characters, then a few merges.
pub fn vocabulary() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIALS.len()];
    for c in byte_chars() {
        tokens.push(c);
        types.push(1);
    }
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ a", "o u", "r e", "Ġ s", "Ġs h"];
    for merge in merges {
        let (a, b) = merge.split_once(' ').expect("merge");
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    (tokens, types, merges.iter().map(|s| s.to_string()).collect())
}

fn quantized(shape: (usize, usize), seed: u64, dtype: GgmlDType) -> QTensor {
    let values = pseudo_random(shape.0 * shape.1, seed, 0.08);
    let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
    QTensor::quantize(&tensor, dtype).expect("quantize")
}

fn ones(len: usize) -> QTensor {
    let tensor = Tensor::ones(len, DType::F32, &Device::Cpu).expect("tensor");
    QTensor::quantize(&tensor, GgmlDType::F32).expect("f32 qtensor")
}

/// Deterministic values in [-scale, scale].
pub fn pseudo_random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes a 2-layer llama-shaped GGUF to `path` (with q/k/v biases for
/// `qwen2`); any other `architecture` name lets tests lie.
pub fn write_tiny_gguf(path: &Path, architecture: &str) {
    let (tokens, types, merges) = vocabulary();
    let vocab = tokens.len();
    let (heads, kv_heads, ffn) = (4usize, 2usize, 128usize);
    let head_dim = HIDDEN / heads;
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(architecture.into())),
        (format!("{architecture}.block_count"), Value::U32(2)),
        (format!("{architecture}.context_length"), Value::U32(CONTEXT)),
        (format!("{architecture}.embedding_length"), Value::U32(HIDDEN as u32)),
        (format!("{architecture}.feed_forward_length"), Value::U32(ffn as u32)),
        (format!("{architecture}.attention.head_count"), Value::U32(heads as u32)),
        (format!("{architecture}.attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (format!("{architecture}.rope.dimension_count"), Value::U32(head_dim as u32)),
        (format!("{architecture}.rope.freq_base"), Value::F32(10000.0)),
        (format!("{architecture}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(TEMPLATE.into())),
    ];
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), quantized((vocab, HIDDEN), 1, GgmlDType::Q8_0)),
        ("output_norm.weight".into(), ones(HIDDEN)),
    ];
    for layer in 0..2u64 {
        let p = format!("blk.{layer}");
        let s = 100 * (layer + 1);
        tensors.push((format!("{p}.attn_q.weight"), quantized((HIDDEN, HIDDEN), s + 1, GgmlDType::Q4_1)));
        tensors.push((format!("{p}.attn_k.weight"), quantized((kv_heads * head_dim, HIDDEN), s + 2, GgmlDType::Q4_1)));
        tensors.push((format!("{p}.attn_v.weight"), quantized((kv_heads * head_dim, HIDDEN), s + 3, GgmlDType::Q4_1)));
        tensors.push((format!("{p}.attn_output.weight"), quantized((HIDDEN, HIDDEN), s + 4, GgmlDType::Q4_1)));
        tensors.push((format!("{p}.ffn_gate.weight"), quantized((ffn, HIDDEN), s + 5, GgmlDType::Q4_1)));
        tensors.push((format!("{p}.ffn_up.weight"), quantized((ffn, HIDDEN), s + 6, GgmlDType::Q4_1)));
        tensors.push((format!("{p}.ffn_down.weight"), quantized((HIDDEN, ffn), s + 7, GgmlDType::Q4_1)));
        if architecture == "qwen2" {
            for (name, width) in [("attn_q", HIDDEN), ("attn_k", kv_heads * head_dim), ("attn_v", kv_heads * head_dim)]
            {
                let bias = Tensor::from_vec(pseudo_random(width, s + 9, 0.05), width, &Device::Cpu).expect("bias");
                tensors.push((format!("{p}.{name}.bias"), QTensor::quantize(&bias, GgmlDType::F32).expect("bias")));
            }
        }
        tensors.push((format!("{p}.attn_norm.weight"), ones(HIDDEN)));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(HIDDEN)));
    }
    let mut file = std::fs::File::create(path).expect("create gguf");
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs).expect("write gguf");
}

/// Paths of a tiny BERT embedder.
pub struct TinyBert {
    pub weights: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
}

/// Writes a 2-layer BERT (hidden 32) with a WordPiece tokenizer into `dir`.
pub fn write_tiny_bert(dir: &Path) -> TinyBert {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::Tokenizer;

    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "man", "is", "eating", "food", "bread", "riding", "horse", "the",
        "parcel", "never", "arrived", ".", ",", "##s", "##ing", "u", "##n", "##i", "##c", "##o", "##d", "##e",
    ];
    let vocab: tokenizers::models::bpe::Vocab =
        words.iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
    let model = WordPiece::builder().vocab(vocab).unk_token("[UNK]".into()).build().expect("wordpiece");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, true))).expect("normalizer");
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .expect("template")
            .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
            .build()
            .expect("processor"),
    ));
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer.save(&tokenizer_path, false).expect("save tokenizer");

    let (hidden, inter, layers, vocab_size, positions) = (32usize, 64usize, 2usize, words.len(), 64usize);
    let config = serde_json::json!({
        "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": 4, "intermediate_size": inter, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "max_position_embeddings": positions, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "model_type": "bert"
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("write config");

    let mut seed = 0u64;
    let mut random = |shape: &[usize]| {
        seed += 1;
        let len = shape.iter().product();
        Tensor::from_vec(pseudo_random(len, seed, 0.1), shape, &Device::Cpu).expect("tensor")
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu).expect("ones");
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).expect("zeros");
    tensors.insert("embeddings.word_embeddings.weight".into(), random(&[vocab_size, hidden]));
    tensors.insert("embeddings.position_embeddings.weight".into(), random(&[positions, hidden]));
    tensors.insert("embeddings.token_type_embeddings.weight".into(), random(&[2, hidden]));
    tensors.insert("embeddings.LayerNorm.weight".into(), ones(hidden));
    tensors.insert("embeddings.LayerNorm.bias".into(), zeros(hidden));
    for layer in 0..layers {
        let p = format!("encoder.layer.{layer}");
        for name in ["query", "key", "value"] {
            tensors.insert(format!("{p}.attention.self.{name}.weight"), random(&[hidden, hidden]));
            tensors.insert(format!("{p}.attention.self.{name}.bias"), random(&[hidden]));
        }
        tensors.insert(format!("{p}.attention.output.dense.weight"), random(&[hidden, hidden]));
        tensors.insert(format!("{p}.attention.output.dense.bias"), random(&[hidden]));
        tensors.insert(format!("{p}.attention.output.LayerNorm.weight"), ones(hidden));
        tensors.insert(format!("{p}.attention.output.LayerNorm.bias"), zeros(hidden));
        tensors.insert(format!("{p}.intermediate.dense.weight"), random(&[inter, hidden]));
        tensors.insert(format!("{p}.intermediate.dense.bias"), random(&[inter]));
        tensors.insert(format!("{p}.output.dense.weight"), random(&[hidden, inter]));
        tensors.insert(format!("{p}.output.dense.bias"), random(&[hidden]));
        tensors.insert(format!("{p}.output.LayerNorm.weight"), ones(hidden));
        tensors.insert(format!("{p}.output.LayerNorm.bias"), zeros(hidden));
    }
    let weights_path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights_path).expect("save safetensors");
    TinyBert { weights: weights_path, config: config_path, tokenizer: tokenizer_path }
}

/// Copies the first `keep` bytes of `from` to `to`.
pub fn truncate_copy(from: &Path, to: &Path, keep: usize) {
    let bytes = std::fs::read(from).expect("read");
    std::fs::write(to, &bytes[..keep.min(bytes.len())]).expect("write");
}
