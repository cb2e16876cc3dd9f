//! Entries in Redis: one string key per entry, `<prefix>/v<N>/<backend>/<kk>/<key>.kart`,
//! written with `SET` (and `PX` when a TTL is set, so an entry expires that long after its
//! last upload), listed with `SCAN MATCH`, which walks the keyspace in small steps without
//! blocking the server.
//!
//! The synchronous client with socket timeouts: connecting is bounded by the connect timeout,
//! every command by the operation timeout. Connections are pooled (one per thread in use);
//! a connection that failed is dropped, not reused.

use crate::{entry_path, scrub, Config, OpenError};
use kiln_compile::RemoteError;
use std::sync::Mutex;
use std::time::Duration;

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    ttl: Option<Duration>,
    connect_timeout: Duration,
    op_timeout: Duration,
    idle: Mutex<Vec<redis::Connection>>,
    secrets: Vec<String>,
}

impl RedisStore {
    pub fn new(
        connect: &str,
        prefix: &str,
        config: &Config,
        secrets: Vec<String>,
    ) -> Result<RedisStore, OpenError> {
        let client = redis::Client::open(connect).map_err(|e| OpenError::Redis {
            detail: scrub(e.to_string(), &secrets),
        })?;
        Ok(RedisStore {
            client,
            prefix: prefix.to_string(),
            ttl: config.ttl,
            connect_timeout: config.connect_timeout,
            op_timeout: config.op_timeout,
            idle: Mutex::new(Vec::new()),
            secrets,
        })
    }

    fn name(&self, backend: &str, key: &str) -> Result<String, RemoteError> {
        Ok(format!("{}/{}", self.prefix, entry_path(backend, key)?))
    }

    /// Runs `f` on a pooled connection (a new one if none is idle); keeps the connection only
    /// if `f` succeeded.
    fn with<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RemoteError> {
        let pooled = self.idle.lock().expect("pool").pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(self.connect_timeout)
                    .map_err(|e| self.error(what, e))?;
                c.set_read_timeout(Some(self.op_timeout))
                    .and_then(|()| c.set_write_timeout(Some(self.op_timeout)))
                    .map_err(|e| self.error(what, e))?;
                c
            }
        };
        let out = f(&mut con).map_err(|e| self.error(what, e))?;
        self.idle.lock().expect("pool").push(con);
        Ok(out)
    }

    /// The client's error as a [`RemoteError`], its text scrubbed of the password (the
    /// client may echo the URL).
    fn error(&self, what: &str, e: redis::RedisError) -> RemoteError {
        let op = what.to_string();
        let detail = scrub(e.to_string(), &self.secrets);
        if e.is_timeout() {
            RemoteError::Timeout { op, detail }
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            RemoteError::Unreachable { op, detail }
        } else {
            // An error reply: a wrong password, a read-only replica, an out-of-memory server.
            RemoteError::Refused {
                op,
                status: None,
                detail,
            }
        }
    }

    pub fn get(&self, backend: &str, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let name = self.name(backend, key)?;
        self.with("GET", |c| redis::cmd("GET").arg(&name).query(c))
    }

    pub fn put(&self, backend: &str, key: &str, entry: &[u8]) -> Result<(), RemoteError> {
        let name = self.name(backend, key)?;
        self.with("SET", |c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&name).arg(entry);
            if let Some(ttl) = self.ttl {
                cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
            }
            cmd.query(c)
        })
    }

    pub fn delete(&self, backend: &str, key: &str) -> Result<(), RemoteError> {
        let name = self.name(backend, key)?;
        self.with("DEL", |c| redis::cmd("DEL").arg(&name).query(c))
    }

    /// Every entry path under the prefix (`v<N>/<backend>/<kk>/<key>.kart`).
    pub fn list(&self) -> Result<Vec<String>, RemoteError> {
        let pattern = format!("{}/{}*", self.prefix, crate::layout_root());
        let strip = format!("{}/", self.prefix);
        self.with("SCAN", |c| {
            let mut cursor: u64 = 0;
            let mut out = Vec::new();
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                out.extend(
                    batch
                        .into_iter()
                        .filter_map(|k| k.strip_prefix(&strip).map(String::from)),
                );
                if next == 0 {
                    return Ok(out);
                }
                cursor = next;
            }
        })
    }

    /// Milliseconds left before an entry expires (None: no expiry or no entry); for tests.
    pub fn ttl_ms(&self, backend: &str, key: &str) -> Result<Option<u64>, RemoteError> {
        let name = self.name(backend, key)?;
        let ms: i64 = self.with("PTTL", |c| redis::cmd("PTTL").arg(&name).query(c))?;
        Ok((ms >= 0).then_some(ms as u64))
    }
}
