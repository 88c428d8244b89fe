//! Tiny models written at test time: GGUF chat models (llama, qwen2, phi3,
//! gemma3) with random weights and a byte-level BPE vocabulary in their
//! metadata, and a BERT embedder (safetensors, config.json, tokenizer.json).
//! Nothing is downloaded.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use aios_models::cpu::test_values;
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
    let values = test_values(seed, shape.0 * shape.1, 0.08);
    let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
    QTensor::quantize(&tensor, dtype).expect("quantize")
}

fn ones(len: usize) -> QTensor {
    let tensor = Tensor::ones(len, DType::F32, &Device::Cpu).expect("tensor");
    QTensor::quantize(&tensor, GgmlDType::F32).expect("f32 qtensor")
}

/// Layers, attention heads, key/value heads and feed-forward width of every
/// tiny GGUF.
const LAYERS: u64 = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 128;
/// Per-head width of the llama, qwen2 and phi3 files.
pub const HEAD_DIM: usize = HIDDEN / HEADS;
/// gemma3's per-head width (`gemma3.attention.key_length`), deliberately not
/// `HIDDEN / HEADS`: real gemma3 files have `heads * key_length` different
/// from `embedding_length` too.
pub const GEMMA3_HEAD_DIM: usize = 32;
/// The tiny gemma3 file is shaped like Gemma 3 1B: its `context_length`
/// (32768 there) is longer than the `attention.sliding_window` of its local
/// layers (512 there), which is `CONTEXT`.
pub const GEMMA3_LONG_CONTEXT: u32 = 2 * CONTEXT;
/// The tiny phi3 file is shaped like Phi-3.5-mini: its `context_length`
/// (131072 there) is the long-rope one, and
/// `rope.scaling.original_context_length` (4096 there) is `CONTEXT`.
pub const PHI3_LONG_CONTEXT: u32 = 8 * CONTEXT;

/// A tiny GGUF with random weights, assembled in memory: the shared
/// vocabulary and template, then exactly the metadata keys and tensor names
/// the loader of its `general.architecture` reads. Tests may change a key
/// with [`TinyGguf::set`] before [`TinyGguf::write`].
pub struct TinyGguf {
    architecture: String,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<(String, QTensor)>,
}

impl TinyGguf {
    /// Two layers of `architecture`: `llama`, `qwen2` (llama plus q/k/v
    /// biases), `phi3` (fused `attn_qkv`, fused gate+up `ffn_up`, its own
    /// `output`) or `gemma3` (q/k norms, post-attention and post-feed-forward
    /// norms, sliding-window layers, tied output). Any other name gets
    /// llama's layout, so tests can lie about the architecture.
    pub fn new(architecture: &str) -> Self {
        let mut gguf = Self { architecture: architecture.into(), metadata: tokenizer_metadata(), tensors: Vec::new() };
        let vocab = vocabulary().0.len();
        gguf.set("general.architecture", Value::String(architecture.into()));
        for (key, value) in [
            ("block_count", LAYERS as usize),
            ("context_length", CONTEXT as usize),
            ("embedding_length", HIDDEN),
            ("feed_forward_length", FFN),
            ("attention.head_count", HEADS),
            ("attention.head_count_kv", KV_HEADS),
        ] {
            gguf.set_arch(key, Value::U32(value as u32));
        }
        gguf.set_arch("attention.layer_norm_rms_epsilon", Value::F32(1e-5));
        gguf.matrix("token_embd.weight".into(), (vocab, HIDDEN), 1, GgmlDType::Q8_0);
        gguf.norm("output_norm.weight".into(), HIDDEN);
        let head_dim = match architecture {
            "phi3" => {
                // candle's phi3 reads neither `rope.freq_base` (it rotates with
                // base 10 000) nor `original_context_length`; our loader does.
                gguf.set_arch("context_length", Value::U32(PHI3_LONG_CONTEXT));
                gguf.set_arch("rope.scaling.original_context_length", Value::U32(CONTEXT));
                gguf.set_arch("rope.dimension_count", Value::U32(HEAD_DIM as u32));
                gguf.set_arch("rope.freq_base", Value::F32(10_000.0));
                gguf.matrix("output.weight".into(), (vocab, HIDDEN), 2, GgmlDType::Q4_1);
                HEAD_DIM
            }
            "gemma3" => {
                gguf.set_arch("attention.key_length", Value::U32(GEMMA3_HEAD_DIM as u32));
                gguf.set_arch("attention.value_length", Value::U32(GEMMA3_HEAD_DIM as u32));
                gguf.set_arch("context_length", Value::U32(GEMMA3_LONG_CONTEXT));
                gguf.set_arch("attention.sliding_window", Value::U32(CONTEXT));
                // Real files leave this to candle's default of 6 (five local
                // layers, then a global one); 2 makes layer 0 local and layer 1
                // global, so both kinds run.
                gguf.set_arch("attention.sliding_window_type", Value::U32(2));
                gguf.set_arch("rope.freq_base", Value::F32(1_000_000.0));
                gguf.set_arch("rope.local_freq_base", Value::F32(10_000.0));
                GEMMA3_HEAD_DIM
            }
            _ => {
                gguf.set_arch("rope.dimension_count", Value::U32(HEAD_DIM as u32));
                gguf.set_arch("rope.freq_base", Value::F32(10_000.0));
                HEAD_DIM
            }
        };
        let (q_width, kv_width) = (HEADS * head_dim, KV_HEADS * head_dim);
        for layer in 0..LAYERS {
            let name = |tensor: &str| format!("blk.{layer}.{tensor}.weight");
            let s = 100 * (layer + 1);
            if architecture == "phi3" {
                // q, k and v rows in one matrix; gate rows, then up rows.
                gguf.matrix(name("attn_qkv"), (q_width + 2 * kv_width, HIDDEN), s + 1, GgmlDType::Q4_1);
                gguf.matrix(name("ffn_up"), (2 * FFN, HIDDEN), s + 6, GgmlDType::Q4_1);
            } else {
                gguf.matrix(name("attn_q"), (q_width, HIDDEN), s + 1, GgmlDType::Q4_1);
                gguf.matrix(name("attn_k"), (kv_width, HIDDEN), s + 2, GgmlDType::Q4_1);
                gguf.matrix(name("attn_v"), (kv_width, HIDDEN), s + 3, GgmlDType::Q4_1);
                gguf.matrix(name("ffn_gate"), (FFN, HIDDEN), s + 5, GgmlDType::Q4_1);
                gguf.matrix(name("ffn_up"), (FFN, HIDDEN), s + 6, GgmlDType::Q4_1);
            }
            gguf.matrix(name("attn_output"), (HIDDEN, q_width), s + 4, GgmlDType::Q4_1);
            gguf.matrix(name("ffn_down"), (HIDDEN, FFN), s + 7, GgmlDType::Q4_1);
            gguf.norm(name("attn_norm"), HIDDEN);
            gguf.norm(name("ffn_norm"), HIDDEN);
            if architecture == "qwen2" {
                for (tensor, width) in [("attn_q", q_width), ("attn_k", kv_width), ("attn_v", kv_width)] {
                    let bias = Tensor::from_vec(test_values(s + 9, width, 0.05), width, &Device::Cpu).expect("bias");
                    let bias = QTensor::quantize(&bias, GgmlDType::F32).expect("bias");
                    gguf.tensors.push((format!("blk.{layer}.{tensor}.bias"), bias));
                }
            }
            if architecture == "gemma3" {
                gguf.norm(name("attn_q_norm"), head_dim);
                gguf.norm(name("attn_k_norm"), head_dim);
                gguf.norm(name("post_attention_norm"), HIDDEN);
                gguf.norm(name("post_ffw_norm"), HIDDEN);
            }
        }
        gguf
    }

    /// Sets (or replaces) a metadata key.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.insert(key.to_owned(), value);
        self
    }

    /// Sets `{architecture}.{key}`.
    pub fn set_arch(&mut self, key: &str, value: Value) -> &mut Self {
        let key = format!("{}.{key}", self.architecture);
        self.set(&key, value)
    }

    fn matrix(&mut self, name: String, shape: (usize, usize), seed: u64, dtype: GgmlDType) {
        self.tensors.push((name, quantized(shape, seed, dtype)));
    }

    fn norm(&mut self, name: String, len: usize) {
        self.tensors.push((name, ones(len)));
    }

    /// Re-encodes every matrix (every 2-D tensor) as `dtype`, through its
    /// current values.
    pub fn convert(&mut self, dtype: GgmlDType) -> &mut Self {
        for (_, tensor) in &mut self.tensors {
            if tensor.shape().rank() == 2 {
                let values = tensor.dequantize(&Device::Cpu).expect("dequantize");
                *tensor = QTensor::quantize(&values, dtype).expect("quantize");
            }
        }
        self
    }

    /// Writes the file.
    pub fn write(&self, path: &Path) {
        let mut file = std::fs::File::create(path).expect("create gguf");
        let metadata: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut file, &metadata, &tensors).expect("write gguf");
    }
}

/// Writes a two-layer GGUF of `architecture` with random weights to `path`
/// (see [`TinyGguf::new`]).
pub fn write_tiny_gguf(path: &Path, architecture: &str) {
    TinyGguf::new(architecture).write(path);
}

/// The metadata every tiny GGUF shares: byte-level BPE vocabulary, special
/// token ids and the ChatML template.
fn tokenizer_metadata() -> BTreeMap<String, Value> {
    let (tokens, types, merges) = vocabulary();
    let strings = |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
    BTreeMap::from([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(TEMPLATE.into())),
    ])
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
        Tensor::from_vec(test_values(seed, len, 0.1), shape, &Device::Cpu).expect("tensor")
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
