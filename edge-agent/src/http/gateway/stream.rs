//! The server-sent events of a streamed completion: from the local model
//! token by token or relayed chunk by chunk from a remote tier, with the
//! usage chunk at the end and the call reported when the body is dropped.

use super::chat::*;
use super::*;

/// What a completion stream sends next.
pub(super) enum StreamPhase {
    /// The chunk that announces the assistant's role, then the inner phase.
    Role(Box<StreamPhase>),
    /// A piece of text already read.
    Piece(String),
    /// Read the next piece from the model.
    Next,
    /// Generation ended: the chunk with the finish reason.
    Finished(Generation),
    /// The usage chunk.
    Usage(Usage),
    /// `[DONE]`.
    Done,
}

/// The state of one streamed completion; dropping it (the client left)
/// cancels generation and reports the call as cancelled.
pub(super) struct CompletionStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The model's output, while it is being read.
    source: Option<Source>,
    /// The generation, when it ended before the response started.
    finished: Option<Generation>,
    /// `None` once everything has been sent.
    phase: Option<StreamPhase>,
    recorder: CallRecorder,
}

impl CompletionStream {
    /// The next SSE event, or `None` at the end of the body.
    pub(super) async fn next_event(&mut self) -> Option<Bytes> {
        let phase = self.phase.take()?;
        let event = match phase {
            StreamPhase::Role(inner) => {
                self.phase = Some(*inner);
                let delta =
                    Delta { role: Some("assistant".to_owned()), content: Some(String::new()), ..Delta::default() };
                self.chunk(delta, None)
            }
            StreamPhase::Piece(piece) => {
                self.phase = Some(StreamPhase::Next);
                self.chunk(Delta { content: Some(piece), ..Delta::default() }, None)
            }
            StreamPhase::Next => return self.next_from_model().await,
            StreamPhase::Finished(generation) => self.local_finished(generation),
            StreamPhase::Usage(usage) => {
                self.phase = Some(StreamPhase::Done);
                sse_event(&ChatCompletionChunk {
                    id: self.id.clone(),
                    object: "chat.completion.chunk".to_owned(),
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage: Some(usage),
                })
            }
            StreamPhase::Done => {
                self.recorder.report(StatusCode::OK, GatewayOutcome::Completed);
                Bytes::from_static(b"data: [DONE]\n\n")
            }
        };
        Some(event)
    }

    async fn next_from_model(&mut self) -> Option<Bytes> {
        let state = self.recorder.state.clone();
        let read = async {
            match self.source.as_mut() {
                None => None,
                Some(Source::Local(generation)) => Some(Ok(generation.next_piece().await)),
                Some(Source::Remote { stream, .. }) => Some(stream.next_delta().await.map_err(|e| e.to_string())),
            }
        };
        let read = tokio::select! {
            read = read => read,
            () = state.until_halted() => return Some(self.failed(OpenAiError::halted().message)),
        };
        let piece = match read {
            None => {
                let finished = self.finished.take()?;
                return Some(self.local_finished(finished));
            }
            Some(Ok(piece)) => piece,
            Some(Err(error)) => return Some(self.failed(error)),
        };
        if let Some(piece) = piece {
            self.phase = Some(StreamPhase::Next);
            return Some(self.chunk(Delta { content: Some(piece), ..Delta::default() }, None));
        }
        match self.source.take()? {
            Source::Local(generation) => match generation.finish().await {
                Ok(finished) => Some(self.local_finished(finished)),
                Err(error) => Some(self.failed(OpenAiError::from_model(error).message)),
            },
            Source::Remote { stream, mut settlement } => match stream.finish().await {
                Ok(completion) => {
                    let tokens = completion.tokens().unwrap_or(settlement.estimated());
                    self.recorder.call.cost = settlement.settle(tokens).await;
                    let reason = completion.finish_reason.unwrap_or_else(|| "stop".to_owned());
                    Some(self.finished_event(&reason, tokens))
                }
                Err(error) => Some(self.failed(error.to_string())),
            },
        }
    }

    /// The error event that ends a stream which broke off.
    fn failed(&mut self, message: String) -> Bytes {
        let error = OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            param: None,
            code: None,
            message,
        };
        let event = sse_event(&error.body());
        self.abandon_source();
        self.recorder.report(StatusCode::OK, GatewayOutcome::Failed(error.message));
        event
    }

    /// Drops what is being read; an escalated call's reservation is then
    /// settled at its estimate, and the call reports that cost.
    fn abandon_source(&mut self) {
        if let Some(Source::Remote { settlement, .. }) = &self.source {
            if let Some(cost) = settlement.estimated_cost() {
                self.recorder.call.cost = cost;
            }
        }
        self.source = None;
    }

    fn local_finished(&mut self, generation: Generation) -> Bytes {
        let tokens = TokenCount { input: generation.prompt_tokens as u64, output: generation.completion_tokens as u64 };
        self.finished_event(finish_reason(generation.finish_reason), tokens)
    }

    /// The chunk with the finish reason; the usage chunk and `[DONE]` follow.
    fn finished_event(&mut self, finish_reason: &str, tokens: TokenCount) -> Bytes {
        self.recorder.tokens(tokens.input, tokens.output);
        let usage = Usage::new(tokens.input, tokens.output);
        self.phase = Some(if self.include_usage { StreamPhase::Usage(usage) } else { StreamPhase::Done });
        self.chunk(Delta::default(), Some(finish_reason))
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> Bytes {
        sse_event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish_reason.map(str::to_owned) }],
            usage: None,
        })
    }
}

impl Drop for CompletionStream {
    fn drop(&mut self) {
        self.abandon_source();
    }
}

/// Where a stream's pieces come from.
pub(super) enum Source {
    /// The local model.
    Local(GenerationStream),
    /// An escalation tier; its reservation is settled when the stream ends.
    Remote { stream: Box<ChatStream>, settlement: Settlement },
}

pub(super) fn sse_event(value: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(value).expect("wire types serialise to JSON without failure");
    Bytes::from(format!("data: {json}\n\n"))
}

/// Starts the SSE response at `phase`; after the pieces, `source` is
/// read, or `finished` is what the local model already produced.
pub(super) fn respond_with_stream(
    recorder: CallRecorder,
    source: Option<Source>,
    request: ChatCompletionRequest,
    phase: StreamPhase,
    finished: Option<Generation>,
) -> Response {
    let stream = CompletionStream {
        id: completion_id(),
        created: unix_seconds(&recorder.state.clock),
        model: request.model.clone(),
        include_usage: request.include_usage(),
        source,
        finished,
        phase: Some(StreamPhase::Role(Box::new(phase))),
        recorder,
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next_event().await?;
        Some((Ok::<_, std::convert::Infallible>(event), stream))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body))
        .into_response()
}
