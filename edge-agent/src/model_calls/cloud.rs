//! The client for remote tiers: any endpoint that speaks OpenAI's
//! chat-completions and embeddings API (a cloud provider, an on-prem server,
//! or another aios edge's gateway), or Anthropic's Messages API (translated
//! by [`anthropic`](super::anthropic), so callers see one shape).
//!
//! Every call has a deadline: for whole replies it covers the call from
//! connecting to the last byte; for streams it covers the wait for the
//! response headers and then every gap between chunks, so a long stream that
//! keeps producing is never cut off but a silent one is. Failures come back as
//! [`CloudError`], which names the endpoint and says whether retrying can help.
//!
//! The credential is a [`Credential`]. It goes only into the `Authorization`
//! header (OpenAI) or `x-api-key` (Anthropic), both marked sensitive so the
//! HTTP stack does not log them, and any echo of it in an error body is
//! redacted before the body reaches a [`CloudError`] message.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::anthropic::{self, MessagesResponse, StreamTranslator, Translated};
pub use super::credential::{Credential, CredentialError};
use crate::model_calls::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, EmbeddingInput, EmbeddingUsage,
    EmbeddingVector, EmbeddingsRequest, EmbeddingsResponse, ErrorBody, SseDecoder, StreamOptions, Usage,
};
use aios_shared::router::TokenCount;

/// Why a call to a remote tier failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The client could not be built from its configuration.
    #[error("invalid configuration for remote tier: {0}")]
    Config(String),
    /// No TCP connection could be made (refused, unreachable, DNS, TLS handshake).
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The URL called.
        endpoint: String,
        /// The underlying failure.
        reason: String,
    },
    /// The response broke off after it began (connection reset mid-body, an
    /// error event in a stream).
    #[error("the response from {endpoint} broke off: {reason}")]
    Interrupted {
        /// The URL called.
        endpoint: String,
        /// The underlying failure.
        reason: String,
    },
    /// The endpoint answered, but not in the OpenAI wire format.
    #[error("malformed response from {endpoint}: {reason}")]
    Malformed {
        /// The URL called.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// The endpoint answered with an error status.
    #[error("{endpoint} answered HTTP {status}: {message}")]
    Status {
        /// The URL called.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The error message from the body (credential redacted), or the body's start.
        message: String,
        /// The server's `Retry-After`, when it sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// The deadline passed.
    #[error("{endpoint} did not answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The URL called.
        endpoint: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

impl CloudError {
    /// Whether the same call may succeed later: server errors, timeouts,
    /// refused connections, broken-off responses, and the 4xx statuses that
    /// mean "not now" (408 timeout, 409 conflict, 429 rate limit). Other 4xx
    /// are the request's fault and fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            CloudError::Status { status, .. } => matches!(status, 408 | 409 | 429) || *status >= 500,
            CloudError::Connect { .. } | CloudError::Interrupted { .. } | CloudError::Timeout { .. } => true,
            CloudError::Config(_) | CloudError::Malformed { .. } => false,
        }
    }

    /// Whether the failure says the tier itself is unwell, so it should count
    /// against its circuit breaker: everything retryable except 409 and 429
    /// (the tier works but is busy or rate-limiting this client).
    pub fn counts_against_breaker(&self) -> bool {
        match self {
            CloudError::Status { status: 409 | 429, .. } => false,
            CloudError::Malformed { .. } => true,
            other => other.is_retryable(),
        }
    }

    /// The server's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Which API a remote tier speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI's chat completions (`{base}/chat/completions`, bearer token).
    #[default]
    OpenAi,
    /// Anthropic's Messages (`{base}/messages`, `x-api-key`).
    Anthropic,
}

/// How to reach one remote tier.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// The API it speaks.
    pub protocol: Protocol,
    /// Whether [`CloudClient::complete`] streams (the deadline then bounds
    /// each gap between chunks, not the whole reply).
    pub stream: bool,
    /// The API base including `/v1`: `https://api.openai.com/v1`,
    /// `https://api.anthropic.com/v1`,
    /// `http://10.0.0.7:8088/v1` for another edge's gateway.
    pub base_url: String,
    /// The model name sent when a request leaves `model` empty.
    pub model: String,
    /// The per-call deadline (see the module documentation).
    pub timeout: Duration,
    /// The bearer token, if the endpoint needs one.
    pub credential: Option<Credential>,
}

/// A client for one OpenAI-compatible endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CloudClient {
    /// The API it speaks.
    protocol: Protocol,
    /// Whether `complete` streams.
    stream: bool,
    /// Connection pool.
    http: reqwest::Client,
    /// Default model name.
    model: String,
    /// Per-call deadline.
    timeout: Duration,
    /// Bearer token.
    credential: Option<Credential>,
    /// `{base}/chat/completions` (OpenAI) or `{base}/messages` (Anthropic).
    chat_url: reqwest::Url,
    /// `{base}/embeddings`.
    embeddings_url: reqwest::Url,
    /// `host` or `host:port` of the base URL, for the air-gap check.
    host: String,
}

/// A whole reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletion {
    /// The completion id the endpoint gave.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The reply text.
    pub text: String,
    /// `stop`, `length`, `tool_calls`, ...
    pub finish_reason: Option<String>,
    /// Token usage, when the endpoint reported it.
    pub usage: Option<Usage>,
    /// The calls the model made (streamed ones assembled).
    pub tool_calls: Vec<super::tools::WireToolCall>,
    /// Why the model declined, when it did.
    pub refusal: Option<String>,
}

impl ChatCompletion {
    /// The reply as the agent loop journals it.
    pub fn reply(&self) -> aios_shared::agent::tool_loop::ModelReply {
        super::tools::model_reply(&super::openai::ResponseMessage {
            role: "assistant".to_owned(),
            content: Some(self.text.clone()),
            tool_calls: self.tool_calls.clone(),
            refusal: self.refusal.clone(),
        })
    }

    /// The usage as the router's token count (for settling a budget).
    pub fn tokens(&self) -> Option<TokenCount> {
        self.usage.map(|usage| TokenCount { input: usage.prompt_tokens, output: usage.completion_tokens })
    }
}

/// Vectors from the embeddings endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The model that answered.
    pub model: String,
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Token usage.
    pub usage: EmbeddingUsage,
}

impl CloudClient {
    /// A client for `config.base_url`. Fails on a URL that is not http(s).
    pub fn new(config: CloudConfig) -> Result<CloudClient, CloudError> {
        let mut base = reqwest::Url::parse(&config.base_url)
            .map_err(|e| CloudError::Config(format!("base URL `{}`: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CloudError::Config(format!("base URL `{}` must be http:// or https://", config.base_url)));
        }
        if !base.username().is_empty() || base.password().is_some() || base.query().is_some() {
            return Err(CloudError::Config(
                "the base URL must not carry credentials or a query; use the credential setting".to_owned(),
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let join = |path: &str| base.join(path).map_err(|e| CloudError::Config(format!("base URL: {e}")));
        let host = match (base.host_str(), base.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(CloudError::Config(format!("base URL `{}` has no host", config.base_url))),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| CloudError::Config(format!("HTTP client: {e}")))?;
        let chat_path = match config.protocol {
            Protocol::OpenAi => "chat/completions",
            Protocol::Anthropic => "messages",
        };
        Ok(CloudClient {
            protocol: config.protocol,
            stream: config.stream,
            http,
            model: config.model,
            timeout: config.timeout,
            credential: config.credential,
            chat_url: join(chat_path)?,
            embeddings_url: join("embeddings")?,
            host,
        })
    }

    /// `host` or `host:port` of the endpoint (what the air gap checks).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A reply, streamed or whole as the tier is configured, assembled.
    pub async fn complete(&self, request: ChatCompletionRequest) -> Result<ChatCompletion, CloudError> {
        if self.stream {
            self.chat_stream(request).await?.finish().await
        } else {
            self.chat(request).await
        }
    }

    /// A whole reply. `request.model` defaults to the configured model;
    /// `stream` is turned off.
    pub async fn chat(&self, mut request: ChatCompletionRequest) -> Result<ChatCompletion, CloudError> {
        self.fill_model(&mut request.model);
        request.stream = false;
        request.stream_options = None;
        let endpoint = self.chat_url.as_str();
        let response: ChatCompletionResponse = match self.protocol {
            Protocol::OpenAi => {
                self.deadline(&self.chat_url, async {
                    let response = self.send(&self.chat_url, &request).await?;
                    let body = response.bytes().await.map_err(|e| self.transport_error(endpoint, e))?;
                    self.parse(endpoint, &body)
                })
                .await?
            }
            Protocol::Anthropic => {
                let request = self.messages_request(&request)?;
                let reply: MessagesResponse = self
                    .deadline(&self.chat_url, async {
                        let response = self.send(&self.chat_url, &request).await?;
                        let body = response.bytes().await.map_err(|e| self.transport_error(endpoint, e))?;
                        self.parse(endpoint, &body)
                    })
                    .await?;
                anthropic::response(reply)
            }
        };
        let choice = response.choices.into_iter().next().ok_or_else(|| CloudError::Malformed {
            endpoint: endpoint.to_owned(),
            reason: "the completion has no choices".to_owned(),
        })?;
        Ok(ChatCompletion {
            id: response.id,
            model: response.model,
            text: choice.message.content.unwrap_or_default(),
            finish_reason: choice.finish_reason,
            usage: response.usage,
            tool_calls: choice.message.tool_calls,
            refusal: choice.message.refusal,
        })
    }

    /// A streamed reply; usage is requested (`stream_options.include_usage`)
    /// and arrives with the last chunk.
    pub async fn chat_stream(&self, mut request: ChatCompletionRequest) -> Result<ChatStream, CloudError> {
        self.fill_model(&mut request.model);
        request.stream = true;
        request.stream_options = Some(StreamOptions { include_usage: true });
        let (response, translator) = match self.protocol {
            Protocol::OpenAi => (self.deadline(&self.chat_url, self.send(&self.chat_url, &request)).await?, None),
            Protocol::Anthropic => {
                let request = self.messages_request(&request)?;
                let response = self.deadline(&self.chat_url, self.send(&self.chat_url, &request)).await?;
                (response, Some(StreamTranslator::default()))
            }
        };
        Ok(ChatStream {
            client: self.clone(),
            translator,
            response,
            decoder: SseDecoder::new(),
            pending: std::collections::VecDeque::new(),
            completion: ChatCompletion {
                id: String::new(),
                model: String::new(),
                text: String::new(),
                finish_reason: None,
                usage: None,
                tool_calls: Vec::new(),
                refusal: None,
            },
            calls: super::tools::ToolCallAssembler::default(),
            done: false,
        })
    }

    /// Embeds texts. `request.model` defaults to the configured model; the
    /// float encoding is requested.
    pub async fn embeddings(&self, mut request: EmbeddingsRequest) -> Result<Embeddings, CloudError> {
        if self.protocol == Protocol::Anthropic {
            return Err(CloudError::Config("an anthropic tier has no embeddings endpoint".to_owned()));
        }
        self.fill_model(&mut request.model);
        request.encoding_format = Some("float".to_owned());
        let expected = match &request.input {
            EmbeddingInput::One(_) => 1,
            EmbeddingInput::Many(many) => many.len(),
            EmbeddingInput::Tokens(_) => 0,
        };
        let endpoint = self.embeddings_url.as_str();
        let response: EmbeddingsResponse = self
            .deadline(&self.embeddings_url, async {
                let response = self.send(&self.embeddings_url, &request).await?;
                let body = response.bytes().await.map_err(|e| self.transport_error(endpoint, e))?;
                self.parse(endpoint, &body)
            })
            .await?;
        let malformed = |reason: String| CloudError::Malformed { endpoint: endpoint.to_owned(), reason };
        let mut data = response.data;
        data.sort_by_key(|item| item.index);
        if expected != 0 && data.len() != expected {
            return Err(malformed(format!("{} vectors for {expected} inputs", data.len())));
        }
        let vectors = data
            .into_iter()
            .map(|item| match item.embedding {
                EmbeddingVector::Float(vector) => Ok(vector),
                EmbeddingVector::Base64(_) => Err(malformed("base64 vector although floats were asked for".into())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Embeddings { model: response.model, vectors, usage: response.usage })
    }

    /// The Messages request for an OpenAI-shaped one.
    fn messages_request(&self, request: &ChatCompletionRequest) -> Result<anthropic::MessagesRequest, CloudError> {
        anthropic::request(request).map_err(|reason| CloudError::Config(format!("{}: {reason}", self.chat_url)))
    }

    fn fill_model(&self, model: &mut String) {
        if model.is_empty() {
            model.clone_from(&self.model);
        }
    }

    /// Runs `call` to `url` under the per-call deadline.
    async fn deadline<T>(
        &self,
        url: &reqwest::Url,
        call: impl Future<Output = Result<T, CloudError>>,
    ) -> Result<T, CloudError> {
        tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| Err(self.timeout_error(url)))
    }

    /// Posts `body` and returns the response if its status is a success.
    async fn send(&self, url: &reqwest::Url, body: &impl Serialize) -> Result<reqwest::Response, CloudError> {
        let mut builder = self.http.post(url.clone()).json(body);
        match (self.protocol, &self.credential) {
            (Protocol::OpenAi, Some(credential)) => builder = builder.bearer_auth(credential.expose()),
            (Protocol::OpenAi, None) => {}
            (Protocol::Anthropic, credential) => {
                builder = builder.header("anthropic-version", anthropic::API_VERSION);
                if let Some(credential) = credential {
                    let mut key = reqwest::header::HeaderValue::from_str(credential.expose())
                        .map_err(|_| CloudError::Config("the credential cannot go in a header".to_owned()))?;
                    key.set_sensitive(true);
                    builder = builder.header("x-api-key", key);
                }
            }
        }
        let response = builder.send().await.map_err(|e| self.transport_error(url.as_str(), e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.unwrap_or_default();
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => error.error.message,
            Err(_) if body.is_empty() => status.canonical_reason().unwrap_or("no body").to_owned(),
            Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
        };
        Err(CloudError::Status {
            endpoint: url.to_string(),
            status: status.as_u16(),
            message: self.redact(&message),
            retry_after,
        })
    }

    fn parse<T: DeserializeOwned>(&self, endpoint: &str, body: &[u8]) -> Result<T, CloudError> {
        serde_json::from_slice(body)
            .map_err(|e| CloudError::Malformed { endpoint: endpoint.to_owned(), reason: self.redact(&e.to_string()) })
    }

    fn transport_error(&self, endpoint: &str, error: reqwest::Error) -> CloudError {
        let endpoint = endpoint.to_owned();
        // reqwest's Display stops at "error sending request"; the cause is in the chain.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        let reason = self.redact(&reason);
        if error.is_timeout() {
            CloudError::Timeout { endpoint, timeout: self.timeout }
        } else if error.is_connect() {
            CloudError::Connect { endpoint, reason }
        } else if error.is_builder() {
            CloudError::Config(format!("request to {endpoint}: {reason}"))
        } else {
            // The connection closed before or during the response.
            CloudError::Interrupted { endpoint, reason }
        }
    }

    fn timeout_error(&self, url: &reqwest::Url) -> CloudError {
        CloudError::Timeout { endpoint: url.to_string(), timeout: self.timeout }
    }

    fn redact(&self, text: &str) -> String {
        match &self.credential {
            Some(credential) => credential.redact(text),
            None => text.to_owned(),
        }
    }
}

/// A reply arriving as server-sent events. Dropping it closes the connection.
#[derive(Debug)]
pub struct ChatStream {
    /// For deadlines, errors and redaction.
    client: CloudClient,
    /// Turns Anthropic events into OpenAI chunks (`None` for OpenAI).
    translator: Option<StreamTranslator>,
    /// The open response.
    response: reqwest::Response,
    /// Splits the body into events.
    decoder: SseDecoder,
    /// Decoded event payloads not yet handled.
    pending: std::collections::VecDeque<String>,
    /// What has arrived so far.
    completion: ChatCompletion,
    /// Pieces of tool calls so far.
    calls: super::tools::ToolCallAssembler,
    /// `[DONE]` (or the end of the body) was seen.
    done: bool,
}

impl ChatStream {
    /// The next piece of text, `None` at the end of the reply. Each wait is
    /// bounded by the per-call deadline.
    pub async fn next_delta(&mut self) -> Result<Option<String>, CloudError> {
        loop {
            while let Some(data) = self.pending.pop_front() {
                if let Some(delta) = self.handle_event(&data)? {
                    return Ok(Some(delta));
                }
            }
            if self.done {
                return Ok(None);
            }
            match self.read_chunk().await? {
                Some(bytes) => self.pending.extend(self.decoder.feed(&bytes)),
                None => {
                    self.pending.extend(self.decoder.finish());
                    if self.pending.is_empty() {
                        return self.end_of_body();
                    }
                }
            }
        }
    }

    /// Usage, once the final chunk has arrived.
    pub fn usage(&self) -> Option<Usage> {
        self.completion.usage
    }

    /// Reads the rest of the stream and returns the whole reply, its tool
    /// calls assembled.
    pub async fn finish(mut self) -> Result<ChatCompletion, CloudError> {
        while self.next_delta().await?.is_some() {}
        let endpoint = self.client.chat_url.to_string();
        self.completion.tool_calls =
            self.calls.finish().map_err(|err| CloudError::Malformed { endpoint, reason: err.to_string() })?;
        if self.translator.is_some() {
            // A tool_use block with no input streams no input deltas.
            for call in &mut self.completion.tool_calls {
                if call.function.arguments.is_empty() {
                    call.function.arguments = "{}".to_owned();
                }
            }
        }
        Ok(self.completion)
    }

    async fn read_chunk(&mut self) -> Result<Option<Bytes>, CloudError> {
        let endpoint = self.client.chat_url.as_str();
        match tokio::time::timeout(self.client.timeout, self.response.chunk()).await {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(error)) => Err(self.client.transport_error(endpoint, error)),
            Err(_) => Err(self.client.timeout_error(&self.client.chat_url)),
        }
    }

    /// The body ended without `[DONE]`: fine after a finish reason, else broken off.
    fn end_of_body(&mut self) -> Result<Option<String>, CloudError> {
        self.done = true;
        if self.completion.finish_reason.is_some() {
            Ok(None)
        } else {
            Err(CloudError::Interrupted {
                endpoint: self.client.chat_url.to_string(),
                reason: "the stream ended before the reply finished".to_owned(),
            })
        }
    }

    /// Applies one event; returns its text, if it carried any.
    fn handle_event(&mut self, data: &str) -> Result<Option<String>, CloudError> {
        let endpoint = self.client.chat_url.as_str();
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        if let Ok(error) = serde_json::from_str::<ErrorBody>(data) {
            return Err(CloudError::Interrupted {
                endpoint: endpoint.to_owned(),
                reason: self.client.redact(&error.error.message),
            });
        }
        let chunk: ChatCompletionChunk = match &mut self.translator {
            None => self.client.parse(endpoint, data.as_bytes())?,
            Some(translator) => match translator.translate(data) {
                Ok(Translated::Chunk(chunk)) => chunk,
                Ok(Translated::Nothing) => return Ok(None),
                Ok(Translated::Done) => {
                    self.done = true;
                    return Ok(None);
                }
                Err(reason) => {
                    return Err(CloudError::Malformed {
                        endpoint: endpoint.to_owned(),
                        reason: self.client.redact(&reason),
                    })
                }
            },
        };
        if self.completion.id.is_empty() {
            self.completion.id = chunk.id;
            self.completion.model = chunk.model;
        }
        if chunk.usage.is_some() {
            self.completion.usage = chunk.usage;
        }
        let mut text = None::<String>;
        for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
            for piece in &choice.delta.tool_calls {
                self.calls
                    .push(piece)
                    .map_err(|err| CloudError::Malformed { endpoint: endpoint.to_owned(), reason: err.to_string() })?;
            }
            if let Some(content) = choice.delta.content.filter(|content| !content.is_empty()) {
                self.completion.text.push_str(&content);
                text.get_or_insert_with(String::new).push_str(&content);
            }
            if choice.finish_reason.is_some() {
                self.completion.finish_reason = choice.finish_reason;
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_give_the_host() {
        let config = |base_url: &str| CloudConfig {
            protocol: Protocol::OpenAi,
            stream: false,
            base_url: base_url.to_owned(),
            model: "m".to_owned(),
            timeout: Duration::from_secs(1),
            credential: None,
        };
        let client = CloudClient::new(config("http://10.0.0.7:8088/v1")).unwrap();
        assert_eq!(client.host(), "10.0.0.7:8088");
        assert_eq!(client.chat_url.as_str(), "http://10.0.0.7:8088/v1/chat/completions");
        assert_eq!(CloudClient::new(config("https://api.openai.com/v1/")).unwrap().host(), "api.openai.com");
        for bad in ["ftp://x/v1", "not a url", "https://user:pw@x/v1", "https://x/v1?key=1"] {
            assert!(matches!(CloudClient::new(config(bad)), Err(CloudError::Config(_))), "{bad}");
        }
    }
}
