//! The HTTP side (axum on tokio): routes, the API key, body limits, tokenization and checks
//! of each request, then either one JSON response or a stream of server-sent events in the
//! form the OpenAI clients parse (`data: {json}\n\n` chunks, then `data: [DONE]\n\n`).
//! Every refused request is answered with OpenAI's error body and logged on one line.

use crate::api::{
    ApiError, AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion,
    ChatRequest, Completion, CompletionChoice, CompletionRequest, Delta, GenerateParams, ModelCard,
    ModelList, PromptInput, Usage,
};
use crate::driver::{EngineHandle, EngineState, SeqEvent, Submission};
use crate::metrics::{self, Metrics};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use kiln_models::Tokenizer;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What every handler shares.
pub struct AppState {
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// The id clients name in `model`.
    pub model_name: String,
    pub vocab_size: usize,
    /// Positions one request may fill (prompt and output): `--ctx`.
    pub ctx: usize,
    /// Token ids that end a sequence (unless `ignore_eos`).
    pub stop_ids: Vec<u32>,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// When the server started (Unix seconds): `created` of the model card, and request ids.
    pub started: u64,
    /// Seeds for requests that give none.
    pub seeds: AtomicU64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_response(status: u16, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("API types serialize");
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.status, &e.body())
}

/// The metrics label of a refusal's status.
fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

impl AppState {
    /// A request id: unique in this process, and across restarts in practice.
    fn request_id(&self, prefix: &str, seq: u64) -> String {
        format!("{prefix}-{:08x}{seq:08x}", self.started as u32)
    }

    /// Answers a request that will not run: one log line, a count, OpenAI's error body.
    fn refuse(&self, id: &str, endpoint: &str, e: &ApiError) -> Response {
        tracing::info!(
            "request id={id} endpoint={endpoint} status={} error={:?}",
            e.status,
            e.message
        );
        self.metrics.request(status_label(e.status));
        error_response(e)
    }

    fn check_model(&self, asked: &str) -> Result<(), ApiError> {
        if asked == self.model_name {
            Ok(())
        } else {
            Err(ApiError::model_not_found(asked, &self.model_name))
        }
    }

    fn tokenizer(&self, what: &str) -> Result<Arc<Tokenizer>, ApiError> {
        self.tokenizer.clone().ok_or_else(|| {
            ApiError::invalid(
                format!(
                    "{} has no tokenizer.json: {what} needs one (give /v1/completions the \
                     prompt as token ids)",
                    self.model_name
                ),
                None,
            )
        })
    }

    /// Tokenizes off the async threads (a long prompt takes a while).
    async fn encode(&self, tok: Arc<Tokenizer>, text: String) -> Result<Vec<u32>, ApiError> {
        tokio::task::spawn_blocking(move || tok.encode(&text))
            .await
            .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))?
            .map_err(|e| ApiError::invalid(e.to_string(), None))
    }

    /// A prompt the model can take: not empty, ids in the vocabulary, room for one token.
    fn check_prompt(&self, ids: &[u32], param: &str) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Err(ApiError::invalid(
                format!("the prompt ('{param}') is empty"),
                Some(param),
            ));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(ApiError::invalid(
                format!(
                    "token id {bad} in '{param}' is out of range for a vocabulary of {}",
                    self.vocab_size
                ),
                Some(param),
            ));
        }
        if ids.len() >= self.ctx {
            return Err(ApiError::invalid(
                format!(
                    "the prompt ('{param}') has {} tokens; the context holds {} (--ctx) and must \
                     leave room for at least one new token",
                    ids.len(),
                    self.ctx
                ),
                Some(param),
            )
            .with_code("context_length_exceeded"));
        }
        Ok(())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_card))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

async fn authorize(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            let id = s.request_id("req", s.engine.next_seq());
            return s.refuse(&id, req.uri().path(), &ApiError::unauthorized());
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference (the time taken does not tell how much
/// of a guessed key was right).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(State(s): State<Arc<AppState>>, uri: Uri) -> Response {
    let id = s.request_id("req", s.engine.next_seq());
    s.refuse(&id, uri.path(), &ApiError::not_found(uri.path()))
}

async fn method_not_allowed(State(s): State<Arc<AppState>>, uri: Uri) -> Response {
    let id = s.request_id("req", s.engine.next_seq());
    let mut e = ApiError::invalid(format!("{} does not take this method", uri.path()), None);
    e.status = 405;
    s.refuse(&id, uri.path(), &e)
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let (status, text) = match s.engine.state() {
        EngineState::Ready => (200, "ok"),
        EngineState::Loading => (503, "loading"),
        EngineState::Draining => (503, "shutting_down"),
        EngineState::Failed => (503, "failed"),
    };
    json_response(status, &serde_json::json!({ "status": text }))
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    s.metrics.queue_depth.set(s.engine.queue_depth() as i64);
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        s.metrics.render(),
    )
        .into_response()
}

fn card(s: &AppState) -> ModelCard {
    ModelCard {
        id: s.model_name.clone(),
        object: "model",
        created: s.started,
        owned_by: "kiln",
        max_model_len: s.ctx,
    }
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    json_response(
        200,
        &ModelList {
            object: "list",
            data: vec![card(&s)],
        },
    )
}

async fn model_card(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.check_model(&id) {
        Ok(()) => json_response(200, &card(&s)),
        Err(e) => {
            let rid = s.request_id("req", s.engine.next_seq());
            s.refuse(&rid, "/v1/models", &e)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Completion => "/v1/completions",
            Kind::Chat => "/v1/chat/completions",
        }
    }
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, Kind::Completion, body).await
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, Kind::Chat, body).await
}

/// A request accepted by the engine: what its response needs.
struct Accepted {
    kind: Kind,
    id: String,
    model: String,
    params: GenerateParams,
    events: UnboundedReceiver<SeqEvent>,
}

async fn generate(s: Arc<AppState>, kind: Kind, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = Instant::now();
    let seq = s.engine.next_seq();
    let id = s.request_id(
        match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        },
        seq,
    );
    let mut response = match accept(&s, kind, body, seq, &id, arrived).await {
        Err(e) => s.refuse(&id, kind.endpoint(), &e),
        Ok(a) if a.params.stream => stream_response(a),
        Ok(a) => whole_response(a).await,
    };
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Parses, checks and tokenizes a request and hands it to the engine.
async fn accept(
    s: &AppState,
    kind: Kind,
    body: Result<Bytes, BytesRejection>,
    seq: u64,
    id: &str,
    arrived: Instant,
) -> Result<Accepted, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(s.max_body_bytes)
        } else {
            ApiError::invalid(format!("cannot read the request body: {r}"), None)
        }
    })?;
    // A seed for requests without one: different for every request, as OpenAI's are.
    let seed = s.seeds.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let (model, prompt, params, param) = match kind {
        Kind::Completion => {
            let r = CompletionRequest::parse(&body)?;
            s.check_model(&r.model)?;
            let (prompt, params) = r.check(seed)?;
            let ids = match prompt {
                PromptInput::Ids(ids) => ids,
                PromptInput::Text(text) => {
                    let tok = s.tokenizer("a text prompt")?;
                    s.encode(tok, text).await?
                }
            };
            (r.model, ids, params, "prompt")
        }
        Kind::Chat => {
            let r = ChatRequest::parse(&body)?;
            s.check_model(&r.model)?;
            let (messages, params) = r.check(seed)?;
            let tok = s.tokenizer("a chat")?;
            let pairs: Vec<(&str, &str)> = messages.iter().map(|(r, c)| (*r, c.as_str())).collect();
            let text = Tokenizer::chat_messages_prompt(&pairs);
            (r.model, s.encode(tok, text).await?, params, "messages")
        }
    };
    s.check_prompt(&prompt, param)?;
    if !params.stop.is_empty() && s.tokenizer.is_none() {
        return Err(ApiError::invalid(
            format!(
                "{} has no tokenizer.json: 'stop' strings need one",
                s.model_name
            ),
            Some("stop"),
        ));
    }
    let (tx, events) = unbounded_channel();
    s.engine.submit(Submission {
        seq,
        request_id: id.to_string(),
        endpoint: kind.endpoint(),
        prompt,
        max_tokens: params.max_tokens.unwrap_or(usize::MAX),
        sampling: params.sampling.clone(),
        stop_ids: if params.ignore_eos {
            vec![]
        } else {
            s.stop_ids.clone()
        },
        stop: params.stop.clone(),
        events: tx,
        arrived,
    })?;
    Ok(Accepted {
        kind,
        id: id.to_string(),
        model,
        params,
        events,
    })
}

/// Waits for the whole generation; one JSON response.
async fn whole_response(mut a: Accepted) -> Response {
    let (mut text, mut ids) = (String::new(), Vec::new());
    let (finish_reason, usage) = loop {
        match a.events.recv().await {
            Some(SeqEvent::Token { text: t, id }) => {
                text.push_str(&t);
                ids.push(id);
            }
            Some(SeqEvent::Done {
                finish_reason,
                usage,
            }) => break (finish_reason, usage),
            Some(SeqEvent::Failed(e)) => return error_response(&e),
            None => {
                return error_response(&ApiError::internal(
                    "the engine stopped before the request finished",
                ))
            }
        }
    };
    let token_ids = a.params.return_token_ids.then_some(ids);
    let created = unix_now();
    match a.kind {
        Kind::Completion => json_response(
            200,
            &Completion {
                id: a.id,
                object: "text_completion",
                created,
                model: a.model,
                choices: vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: Some(finish_reason),
                    token_ids,
                }],
                usage: Some(usage),
            },
        ),
        Kind::Chat => json_response(
            200,
            &ChatCompletion {
                id: a.id,
                object: "chat.completion",
                created,
                model: a.model,
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text,
                    },
                    logprobs: None,
                    finish_reason,
                    token_ids,
                }],
                usage,
            },
        ),
    }
}

/// The JSON of one streamed chunk: `text` (with the ids of its tokens when asked for),
/// a finish reason, or the usage (with no choice).
fn chunk(
    a: &Accepted,
    created: u64,
    text: Option<String>,
    ids: Option<Vec<u32>>,
    finish: Option<&'static str>,
    usage: Option<Usage>,
    first: bool,
) -> String {
    let token_ids = if a.params.return_token_ids { ids } else { None };
    let value = match a.kind {
        Kind::Completion => serde_json::to_string(&Completion {
            id: a.id.clone(),
            object: "text_completion",
            created,
            model: a.model.clone(),
            choices: if usage.is_some() {
                vec![]
            } else {
                vec![CompletionChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    logprobs: None,
                    finish_reason: finish,
                    token_ids,
                }]
            },
            usage,
        }),
        Kind::Chat => serde_json::to_string(&ChatChunk {
            id: a.id.clone(),
            object: "chat.completion.chunk",
            created,
            model: a.model.clone(),
            choices: if usage.is_some() {
                vec![]
            } else {
                vec![ChatChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: first.then_some("assistant"),
                        content: text,
                    },
                    logprobs: None,
                    finish_reason: finish,
                    token_ids,
                }]
            },
            usage,
        }),
    };
    value.expect("API types serialize")
}

/// Server-sent events: a chunk per token that adds text (or per token, with
/// `return_token_ids`), a last chunk with the finish reason, the usage chunk when
/// `stream_options.include_usage`, then `[DONE]`. A request that fails midway ends with an
/// `{"error": ...}` chunk, which the OpenAI clients raise as an error.
fn stream_response(a: Accepted) -> Response {
    let created = unix_now();
    struct Sending {
        a: Accepted,
        ended: bool,
    }
    let mut opening = vec![];
    if a.kind == Kind::Chat {
        opening.push(chunk(
            &a,
            created,
            Some(String::new()),
            None,
            None,
            None,
            true,
        ));
    }
    let events =
        futures_util::stream::unfold(Sending { a, ended: false }, move |mut st| async move {
            if st.ended {
                return None;
            }
            let out: Vec<String> = match st.a.events.recv().await {
                Some(SeqEvent::Token { text, id }) => {
                    if text.is_empty() && !st.a.params.return_token_ids {
                        vec![]
                    } else {
                        vec![chunk(
                            &st.a,
                            created,
                            Some(text),
                            Some(vec![id]),
                            None,
                            None,
                            false,
                        )]
                    }
                }
                Some(SeqEvent::Done {
                    finish_reason,
                    usage,
                }) => {
                    st.ended = true;
                    let text = (st.a.kind == Kind::Completion).then(String::new);
                    let mut v = vec![chunk(
                        &st.a,
                        created,
                        text,
                        None,
                        Some(finish_reason),
                        None,
                        false,
                    )];
                    if st.a.params.include_usage {
                        v.push(chunk(&st.a, created, None, None, None, Some(usage), false));
                    }
                    v.push("[DONE]".to_string());
                    v
                }
                Some(SeqEvent::Failed(e)) => {
                    st.ended = true;
                    vec![e.body().to_string()]
                }
                None => {
                    st.ended = true;
                    vec![
                        ApiError::internal("the engine stopped before the request finished")
                            .body()
                            .to_string(),
                    ]
                }
            };
            Some((futures_util::stream::iter(out), st))
        })
        .flatten();
    let all = futures_util::stream::iter(opening)
        .chain(events)
        .map(|data| Ok::<Event, Infallible>(Event::default().data(data)));
    // A comment line every 15 s while nothing else is sent (a request waiting for a slot):
    // proxies keep the connection, and a client that went away is noticed.
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}
