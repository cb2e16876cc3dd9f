//! Entries in an S3 bucket (or any S3-compatible store: MinIO, Ceph, R2, moto): one object per
//! entry, `<prefix>/v<N>/<backend>/<kk>/<key>.kart`, listed with ListObjectsV2.
//!
//! Requests are signed with AWS Signature V4 by `rusty-s3` (presigned URLs) and sent by `ureq`
//! with a connect timeout and a whole-request timeout. Credentials come from the standard
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); without them,
//! requests go unsigned (a public bucket). Errors S3 asks clients to retry (500, 502, 503, 504,
//! 429: `InternalError`, `SlowDown`) are retried twice, 100 ms and 400 ms apart.

use crate::remote_url::redact;
use crate::{entry_path, scrub, Config, OpenError};
use kiln_compile::RemoteError;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::time::Duration;

/// How long a presigned request stays valid: longer than any timeout.
const SIGNED_FOR: Duration = Duration::from_secs(600);
/// Entries can be large (CUDA modules): no small body limit.
const MAX_ENTRY: u64 = 4 << 30;
const RETRY_AFTER: [u64; 2] = [100, 400];

pub struct S3Store {
    bucket: Bucket,
    prefix: String,
    credentials: Option<Credentials>,
    agent: ureq::Agent,
    list_agent: ureq::Agent,
    secrets: Vec<String>,
}

impl S3Store {
    pub fn new(bucket: &str, prefix: &str, config: &Config) -> Result<S3Store, OpenError> {
        let s3 = &config.s3;
        let region = s3.region.clone().unwrap_or_else(|| "us-east-1".into());
        // A custom endpoint (MinIO, moto, ...) is addressed by path; AWS by virtual host.
        let (endpoint, style) = match &s3.endpoint {
            Some(e) => (e.clone(), UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let endpoint: url::Url = endpoint.parse().map_err(|source| OpenError::S3Endpoint {
            endpoint: redact(&endpoint),
            source,
        })?;
        let bucket =
            Bucket::new(endpoint, style, bucket.to_string(), region).map_err(|source| {
                OpenError::S3Bucket {
                    bucket: bucket.to_string(),
                    source,
                }
            })?;
        let credentials = match (&s3.access_key_id, &s3.secret_access_key) {
            (Some(k), Some(s)) => Some(match &s3.session_token {
                Some(t) => Credentials::new_with_token(k, s, t),
                None => Credentials::new(k, s),
            }),
            _ => None,
        };
        let mut secrets: Vec<String> = [&s3.secret_access_key, &s3.session_token]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        secrets.retain(|s| !s.is_empty());
        let agent = |whole: Duration| -> ureq::Agent {
            ureq::Agent::config_builder()
                .timeout_connect(Some(config.connect_timeout))
                .timeout_global(Some(whole))
                .http_status_as_error(false)
                .build()
                .into()
        };
        Ok(S3Store {
            bucket,
            prefix: prefix.to_string(),
            credentials,
            agent: agent(config.op_timeout),
            list_agent: agent(config.list_timeout),
            secrets,
        })
    }

    fn object(&self, backend: &str, key: &str) -> Result<String, RemoteError> {
        let path = entry_path(backend, key)?;
        Ok(if self.prefix.is_empty() {
            path
        } else {
            format!("{}/{path}", self.prefix)
        })
    }

    /// Sends a request (again after a retryable status) and returns the status and body.
    fn send(
        &self,
        what: &str,
        request: impl Fn() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), RemoteError> {
        let mut attempt = 0;
        loop {
            let mut response = request().map_err(|e| self.error(what, &e))?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_ENTRY)
                .read_to_vec()
                .map_err(|e| self.error(what, &e))?;
            let retryable = matches!(status, 429 | 500 | 502 | 503 | 504);
            if retryable && attempt < RETRY_AFTER.len() {
                std::thread::sleep(Duration::from_millis(RETRY_AFTER[attempt]));
                attempt += 1;
                continue;
            }
            return Ok((status, body));
        }
    }

    /// `GET on bucket b`: what a message says was being done.
    fn op(&self, what: &str) -> String {
        format!("{what} on bucket {}", self.bucket.name())
    }

    /// The client's error as a [`RemoteError`], its text scrubbed of the secrets (the request
    /// was a presigned URL, which a client error may echo).
    fn error(&self, what: &str, e: &ureq::Error) -> RemoteError {
        let op = self.op(what);
        let detail = scrub(e.to_string(), &self.secrets);
        match e {
            ureq::Error::Timeout(_) => RemoteError::Timeout { op, detail },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                RemoteError::Timeout { op, detail }
            }
            _ => RemoteError::Unreachable { op, detail },
        }
    }

    fn status_error(&self, what: &str, status: u16, body: &[u8]) -> RemoteError {
        // S3 errors are XML with a <Code> and a <Message>: show those, not the whole body.
        let text = String::from_utf8_lossy(body);
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find(&format!("</{tag}>"))? + start;
            Some(text[start..end].to_string())
        };
        let detail = match (field("Code"), field("Message")) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            _ => text.chars().take(200).collect(),
        };
        RemoteError::Refused {
            op: self.op(what),
            status: Some(status),
            detail: scrub(format!("HTTP {status} {detail}"), &self.secrets),
        }
    }

    pub fn get(&self, backend: &str, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let object = self.object(backend, key)?;
        let url = self
            .bucket
            .get_object(self.credentials.as_ref(), &object)
            .sign(SIGNED_FOR);
        let (status, body) = self.send("GET", || self.agent.get(url.as_str()).call())?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            s => Err(self.status_error("GET", s, &body)),
        }
    }

    pub fn put(&self, backend: &str, key: &str, entry: &[u8]) -> Result<(), RemoteError> {
        let object = self.object(backend, key)?;
        let url = self
            .bucket
            .put_object(self.credentials.as_ref(), &object)
            .sign(SIGNED_FOR);
        let (status, body) = self.send("PUT", || self.agent.put(url.as_str()).send(entry))?;
        match status {
            200 | 201 | 204 => Ok(()),
            s => Err(self.status_error("PUT", s, &body)),
        }
    }

    pub fn delete(&self, backend: &str, key: &str) -> Result<(), RemoteError> {
        let object = self.object(backend, key)?;
        let url = self
            .bucket
            .delete_object(self.credentials.as_ref(), &object)
            .sign(SIGNED_FOR);
        let (status, body) = self.send("DELETE", || self.agent.delete(url.as_str()).call())?;
        match status {
            200 | 204 | 404 => Ok(()),
            s => Err(self.status_error("DELETE", s, &body)),
        }
    }

    /// Every entry path under the prefix (`v<N>/<backend>/<kk>/<key>.kart`), page by page.
    pub fn list(&self) -> Result<Vec<String>, RemoteError> {
        let root = if self.prefix.is_empty() {
            crate::layout_root()
        } else {
            format!("{}/{}", self.prefix, crate::layout_root())
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(self.credentials.as_ref());
            action.with_prefix(root.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let (status, body) = self.send("LIST", || self.list_agent.get(url.as_str()).call())?;
            if status != 200 {
                return Err(self.status_error("LIST", status, &body));
            }
            let page =
                rusty_s3::actions::ListObjectsV2::parse_response(&String::from_utf8_lossy(&body))
                    .map_err(|e| RemoteError::Refused {
                    op: self.op("LIST"),
                    status: Some(status),
                    detail: scrub(format!("unreadable listing: {e}"), &self.secrets),
                })?;
            out.extend(
                page.contents
                    .into_iter()
                    .filter_map(|c| c.key.strip_prefix(strip.as_str()).map(String::from)),
            );
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }
}
