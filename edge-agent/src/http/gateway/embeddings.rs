//! `POST /v1/embeddings`: one text or several, float or base64.

use super::*;

pub(super) async fn embeddings(
    State(state): State<Arc<GatewayState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut recorder = CallRecorder::new(&state, GatewayEndpoint::Embeddings, state.clock.instant());
    let request: EmbeddingsRequest = match parse(body) {
        Ok(request) => request,
        Err(error) => return recorder.fail(error),
    };
    recorder.call.model.clone_from(&request.model);
    let embedder = match &state.embedder {
        Some(embedder) if request.model == state.config.embedding_model => embedder.clone(),
        _ => return recorder.fail(OpenAiError::unknown_model(&request.model)),
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let message = format!("encoding_format `{other}` is not supported (use `float` or `base64`)");
            return recorder.fail(OpenAiError::invalid(Some("encoding_format"), message));
        }
    };
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) if texts.is_empty() => {
            return recorder.fail(OpenAiError::invalid(Some("input"), "`input` must not be empty"));
        }
        EmbeddingInput::Many(texts) if texts.len() > MAX_EMBEDDING_INPUTS => {
            let message = format!("at most {MAX_EMBEDDING_INPUTS} inputs per request");
            return recorder.fail(OpenAiError::invalid(Some("input"), message));
        }
        EmbeddingInput::Many(texts) => texts,
        EmbeddingInput::Tokens(_) => {
            let message = "`input` must be a string or an array of strings; token arrays are not supported";
            return recorder.fail(OpenAiError::invalid(Some("input"), message));
        }
    };
    let embedded = match embedder.embed_counted(texts).await {
        Ok(embedded) => embedded,
        Err(error) => return recorder.fail(OpenAiError::from_model(error)),
    };
    recorder.call.prompt_tokens = embedded.tokens;
    let usage = EmbeddingUsage { prompt_tokens: embedded.tokens, total_tokens: embedded.tokens };
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingData {
            object: "embedding".to_owned(),
            index: u32::try_from(index).unwrap_or(u32::MAX),
            embedding: if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(vector)
            },
        })
        .collect();
    recorder.report(StatusCode::OK, GatewayOutcome::Completed);
    Json(EmbeddingsResponse { object: "list".to_owned(), data, model: request.model, usage }).into_response()
}
