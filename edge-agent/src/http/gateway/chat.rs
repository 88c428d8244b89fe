//! `POST /v1/chat/completions`: a request checked and turned into a
//! generation, served by the local model or routed to a gateway tier, answered
//! whole or as a stream.

use super::stream::*;
use super::*;

/// Turns an OpenAI request into a generation request for `model`, with the
/// tools the model may call when the request offers some.
pub(super) fn generate_request(
    state: &GatewayState,
    model: &ChatModel,
    request: &ChatCompletionRequest,
) -> Result<(GenerateRequest, Option<LocalTools>), OpenAiError> {
    check_request(request)?;
    let tools = local_tools(request)?;
    let messages = match &tools {
        Some(tools) => tools.conversation(&request.messages)?,
        None => plain_messages(request)?,
    };
    let constraint = match &tools {
        Some(tools) => Some(tools.constraint()),
        None => format_constraint(request)?,
    };
    let max_tokens = match request.token_limit() {
        Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
        None => state.config.default_max_tokens,
    }
    .min(model.info().context_length);
    let mut sampling = SamplingParams::greedy();
    if let Some(temperature) = request.temperature {
        sampling.temperature = temperature;
    }
    if let Some(top_p) = request.top_p {
        sampling.top_p = top_p;
    }
    if let Some(seed) = request.seed {
        // Negative seeds are valid in OpenAI's API; any fixed mapping to u64 will do.
        sampling.seed = seed as u64;
    }
    sampling.validate().map_err(OpenAiError::from_model)?;
    let stop = request.stop.clone().map(|stop| stop.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(OpenAiError::invalid(Some("stop"), "at most 4 stop sequences are supported"));
    }
    let generate =
        GenerateRequest { prompt: Prompt::Chat(messages), max_tokens, sampling, stop, ignore_eos: false, constraint };
    Ok((generate, tools))
}

/// The messages of a request without tools; tool calls and results need `tools`.
fn plain_messages(request: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, OpenAiError> {
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        if !message.tool_calls.is_empty() || message.tool_call_id.is_some() {
            return Err(OpenAiError::invalid(Some("messages"), "tool calls and tool results need `tools`"));
        }
        let text = message.text().map_err(|reason| OpenAiError::invalid(Some("messages"), reason))?;
        messages.push(match message.role.as_str() {
            "system" | "developer" => ChatMessage::system(text),
            "user" => ChatMessage::user(text),
            "assistant" => ChatMessage::assistant(text),
            other => {
                return Err(OpenAiError::invalid(
                    Some("messages"),
                    format!("messages with role `{other}` are not supported by the local model"),
                ))
            }
        });
    }
    Ok(messages)
}

/// The checks every chat request passes, wherever it is answered.
pub(super) fn check_request(request: &ChatCompletionRequest) -> Result<(), OpenAiError> {
    if request.messages.is_empty() {
        return Err(OpenAiError::invalid(Some("messages"), "`messages` must not be empty"));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::invalid(Some("n"), "only n = 1 is supported"));
    }
    if request.token_limit() == Some(0) {
        return Err(OpenAiError::invalid(Some("max_tokens"), "max_tokens must be at least 1"));
    }
    if let Some(temperature) = request.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(OpenAiError::invalid(Some("temperature"), format!("temperature {temperature} must be in [0, 2]")));
    }
    Ok(())
}

pub(super) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Cancelled | FinishReason::EndOfTurn | FinishReason::Stop => "stop",
    }
}

pub(super) fn completion_id() -> String {
    format!("chatcmpl-{:016x}", rand::random::<u64>())
}

pub(super) async fn chat_completions(
    State(state): State<Arc<GatewayState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut recorder = CallRecorder::new(&state, GatewayEndpoint::ChatCompletions, state.clock.instant());
    let request: ChatCompletionRequest = match parse(body) {
        Ok(request) => request,
        Err(error) => return recorder.fail(error),
    };
    recorder.call.model.clone_from(&request.model);
    recorder.call.delivery = if request.stream { Delivery::Stream } else { Delivery::Whole };
    if request.model == state.config.chat_model {
        return match state.chat.clone() {
            Some(model) => serve_locally(recorder, &state, model, request, None).await,
            None => recorder.fail(OpenAiError::unknown_model(&request.model)),
        };
    }
    match state.tiers.clone() {
        Some(tiers) => routed_completion(recorder, &state, tiers, request).await,
        None => recorder.fail(OpenAiError::unknown_model(&request.model)),
    }
}

/// Where a routed request was answered, as the response headers tell it.
#[derive(Debug, Clone)]
pub(super) struct RouteInfo {
    /// The tier that answered.
    pub(super) tier: String,
    /// Why, as the router said it.
    pub(super) reason: String,
    /// The local model answered instead of the tier asked for.
    pub(super) needs_review: bool,
}

impl RouteInfo {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let printable = |text: &str| -> String {
            let text: String = text.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect();
            text.chars().take(1024).collect()
        };
        for (name, value) in [
            ("x-aios-tier", printable(&self.tier)),
            ("x-aios-route", printable(&self.reason)),
            ("x-aios-needs-review", self.needs_review.to_string()),
        ] {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                headers.insert(header::HeaderName::from_static(name), value);
            }
        }
        headers
    }
}

/// Answers with the gateway's local chat model; `route` says why when a
/// tier was asked for.
pub(super) async fn serve_locally(
    mut recorder: CallRecorder,
    state: &GatewayState,
    model: ChatModel,
    request: ChatCompletionRequest,
    route: Option<RouteInfo>,
) -> Response {
    if let Some(route) = &route {
        recorder.routed(route);
    }
    let (generate, tools) = match generate_request(state, &model, &request) {
        Ok(generated) => generated,
        Err(error) => return recorder.fail(error),
    };
    let headers = route.as_ref().map(RouteInfo::headers).unwrap_or_default();
    let response = if tools.is_some() {
        tool_completion(recorder, model, generate, request).await
    } else if request.stream {
        stream_completion(recorder, model, generate, request).await
    } else {
        whole_completion(recorder, model, generate, request).await
    };
    (headers, response).into_response()
}

/// Answers a request for a gateway tier on the tier the router picks.
pub(super) async fn routed_completion(
    mut recorder: CallRecorder,
    state: &GatewayState,
    tiers: ModelCalls,
    request: ChatCompletionRequest,
) -> Response {
    if let Err(error) = check_request(&request) {
        return recorder.fail(error);
    }
    // Refused rather than ignored: a client that sends tools acts on the
    // calls it expects back, and would take a plain reply for an answer.
    let tool_messages = request.messages.iter().any(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some());
    if !request.tools.is_empty() || request.response_format.is_some() || tool_messages {
        let message = format!(
            "tools and response_format are served by the local model `{}`; gateway tiers do not relay them yet",
            state.config.chat_model
        );
        return recorder.fail(OpenAiError::invalid(Some("tools"), message));
    }
    let mut prompt_chars = 0;
    for message in &request.messages {
        match message.text() {
            Ok(text) => prompt_chars += text.len(),
            Err(reason) => return recorder.fail(OpenAiError::invalid(Some("messages"), reason)),
        }
    }
    // The tier's own model, and a bounded output so the reservation bounds the cost.
    let mut upstream = request.clone();
    upstream.model = String::new();
    if upstream.token_limit().is_none() {
        upstream.max_tokens = Some(u32::try_from(state.config.default_max_tokens).unwrap_or(u32::MAX));
    }
    let estimated = estimate_tokens(prompt_chars, upstream.token_limit().map(u64::from).unwrap_or_default());
    let request_id = completion_id();
    if request.stream {
        let call = move |client: CloudClient| {
            let upstream = upstream.clone();
            async move { client.chat_stream(upstream).await }
        };
        match route_to_tier(recorder, state, &tiers, &request, &request_id, estimated, call).await {
            Err(answered) => answered,
            Ok((recorder, route, stream, charge)) => {
                let settlement = Settlement::new(tiers, charge, estimated);
                let source = Source::Remote { stream: Box::new(stream), settlement };
                let response = respond_with_stream(recorder, Some(source), request, StreamPhase::Next, None);
                (route.headers(), response).into_response()
            }
        }
    } else {
        let call = move |client: CloudClient| {
            let upstream = upstream.clone();
            async move { client.chat(upstream).await }
        };
        match route_to_tier(recorder, state, &tiers, &request, &request_id, estimated, call).await {
            Err(answered) => answered,
            Ok((mut recorder, route, completion, charge)) => {
                let tokens = completion.tokens().unwrap_or(estimated);
                let mut settlement = Settlement::new(tiers, charge, estimated);
                recorder.call.cost = settlement.settle(tokens).await;
                recorder.tokens(tokens.input, tokens.output);
                let response = ChatCompletionResponse {
                    id: request_id,
                    object: "chat.completion".to_owned(),
                    created: unix_seconds(&state.clock),
                    model: request.model,
                    choices: vec![Choice {
                        index: 0,
                        message: ResponseMessage {
                            role: "assistant".to_owned(),
                            content: Some(completion.text),
                            ..ResponseMessage::default()
                        },
                        finish_reason: completion.finish_reason,
                    }],
                    usage: Some(Usage::new(tokens.input, tokens.output)),
                };
                recorder.report(StatusCode::OK, GatewayOutcome::Completed);
                let mut headers = route.headers();
                if let Ok(cost) = header::HeaderValue::from_str(&recorder.call.cost.to_string()) {
                    headers.insert(header::HeaderName::from_static("x-aios-cost-usd"), cost);
                }
                (headers, Json(response)).into_response()
            }
        }
    }
}

/// Routes `request` for a gateway tier with `call` as the tier call. A
/// refusal, or the local model answering in the tier's place, is answered
/// here (`Err` holds that response); a tier's result comes back with the
/// recorder, the route and the reservation to settle.
pub(super) async fn route_to_tier<T, F, Fut>(
    mut recorder: CallRecorder,
    state: &GatewayState,
    tiers: &ModelCalls,
    request: &ChatCompletionRequest,
    request_id: &str,
    estimated: TokenCount,
    call: F,
) -> Result<(CallRecorder, RouteInfo, T, Charge), Response>
where
    F: FnMut(CloudClient) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<T, crate::model_calls::cloud::CloudError>>,
{
    let local = state.chat.as_ref().map(|_| state.config.chat_model.as_str());
    match tiers.route_gateway(&request.model, local, request_id, estimated, call).await {
        Err(refusal) => Err(recorder.fail(OpenAiError::refused(refusal, &request.model))),
        Ok(GatewayRoute::Local { reason, needs_review }) => {
            let route = RouteInfo { tier: state.config.chat_model.clone(), reason, needs_review };
            let model = state.chat.clone().expect("the router falls back only to a loaded local model");
            Err(serve_locally(recorder, state, model, request.clone(), Some(route)).await)
        }
        Ok(GatewayRoute::Remote { tier, reason, value, charge }) => {
            let route = RouteInfo { tier, reason, needs_review: false };
            recorder.routed(&route);
            Ok((recorder, route, value, charge))
        }
    }
}

pub(super) async fn whole_completion(
    mut recorder: CallRecorder,
    model: ChatModel,
    generate: GenerateRequest,
    request: ChatCompletionRequest,
) -> Response {
    let generation = match model.generate(generate).await {
        Ok(generation) => generation,
        Err(error) => return recorder.fail(OpenAiError::from_model(error)),
    };
    recorder.tokens(generation.prompt_tokens as u64, generation.completion_tokens as u64);
    let usage = Usage::new(generation.prompt_tokens as u64, generation.completion_tokens as u64);
    let response = ChatCompletionResponse {
        id: completion_id(),
        object: "chat.completion".to_owned(),
        created: unix_seconds(&recorder.state.clock),
        model: request.model,
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content: Some(generation.text),
                ..ResponseMessage::default()
            },
            finish_reason: Some(finish_reason(generation.finish_reason).to_owned()),
        }],
        usage: Some(usage),
    };
    recorder.report(StatusCode::OK, GatewayOutcome::Completed);
    // Time inside the model, so callers (and the benchmark) can tell the
    // gateway's own cost from the model's.
    let model_ms = (generation.time_to_first_token + generation.decode_time).as_secs_f64() * 1000.0;
    ([(header::HeaderName::from_static("server-timing"), format!("model;dur={model_ms:.3}"))], Json(response))
        .into_response()
}

/// Streams a completion. Generation starts before the response does, so a
/// request that fails at once (a prompt longer than the context) still gets
/// its proper status instead of a 200 with an error event.
pub(super) async fn stream_completion(
    mut recorder: CallRecorder,
    model: ChatModel,
    generate: GenerateRequest,
    request: ChatCompletionRequest,
) -> Response {
    let mut generation = model.generate_stream(generate);
    match generation.next_piece().await {
        Some(piece) => {
            respond_with_stream(recorder, Some(Source::Local(generation)), request, StreamPhase::Piece(piece), None)
        }
        None => match generation.finish().await {
            // Nothing was streamed: send the text (if any) as one piece.
            Ok(finished) if !finished.text.is_empty() => {
                let text = finished.text.clone();
                respond_with_stream(recorder, None, request, StreamPhase::Piece(text), Some(finished))
            }
            Ok(finished) => respond_with_stream(recorder, None, request, StreamPhase::Finished(finished), None),
            Err(error) => recorder.fail(OpenAiError::from_model(error)),
        },
    }
}
