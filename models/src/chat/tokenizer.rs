//! Builds a Hugging Face `tokenizers::Tokenizer` from the vocabulary stored in
//! a GGUF file's metadata (`tokenizer.ggml.*`), since GGUF chat models ship no
//! `tokenizer.json`. Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is
//! supported; the pre-tokenizer follows `tokenizer.ggml.pre` the way llama.cpp
//! does (e.g. `smollm`: every digit on its own, then GPT-2 byte-level splitting
//! without a leading space).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
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
        if model != "gpt2" {
            return Err(ModelError::UnsupportedFormat(format!(
                "tokenizer model `{model}` (only byte-level BPE, `gpt2`, is supported)"
            )));
        }
        let tokens = string_array(metadata, "tokenizer.ggml.tokens")?;
        let merges = string_array(metadata, "tokenizer.ggml.merges")?;
        let token_types: Vec<i32> = match metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|v| v.to_i32().map_err(tok_err))
                .collect::<Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
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
        let add_bos = metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
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
