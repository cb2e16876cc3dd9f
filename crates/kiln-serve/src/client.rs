//! A small blocking client of this server's API (ureq): what `kiln bench serve` and the tests
//! drive a server with. Streams are read as they arrive, with the time each chunk came.

use serde_json::Value;
use std::io::BufRead;
use std::time::{Duration, Instant};

pub struct Client {
    base: String,
    agent: ureq::Agent,
    api_key: Option<String>,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body)
            .map_err(|e| anyhow::anyhow!("not JSON ({e}): {}", self.body))
    }
}

/// A streamed response, as far as it was read.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    /// When the request was sent.
    pub started: Instant,
    /// The `data:` chunks before `[DONE]`, each with the time it arrived.
    pub chunks: Vec<(Instant, Value)>,
    /// `data: [DONE]` arrived.
    pub done: bool,
    /// The body of a refused request, or an `{"error": ...}` chunk.
    pub error: Option<Value>,
}

impl Streamed {
    fn choices(&self) -> impl Iterator<Item = (Instant, &Value)> {
        self.chunks.iter().filter_map(|(t, c)| {
            c["choices"]
                .as_array()
                .and_then(|a| a.first())
                .map(|ch| (*t, ch))
        })
    }

    /// The text of all chunks (`text` of a completion, `delta.content` of a chat).
    pub fn text(&self) -> String {
        self.choices()
            .filter_map(|(_, c)| c["text"].as_str().or(c["delta"]["content"].as_str()))
            .collect()
    }

    /// The ids of the tokens (with `return_token_ids`), each with the time its chunk came.
    pub fn tokens(&self) -> Vec<(Instant, u32)> {
        self.choices()
            .flat_map(|(t, c)| {
                c["token_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(move |v| v.as_u64().map(|id| (t, id as u32)))
            })
            .collect()
    }

    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens().into_iter().map(|(_, id)| id).collect()
    }

    pub fn finish_reason(&self) -> Option<String> {
        self.choices()
            .filter_map(|(_, c)| c["finish_reason"].as_str().map(String::from))
            .last()
    }

    pub fn usage(&self) -> Option<&Value> {
        self.chunks
            .iter()
            .map(|(_, c)| &c["usage"])
            .find(|u| u.is_object())
    }

    /// The request id every chunk carries.
    pub fn id(&self) -> Option<&str> {
        self.chunks.first().and_then(|(_, c)| c["id"].as_str())
    }

    /// Completed: a finish reason, then `[DONE]`, and no error.
    pub fn complete(&self) -> bool {
        self.status == 200 && self.done && self.error.is_none() && self.finish_reason().is_some()
    }
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: config.into(),
            api_key: None,
        }
    }

    pub fn with_api_key(mut self, key: &str) -> Client {
        self.api_key = Some(key.to_string());
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Reply> {
        let mut req = self.agent.get(self.url(path));
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.call()?;
        Ok(Reply {
            status: resp.status().as_u16(),
            body: resp.body_mut().read_to_string()?,
        })
    }

    /// Posts raw bytes as JSON.
    pub fn post_bytes(&self, path: &str, body: &[u8]) -> anyhow::Result<Reply> {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.send(body)?;
        Ok(Reply {
            status: resp.status().as_u16(),
            body: resp.body_mut().read_to_string()?,
        })
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.post_bytes(path, body.to_string().as_bytes())
    }

    /// Posts a streaming request and reads its events to the end.
    pub fn stream(&self, path: &str, body: &Value) -> anyhow::Result<Streamed> {
        self.stream_until(path, body, |_| true)
    }

    /// Posts a streaming request and reads events while `more(chunks read so far)` says so;
    /// then drops the connection (a client that goes away).
    pub fn stream_until(
        &self,
        path: &str,
        body: &Value,
        more: impl Fn(usize) -> bool,
    ) -> anyhow::Result<Streamed> {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let started = Instant::now();
        let resp = req.send(body.to_string().as_bytes())?;
        let status = resp.status().as_u16();
        let mut out = Streamed {
            status,
            started,
            chunks: vec![],
            done: false,
            error: None,
        };
        let mut body = resp.into_body();
        if status != 200 {
            let text = body.read_to_string()?;
            out.error = Some(serde_json::from_str(&text).unwrap_or(Value::String(text)));
            return Ok(out);
        }
        let reader = std::io::BufReader::new(body.into_reader());
        for line in reader.lines() {
            if !more(out.chunks.len()) {
                break;
            }
            let line = line?;
            let Some(data) = line.strip_prefix("data: ") else {
                continue; // the blank line between events, comments
            };
            if data == "[DONE]" {
                out.done = true;
                break;
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| anyhow::anyhow!("a chunk that is not JSON ({e}): {data}"))?;
            if v.get("error").is_some() {
                out.error = Some(v);
                break;
            }
            out.chunks.push((Instant::now(), v));
        }
        Ok(out)
    }
}

/// The `p`-th percentile (0 to 100) of `values`, by the nearest rank; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
