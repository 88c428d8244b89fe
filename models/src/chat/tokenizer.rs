//! Builds a Hugging Face `tokenizers::Tokenizer` from the vocabulary stored in
//! a GGUF file's metadata (`tokenizer.ggml.*`), since GGUF chat models ship no
//! `tokenizer.json`. Byte-level BPE (`tokenizer.ggml.model = "gpt2"`, whose
//! pre-tokenizer follows `tokenizer.ggml.pre` the way llama.cpp does, e.g.
//! `smollm`: every digit on its own, then GPT-2 byte-level splitting without a
//! leading space) and SentencePiece BPE (`"llama"`, with byte fallback) are
//! supported.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{self, NormalizerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::ModelError;

/// llama.cpp's token type for control tokens (`<|im_start|>` and friends).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's token type for user-defined tokens (matched verbatim).
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The GPT-2 regex with case-insensitive contractions, as llama 3 uses it.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's variant: digits one at a time.
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus the special-token facts the chat engine needs.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The Hugging Face tokenizer built from the metadata.
    pub tokenizer: Tokenizer,
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<(u32, String)>,
    /// End-of-sequence token, if the model has one.
    pub eos: Option<(u32, String)>,
    /// Whether the model expects BOS to be prepended to every prompt.
    pub add_bos: bool,
    /// Tokens that end an assistant turn (EOS, EOT and known end markers).
    pub end_of_turn: Vec<u32>,
}

impl GgufTokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_metadata(metadata: &HashMap<String, Value>) -> Result<Self, ModelError> {
        let model = string(metadata, "tokenizer.ggml.model").unwrap_or_default();
        let tokens = string_array(metadata, "tokenizer.ggml.tokens")?;
        let token_types: Vec<i32> = match metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|v| v.to_i32().map_err(tok_err))
                .collect::<Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
        let (mut tokenizer, add_bos_default) = match model.as_str() {
            "gpt2" => (byte_level_bpe(metadata, &tokens)?, false),
            "llama" => (sentencepiece_bpe(metadata, &tokens, &token_types)?, true),
            other => {
                return Err(ModelError::UnsupportedFormat(format!(
                    "tokenizer model `{other}` (supported: `gpt2` byte-level BPE, `llama` SentencePiece BPE)"
                )))
            }
        };
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, kind)| **kind == TOKEN_TYPE_CONTROL)
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        tokenizer.add_special_tokens(special).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, kind)| **kind == TOKEN_TYPE_USER_DEFINED)
            .map(|(token, _)| AddedToken::from(token.clone(), false).normalized(false))
            .collect();
        tokenizer.add_tokens(user).map_err(|e| ModelError::Tokenizer(e.to_string()))?;

        let token_at = |key: &str| -> Option<(u32, String)> {
            let id = metadata.get(key)?.to_u32().ok()?;
            Some((id, tokens.get(id as usize)?.clone()))
        };
        let bos = token_at("tokenizer.ggml.bos_token_id");
        let eos = token_at("tokenizer.ggml.eos_token_id");
        let add_bos =
            metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(add_bos_default);
        let mut end_of_turn: Vec<u32> = [eos.as_ref(), token_at("tokenizer.ggml.eot_token_id").as_ref()]
            .into_iter()
            .flatten()
            .map(|(id, _)| *id)
            .collect();
        for marker in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"] {
            if let Some(id) = tokens.iter().position(|t| t == marker) {
                if token_types.get(id) == Some(&TOKEN_TYPE_CONTROL) {
                    end_of_turn.push(id as u32);
                }
            }
        }
        end_of_turn.sort_unstable();
        end_of_turn.dedup();
        Ok(Self { tokenizer, bos, eos, add_bos, end_of_turn })
    }

    /// Token ids of `text`; special tokens written in the text (as a chat
    /// template writes them) become their ids. BOS is prepended when the
    /// model asks for it and the text does not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = self.encode(text)?;
        if let (true, Some((bos, _))) = (self.add_bos, &self.bos) {
            if ids.first() != Some(bos) {
                ids.insert(0, *bos);
            }
        }
        Ok(ids)
    }

    /// Token ids of `text`, without adding BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The number of tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// GPT-2 style byte-level BPE from `tokens` and `tokenizer.ggml.merges`.
fn byte_level_bpe(metadata: &HashMap<String, Value>, tokens: &[String]) -> Result<Tokenizer, ModelError> {
    let merges = string_array(metadata, "tokenizer.ggml.merges")?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
    let merges = merges
        .iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| ModelError::Tokenizer(format!("malformed merge `{merge}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe =
        BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = string(metadata, "tokenizer.ggml.pre").unwrap_or_else(|| "default".to_owned());
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// SentencePiece BPE (`tokenizer.ggml.model = "llama"`): spaces become `▁`,
/// unknown characters fall back to `<0xXX>` byte tokens, and merges are
/// derived from the pieces' scores the way Hugging Face converts a
/// SentencePiece model (every split of a piece into two known pieces, best
/// score first), which is the order llama.cpp's SPM tokenizer merges in.
fn sentencepiece_bpe(
    metadata: &HashMap<String, Value>,
    tokens: &[String],
    token_types: &[i32],
) -> Result<Tokenizer, ModelError> {
    const TOKEN_TYPE_NORMAL: i32 = 1;
    let scores: Vec<f32> = match metadata.get("tokenizer.ggml.scores") {
        Some(value) => {
            value.to_vec().map_err(tok_err)?.iter().map(|v| v.to_f32().map_err(tok_err)).collect::<Result<_, _>>()?
        }
        None => (0..tokens.len()).map(|id| -(id as f32)).collect(),
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
    let mut merges: Vec<(String, String, f32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if token_types.get(id).copied().unwrap_or(TOKEN_TYPE_NORMAL) != TOKEN_TYPE_NORMAL {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((left.to_owned(), right.to_owned(), score, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.3.cmp(&b.3)).then(a.4.cmp(&b.4)));
    let merges = merges.into_iter().map(|(l, r, ..)| (l, r)).collect();
    let unk = metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|id| tokens.get(id as usize).cloned())
        .unwrap_or_else(|| "<unk>".to_owned());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let add_space_prefix =
        metadata.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(true);
    let replace_space = normalizers::Replace::new(" ", "\u{2581}").map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut steps = Vec::new();
    if add_space_prefix {
        steps.push(NormalizerWrapper::Prepend(normalizers::Prepend::new("\u{2581}".to_owned())));
    }
    steps.push(NormalizerWrapper::Replace(replace_space));
    tokenizer
        .with_normalizer(Some(normalizers::Sequence::new(steps)))
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let to_space = normalizers::Replace::new("\u{2581}", " ").map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut decoders = vec![
        DecoderWrapper::Replace(to_space),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, ModelError> {
    let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let split = |regex: &str| -> Result<PreTokenizerWrapper, ModelError> {
        let split = Split::new(SplitPattern::Regex(regex.to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(PreTokenizerWrapper::Split(split))
    };
    Ok(match pre {
        "smollm" | "starcoder" | "refact" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![split(LLAMA3_REGEX)?, byte_level(false)]))
        }
        "qwen2" | "deepseek-r1-qwen" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![split(QWEN2_REGEX)?, byte_level(false)]))
        }
        "default" | "gpt2" | "gpt-2" | "phi-2" | "olmo" | "jais" => byte_level(true),
        other => {
            tracing::warn!(pre = other, "unknown GGUF pre-tokenizer; using GPT-2 byte-level splitting");
            byte_level(true)
        }
    })
}

fn tok_err(error: candle_core::Error) -> ModelError {
    ModelError::Tokenizer(format!("bad tokenizer metadata: {error}"))
}

fn string(metadata: &HashMap<String, Value>, key: &str) -> Option<String> {
    metadata.get(key).and_then(|v| v.to_string().ok()).cloned()
}

fn string_array(metadata: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, ModelError> {
    let values = metadata
        .get(key)
        .ok_or_else(|| ModelError::Tokenizer(format!("GGUF metadata has no `{key}`")))?
        .to_vec()
        .map_err(tok_err)?;
    values.iter().map(|v| v.to_string().cloned().map_err(tok_err)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentencepiece_metadata() -> HashMap<String, Value> {
        let mut tokens: Vec<(String, f32, i32)> =
            vec![("<unk>".into(), 0.0, 2), ("<s>".into(), 0.0, 3), ("</s>".into(), 0.0, 3)];
        for byte in 0..=255u8 {
            tokens.push((format!("<0x{byte:02X}>"), 0.0, 6));
        }
        let pieces = [
            "\u{2581}",
            "h",
            "e",
            "l",
            "o",
            "w",
            "r",
            "d",
            "1",
            "he",
            "ll",
            "llo",
            "hello",
            "\u{2581}hello",
            "\u{2581}w",
            "or",
            "\u{2581}wor",
            "ld",
            "\u{2581}world",
        ];
        for (rank, piece) in pieces.iter().enumerate() {
            tokens.push(((*piece).to_owned(), -(rank as f32), 1));
        }
        let mut metadata = HashMap::new();
        metadata.insert("tokenizer.ggml.model".to_owned(), Value::String("llama".into()));
        metadata.insert(
            "tokenizer.ggml.tokens".to_owned(),
            Value::Array(tokens.iter().map(|t| Value::String(t.0.clone())).collect()),
        );
        metadata
            .insert("tokenizer.ggml.scores".to_owned(), Value::Array(tokens.iter().map(|t| Value::F32(t.1)).collect()));
        metadata.insert(
            "tokenizer.ggml.token_type".to_owned(),
            Value::Array(tokens.iter().map(|t| Value::I32(t.2)).collect()),
        );
        metadata.insert("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(1));
        metadata.insert("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(2));
        metadata
    }

    #[test]
    fn sentencepiece_merges_by_score_and_falls_back_to_bytes() {
        let tokenizer = GgufTokenizer::from_metadata(&sentencepiece_metadata()).expect("builds");
        assert!(tokenizer.add_bos, "SentencePiece models add BOS by default");
        let ids = tokenizer.encode("hello world").expect("encode");
        let pieces: Vec<String> =
            ids.iter().map(|id| tokenizer.tokenizer.id_to_token(*id).unwrap_or_default()).collect();
        assert_eq!(pieces, ["\u{2581}hello", "\u{2581}world"]);
        for text in ["hello world", "hello wörld 1", "héllo  world"] {
            let ids = tokenizer.encode(text).expect("encode");
            assert_eq!(tokenizer.decode(&ids).expect("decode"), text);
        }
        let prompt = tokenizer.encode_prompt("hello").expect("encode");
        assert_eq!(prompt[0], 1, "BOS prepended");
    }

    #[test]
    fn unknown_tokenizer_model_is_unsupported() {
        let mut metadata = sentencepiece_metadata();
        metadata.insert("tokenizer.ggml.model".to_owned(), Value::String("t5".into()));
        assert!(matches!(GgufTokenizer::from_metadata(&metadata), Err(ModelError::UnsupportedFormat(_))));
    }
}
