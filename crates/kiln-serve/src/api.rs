//! The OpenAI API as this server speaks it: request bodies of `/v1/completions` and
//! `/v1/chat/completions` (parsed and checked into [`GenerateParams`]), the responses, the
//! streamed chunks, `/v1/models`, and the error body `{"error": {message, type, param, code}}`.
//!
//! As OpenAI does, fields this server does not know are ignored; a known field of the wrong
//! type is an error naming it. OpenAI parameters that would change the output and that this
//! server does not implement (`logprobs`, `echo`, penalties, `logit_bias`, `tools`, `n` > 1,
//! ...) are refused unless they are at their default, rather than silently ignored.
//!
//! Extensions (as vLLM spells them): `top_k`, `ignore_eos` (generate past the end of
//! sequence), `return_token_ids` (each choice, and each streamed chunk, carries the ids of
//! its tokens in `token_ids`).

use kiln_models::Sampling;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// OpenAI's default `max_tokens` for `/v1/completions`; a chat completion goes on until the
/// end of sequence or the context.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;
/// OpenAI's default temperature (1: sampling). 0 is greedy.
pub const DEFAULT_TEMPERATURE: f32 = 1.0;
/// At most this many stop strings (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// An error as OpenAI sends it: an HTTP status and `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(String::from),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: 401,
            message: "missing or wrong API key: send 'Authorization: Bearer <key>' with the \
                      key the server was started with (--api-key)"
                .into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn model_not_found(asked: &str, served: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!("the model '{asked}' does not exist: this server serves '{served}'"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!(
                "no such endpoint: {path} (this server has /v1/completions, \
                 /v1/chat/completions, /v1/models, /health and /metrics)"
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: 413,
            message: format!("the request body is larger than {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    pub fn queue_full(max_queue: usize) -> ApiError {
        ApiError {
            status: 429,
            message: format!(
                "the server is busy: {max_queue} requests are already waiting (--max-queue); \
                 retry later"
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    pub fn unavailable(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError {
            status: 503,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some(code),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        serde_json::json!({ "error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

/// Parses a JSON body: malformed JSON is a 400 that says so; a field of the wrong type is a
/// 400 naming the field (as `param`).
fn parse_value(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    if !v.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object", None));
    }
    Ok(v)
}

/// `T` from a parsed body, a wrong type naming its field.
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid(format!("invalid request body: {inner}"), None)
        } else {
            ApiError::invalid(format!("invalid '{path}': {inner}"), Some(&path))
        }
    })
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields both endpoints share.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CommonParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    /// A string or a list of strings.
    pub stop: Option<Value>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    // Extensions.
    pub top_k: Option<i64>,
    pub ignore_eos: Option<bool>,
    pub return_token_ids: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, a list of one string, a list of token ids, or a list of one list of ids.
    pub prompt: Value,
    pub max_tokens: Option<i64>,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    #[serde(skip)]
    pub common: CommonParams,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string or a list of `{"type": "text", "text": ...}` parts.
    #[serde(default)]
    pub content: Value,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<Value>>,
    pub functions: Option<Vec<Value>>,
    pub response_format: Option<Value>,
    #[serde(skip)]
    pub common: CommonParams,
}

/// Chat messages as `(role, text)`, roles as the chat markup spells them.
pub type Messages = Vec<(&'static str, String)>;

/// A prompt as the client gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

/// How to generate, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    /// None: until the end of sequence or the context.
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub return_token_ids: bool,
}

fn refuse_unless(ok: bool, param: &str) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("'{param}' is not supported by this server (leave it out or at its default)"),
            Some(param),
        ))
    }
}

fn max_tokens(
    v: Option<i64>,
    param: &str,
    default: Option<usize>,
) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid(
            format!("'{param}' must be at least 1, not {n}"),
            Some(param),
        )),
    }
}

impl CommonParams {
    /// Checks the shared fields; `seed` is used when the request gives none.
    fn params(&self, max_tokens: Option<usize>, seed: u64) -> Result<GenerateParams, ApiError> {
        refuse_unless(self.n.is_none_or(|n| n == 1), "n")?;
        refuse_unless(
            self.presence_penalty.is_none_or(|p| p == 0.0),
            "presence_penalty",
        )?;
        refuse_unless(
            self.frequency_penalty.is_none_or(|p| p == 0.0),
            "frequency_penalty",
        )?;
        refuse_unless(
            self.logit_bias.as_ref().is_none_or(|b| b.is_empty()),
            "logit_bias",
        )?;
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("'temperature' must be between 0 and 2, not {temperature}"),
                Some("temperature"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                format!("'top_p' must be in (0, 1], not {top_p}"),
                Some("top_p"),
            ));
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| {
                    ApiError::invalid("'stop' must be a string or a list of strings", Some("stop"))
                })?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "'stop' must be a string or a list of strings",
                    Some("stop"),
                ))
            }
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid(
                format!(
                    "'stop' has {} strings; at most {MAX_STOP_STRINGS}",
                    stop.len()
                ),
                Some("stop"),
            ));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid(
                "'stop' strings must not be empty",
                Some("stop"),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        Ok(GenerateParams {
            max_tokens,
            sampling: Sampling {
                temperature,
                top_k: self.top_k.map_or(0, |k| k.max(0) as usize),
                top_p,
                seed: self.seed.map_or(seed, |s| s as u64),
            },
            stop,
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .as_ref()
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            return_token_ids: self.return_token_ids.unwrap_or(false),
        })
    }
}

impl CompletionRequest {
    /// The request in a body (fields of both endpoints in `common`).
    pub fn parse(body: &[u8]) -> Result<CompletionRequest, ApiError> {
        let v = parse_value(body)?;
        let mut r: CompletionRequest = typed(&v)?;
        r.common = typed(&v)?;
        Ok(r)
    }

    pub fn check(&self, seed: u64) -> Result<(PromptInput, GenerateParams), ApiError> {
        refuse_unless(self.echo != Some(true), "echo")?;
        refuse_unless(self.logprobs.is_none(), "logprobs")?;
        refuse_unless(self.best_of.is_none_or(|b| b == 1), "best_of")?;
        refuse_unless(self.suffix.as_ref().is_none_or(|s| s.is_empty()), "suffix")?;
        let prompt = prompt_input(&self.prompt)?;
        let max = max_tokens(
            self.max_tokens,
            "max_tokens",
            Some(DEFAULT_COMPLETION_MAX_TOKENS),
        )?;
        Ok((prompt, self.common.params(max, seed)?))
    }
}

const PROMPT_FORMS: &str = "'prompt' must be a string, a list of one string, a list of token ids \
                            or a list of one list of token ids";

fn ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

fn prompt_input(v: &Value) -> Result<PromptInput, ApiError> {
    let bad = || ApiError::invalid(PROMPT_FORMS, Some("prompt"));
    let several = || {
        ApiError::invalid(
            "'prompt' holds several prompts: this server takes one prompt per request",
            Some("prompt"),
        )
    };
    match v {
        Value::String(s) => Ok(PromptInput::Text(s.clone())),
        Value::Array(items) => match items.first() {
            None => Err(ApiError::invalid("'prompt' is empty", Some("prompt"))),
            Some(Value::String(s)) if items.len() == 1 => Ok(PromptInput::Text(s.clone())),
            Some(Value::String(_)) => Err(several()),
            Some(Value::Array(inner)) if items.len() == 1 => {
                ids(inner).map(PromptInput::Ids).ok_or_else(bad)
            }
            Some(Value::Array(_)) => Err(several()),
            Some(_) => ids(items).map(PromptInput::Ids).ok_or_else(bad),
        },
        _ => Err(bad()),
    }
}

/// A chat message's role as the chat markup spells it.
fn role(r: &str) -> Result<&'static str, ApiError> {
    match r {
        "system" | "developer" => Ok("system"),
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        other => Err(ApiError::invalid(
            format!("message role '{other}' is not supported (system, developer, user, assistant)"),
            Some("messages"),
        )),
    }
}

fn content_text(i: usize, v: &Value) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => s.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!(
                                "{param}: only text parts are supported, not {}",
                                kind.unwrap_or("a part without a type")
                            ),
                            Some(&param),
                        ))
                    }
                }
            }
            Ok(s)
        }
        _ => Err(ApiError::invalid(
            format!("{param} must be a string or a list of text parts"),
            Some(&param),
        )),
    }
}

impl ChatRequest {
    /// The request in a body (fields of both endpoints in `common`).
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        let v = parse_value(body)?;
        let mut r: ChatRequest = typed(&v)?;
        r.common = typed(&v)?;
        Ok(r)
    }

    /// The messages as `(role, text)` and the generation parameters.
    pub fn check(&self, seed: u64) -> Result<(Messages, GenerateParams), ApiError> {
        refuse_unless(self.logprobs != Some(true), "logprobs")?;
        refuse_unless(self.top_logprobs.is_none(), "top_logprobs")?;
        refuse_unless(self.tools.as_ref().is_none_or(|t| t.is_empty()), "tools")?;
        refuse_unless(
            self.functions.as_ref().is_none_or(|t| t.is_empty()),
            "functions",
        )?;
        refuse_unless(
            self.response_format.as_ref().is_none_or(|f| {
                f.is_null() || f.get("type").and_then(Value::as_str) == Some("text")
            }),
            "response_format",
        )?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid("'messages' is empty", Some("messages")));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| Ok((role(&m.role)?, content_text(i, &m.content)?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        let max = match self.max_completion_tokens {
            Some(_) => max_tokens(self.max_completion_tokens, "max_completion_tokens", None)?,
            None => max_tokens(self.max_tokens, "max_tokens", None)?,
        };
        Ok((messages, self.common.params(max, seed)?))
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// `/v1/completions`: the response, and each streamed chunk (the same shape).
#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Positions a request may fill (prompt and output).
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str) -> Result<(PromptInput, GenerateParams), ApiError> {
        CompletionRequest::parse(body.as_bytes())?.check(42)
    }

    fn chat(body: &str) -> Result<(Messages, GenerateParams), ApiError> {
        ChatRequest::parse(body.as_bytes())?.check(42)
    }

    #[test]
    fn a_minimal_completion_gets_openai_defaults() {
        let (p, g) = completion(r#"{"model": "m", "prompt": "Hi"}"#).unwrap();
        assert_eq!(p, PromptInput::Text("Hi".into()));
        assert_eq!(g.max_tokens, Some(16));
        assert_eq!(g.sampling.temperature, 1.0);
        assert_eq!(g.sampling.top_p, 1.0);
        assert_eq!(g.sampling.seed, 42, "the server's seed when none is given");
        assert!(!g.stream && !g.include_usage && g.stop.is_empty());
    }

    #[test]
    fn every_field_is_read() {
        let (p, g) = completion(
            r#"{"model": "m", "prompt": [1, 2, 3], "max_tokens": 5, "temperature": 0,
                "top_p": 0.5, "seed": -1, "stop": ["a", "b"], "n": 1, "stream": true,
                "stream_options": {"include_usage": true}, "top_k": 3, "ignore_eos": true,
                "return_token_ids": true, "user": "x", "some_future_field": {"a": 1}}"#,
        )
        .unwrap();
        assert_eq!(p, PromptInput::Ids(vec![1, 2, 3]));
        assert_eq!(g.max_tokens, Some(5));
        assert_eq!(
            g.sampling,
            Sampling {
                temperature: 0.0,
                top_k: 3,
                top_p: 0.5,
                seed: u64::MAX
            }
        );
        assert_eq!(g.stop, vec!["a", "b"]);
        assert!(g.stream && g.include_usage && g.ignore_eos && g.return_token_ids);
    }

    #[test]
    fn prompt_forms() {
        let p = |s: &str| completion(&format!(r#"{{"model": "m", "prompt": {s}}}"#)).map(|r| r.0);
        assert_eq!(p(r#"["one"]"#).unwrap(), PromptInput::Text("one".into()));
        assert_eq!(p("[[7, 8]]").unwrap(), PromptInput::Ids(vec![7, 8]));
        for bad in ["5", "[1.5]", "[-1]", "{}", "[true]", "null"] {
            let e = p(bad).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some("prompt")),
                "{bad}: {e:?}"
            );
        }
        for several in [r#"["a", "b"]"#, "[[1], [2]]"] {
            assert!(p(several).unwrap_err().message.contains("several prompts"));
        }
        assert!(p("[]").unwrap_err().message.contains("empty"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (body, param) in [
            (
                r#"{"model": "m", "prompt": "x", "temperature": "hot"}"#,
                "temperature",
            ),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": "5"}"#,
                "max_tokens",
            ),
            (r#"{"model": "m", "prompt": "x", "stream": 1}"#, "stream"),
            (r#"{"model": 5, "prompt": "x"}"#, "model"),
            (
                r#"{"model": "m", "prompt": "x", "stream_options": {"include_usage": "y"}}"#,
                "stream_options.include_usage",
            ),
            (r#"{"model": "m", "prompt": "x", "stop": 3}"#, "stop"),
            (r#"{"model": "m", "prompt": "x", "stop": ["a", 1]}"#, "stop"),
        ] {
            let e = completion(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.kind, "invalid_request_error");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
            assert!(e.message.contains(param), "{}", e.message);
        }
        let e = completion(r#"{"prompt": "x"}"#).unwrap_err();
        assert!(e.message.contains("missing field `model`"), "{e:?}");
    }

    #[test]
    fn malformed_json_is_a_400_that_says_so() {
        for body in [
            r#"{"model": "m", "prompt": "x""#,
            "not json",
            "",
            r#"{"a": 1} trailing"#,
        ] {
            let e = completion(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains("not valid JSON"), "{body}: {e:?}");
        }
        let e = completion("[1, 2]").unwrap_err();
        assert!(e.message.contains("must be a JSON object"), "{e:?}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (field, value) in [
            ("temperature", "2.5"),
            ("temperature", "-1"),
            ("top_p", "0"),
            ("top_p", "1.5"),
            ("max_tokens", "0"),
            ("max_tokens", "-3"),
        ] {
            let e = completion(&format!(
                r#"{{"model": "m", "prompt": "x", "{field}": {value}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{field}={value}: {e:?}");
        }
        let e = completion(r#"{"model": "m", "prompt": "x", "stop": ["a","b","c","d","e"]}"#)
            .unwrap_err();
        assert!(e.message.contains("at most 4"));
        let e = completion(r#"{"model": "m", "prompt": "x", "stop": ""}"#).unwrap_err();
        assert!(e.message.contains("empty"));
    }

    #[test]
    fn unsupported_openai_parameters_are_refused_unless_default() {
        for (field, value) in [
            ("n", "2"),
            ("echo", "true"),
            ("logprobs", "1"),
            ("best_of", "3"),
            ("suffix", "\"x\""),
            ("presence_penalty", "0.5"),
            ("frequency_penalty", "1"),
            ("logit_bias", r#"{"5": 1}"#),
        ] {
            let e = completion(&format!(
                r#"{{"model": "m", "prompt": "x", "{field}": {value}}}"#
            ))
            .unwrap_err();
            assert!(e.message.contains("not supported"), "{field}: {e:?}");
            assert_eq!(e.param.as_deref(), Some(field));
        }
        completion(
            r#"{"model": "m", "prompt": "x", "n": 1, "echo": false, "best_of": 1,
                "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "suffix": null}"#,
        )
        .unwrap();
    }

    #[test]
    fn chat_messages_and_limits() {
        let (m, g) = chat(
            r#"{"model": "m", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hello"},
                {"role": "developer", "content": "again"}],
                "max_completion_tokens": 7, "max_tokens": 99}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            vec![
                ("system", "Be brief.".to_string()),
                ("user", "Hi there".to_string()),
                ("assistant", "Hello".to_string()),
                ("system", "again".to_string())
            ]
        );
        assert_eq!(g.max_tokens, Some(7), "max_completion_tokens wins");
        let (_, g) =
            chat(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#).unwrap();
        assert_eq!(
            g.max_tokens, None,
            "a chat goes on to the end of sequence or the context"
        );
        for (body, needle) in [
            (r#"{"model": "m", "messages": []}"#, "empty"),
            (
                r#"{"model": "m", "messages": [{"role": "tool", "content": "x"}]}"#,
                "role 'tool'",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "only text parts",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}"#,
                "'tools'",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": true}"#,
                "'logprobs'",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}"#,
                "response_format",
            ),
            (r#"{"model": "m", "messages": "hi"}"#, "messages"),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{body}: {e:?}");
        }
    }

    #[test]
    fn error_bodies_have_openais_shape() {
        let b = ApiError::queue_full(8).body();
        assert_eq!(b["error"]["type"], "rate_limit_error");
        assert_eq!(b["error"]["code"], "queue_full");
        assert!(b["error"]["param"].is_null());
        assert!(b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-queue"));
        let b = ApiError::invalid("x", Some("temperature")).body();
        assert_eq!(b["error"]["param"], "temperature");
        assert!(b["error"]["code"].is_null());
    }

    #[test]
    fn responses_serialize_as_openai_clients_expect() {
        let c = Completion {
            id: "cmpl-1".into(),
            object: "text_completion",
            created: 1,
            model: "m".into(),
            choices: vec![CompletionChoice {
                index: 0,
                text: "hi".into(),
                logprobs: None,
                finish_reason: Some("length"),
                token_ids: None,
            }],
            usage: Some(Usage::new(3, 2)),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert!(v["choices"][0]["logprobs"].is_null());
        assert!(v["choices"][0].get("token_ids").is_none());
        assert_eq!(v["usage"]["total_tokens"], 5);
        let chunk = ChatChunk {
            id: "c".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                logprobs: None,
                finish_reason: None,
                token_ids: None,
            }],
            usage: None,
        };
        let v = serde_json::to_value(&chunk).unwrap();
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        assert!(v["choices"][0]["finish_reason"].is_null());
        assert!(v.get("usage").is_none());
    }
}
