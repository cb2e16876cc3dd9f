//! kiln's remote kernel-cache stores: where machines share compiled kernels.
//!
//! [`open`] turns a URL (`redis://host:port/db`, `s3://bucket/prefix`, `file:///path`; see
//! [`remote_url`]) into a [`Store`], which implements [`kiln_compile::RemoteStore`]; [`open_cache`]
//! wraps it in the pipeline's [`RemoteCache`] (read-through, write-back, circuit breaker).
//! [`sync`] is `kiln cache push|pull`.
//!
//! Every store keeps entries exactly as the local cache does (the same bytes, checked the same
//! way by the reader) under `v<N>/<backend>/<key[..2]>/<key>.kart`, with `N` the local cache's
//! format version: a format change starts a fresh namespace. Clients are blocking, with
//! timeouts (connect, then per operation), and no error ([`error`]) ever holds a password or
//! a secret key.

pub mod error;
mod fs_store;
mod redis_store;
pub mod remote_url;
mod s3_store;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{ConfigError, OpenError, SyncError, UrlError, UrlErrorKind};
pub use fs_store::FsStore;
pub use redis_store::RedisStore;
pub use remote_url::RemoteUrl;
pub use s3_store::S3Store;

use kiln_compile::cache::CACHE_FORMAT_VERSION;
use kiln_compile::{RemoteCache, RemoteError, RemoteOptions, RemoteStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How to reach a store: timeouts, TTL, S3 settings. [`Config::from_env`] reads the standard
/// variables.
#[derive(Clone)]
pub struct Config {
    /// Connecting (TCP, and the first request).
    pub connect_timeout: Duration,
    /// One get or put.
    pub op_timeout: Duration,
    /// One listing (push and pull), which may take many pages.
    pub list_timeout: Duration,
    /// Redis only: entries expire this long after their last upload. S3: use a lifecycle
    /// rule on the bucket; folders: a cron job.
    pub ttl: Option<Duration>,
    pub s3: S3Config,
    /// The write-back queue and flush limit.
    pub tier: RemoteOptions,
}

/// S3 settings that do not belong in the URL.
#[derive(Clone, Default)]
pub struct S3Config {
    /// An S3-compatible endpoint (`http://minio:9000`); AWS when None.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connect_timeout: Duration::from_secs(2),
            op_timeout: Duration::from_secs(10),
            list_timeout: Duration::from_secs(120),
            ttl: None,
            s3: S3Config::default(),
            tier: RemoteOptions::default(),
        }
    }
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

impl Config {
    /// Defaults, then:
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `KILN_REMOTE_CACHE_CONNECT_TIMEOUT_MS`, `KILN_REMOTE_CACHE_TIMEOUT_MS` | connect (2000) and per-operation (10000) timeouts |
    /// | `KILN_REMOTE_CACHE_TTL` | expiry on Redis: `3600`, `90s`, `30m`, `12h`, `7d` |
    /// | `KILN_REMOTE_CACHE_FLUSH_MS` | how long a compile waits for its uploads at the end (10000) |
    /// | `KILN_REMOTE_CACHE_READONLY=1` | never upload |
    /// | `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` | an S3-compatible endpoint |
    /// | `AWS_REGION`, else `AWS_DEFAULT_REGION` | region (`us-east-1`) |
    /// | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | credentials |
    ///
    /// A malformed value is an error naming the variable.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let ms = |var: &'static str| -> Result<Option<Duration>, ConfigError> {
            env(&[var])
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|&ms| ms <= MAX_WAIT_MS)
                        .map(Duration::from_millis)
                        .ok_or(ConfigError::NotMilliseconds { var, value: v })
                })
                .transpose()
        };
        if let Some(d) = ms("KILN_REMOTE_CACHE_CONNECT_TIMEOUT_MS")? {
            c.connect_timeout = d;
        }
        if let Some(d) = ms("KILN_REMOTE_CACHE_TIMEOUT_MS")? {
            c.op_timeout = d;
        }
        if let Some(d) = ms("KILN_REMOTE_CACHE_FLUSH_MS")? {
            c.tier.flush_limit = d;
        }
        if let Some(v) = env(&["KILN_REMOTE_CACHE_TTL"]) {
            c.ttl = Some(parse_duration(&v).ok_or(ConfigError::NotDuration { value: v })?);
        }
        c.tier.read_only = env(&["KILN_REMOTE_CACHE_READONLY"])
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        c.s3 = S3Config {
            endpoint: env(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]),
            region: env(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            access_key_id: env(&["AWS_ACCESS_KEY_ID"]),
            secret_access_key: env(&["AWS_SECRET_ACCESS_KEY"]),
            session_token: env(&["AWS_SESSION_TOKEN"]),
        };
        Ok(c)
    }
}

/// The longest timeout or flush wait a variable may set: a day.
const MAX_WAIT_MS: u64 = 86_400_000;
/// The longest expiry: ten years.
const MAX_TTL_DAYS: u64 = 3650;

/// `3600` (seconds), `90s`, `30m`, `12h`, `7d`; at most [`MAX_TTL_DAYS`] days.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86400),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().ok().filter(|&n| n > 0)?;
    let secs = n.checked_mul(unit).filter(|&s| s <= MAX_TTL_DAYS * 86400)?;
    Some(Duration::from_secs(secs))
}

/// An opened store.
pub enum Store {
    Redis(RedisStore),
    S3(S3Store),
    Fs(FsStore),
}

/// A store and its URL as shown in messages.
pub struct Remote {
    pub url: RemoteUrl,
    pub store: Store,
}

/// Opens the store a URL names. Fails only on a malformed URL or setting, never because the
/// store is unreachable (that is found out, and survived, when it is used).
pub fn open(url: &str, config: &Config) -> Result<Remote, OpenError> {
    let url = RemoteUrl::parse(url)?;
    let store = match &url.location {
        remote_url::Location::Redis {
            connect, prefix, ..
        } => Store::Redis(RedisStore::new(connect, prefix, config, url.secrets())?),
        remote_url::Location::S3 { bucket, prefix } => {
            Store::S3(S3Store::new(bucket, prefix, config)?)
        }
        remote_url::Location::Fs { root } => Store::Fs(FsStore::new(root)),
    };
    Ok(Remote { url, store })
}

/// [`open`], wrapped in the pipeline's remote tier (queue, breaker) with `config.tier`.
pub fn open_cache(url: &str, config: &Config) -> Result<RemoteCache, OpenError> {
    let remote = open(url, config)?;
    Ok(RemoteCache::new(Box::new(remote), config.tier.clone()))
}

impl Remote {
    /// Every `(backend, key)` the store holds under this format version, sorted.
    pub fn list(&self) -> Result<Vec<(String, String)>, RemoteError> {
        let paths = match &self.store {
            Store::Redis(s) => s.list(),
            Store::S3(s) => s.list(),
            Store::Fs(s) => s.list(),
        }?;
        let mut out: Vec<(String, String)> =
            paths.iter().filter_map(|p| parse_entry_path(p)).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub fn delete(&self, backend: &str, key: &str) -> Result<(), RemoteError> {
        match &self.store {
            Store::Redis(s) => s.delete(backend, key),
            Store::S3(s) => s.delete(backend, key),
            Store::Fs(s) => s.delete(backend, key),
        }
    }
}

impl RemoteStore for Remote {
    fn location(&self) -> &str {
        self.url.shown()
    }

    fn get(&self, backend: &str, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        match &self.store {
            Store::Redis(s) => s.get(backend, key),
            Store::S3(s) => s.get(backend, key),
            Store::Fs(s) => s.get(backend, key),
        }
    }

    fn put(&self, backend: &str, key: &str, entry: &[u8]) -> Result<(), RemoteError> {
        match &self.store {
            Store::Redis(s) => s.put(backend, key, entry),
            Store::S3(s) => s.put(backend, key, entry),
            Store::Fs(s) => s.put(backend, key, entry),
        }
    }
}

/// `url` with a fresh key prefix under it, unique to this call (process, counter, time): tests
/// and benchmarks sharing a server never see each other's entries.
pub fn namespace(url: &str, name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let unique = format!(
        "{name}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let base = url.trim_end_matches('/');
    // A Redis URL needs its database number before the prefix.
    let needs_db =
        base.starts_with("redis://") && base["redis://".len()..].split('/').nth(1).is_none();
    if needs_db {
        format!("{base}/0/{unique}")
    } else {
        format!("{base}/{unique}")
    }
}

/// `v<N>/`: the root of this format version's entries.
fn layout_root() -> String {
    format!("v{CACHE_FORMAT_VERSION}/")
}

/// `v<N>/<backend>/<key[..2]>/<key>.kart`, after checking that the names cannot escape it:
/// backends are `[a-z0-9_-]+`, keys lowercase hex.
pub fn entry_path(backend: &str, key: &str) -> Result<String, RemoteError> {
    let backend_ok = !backend.is_empty()
        && backend
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    let key_ok = key.len() >= 2 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !backend_ok || !key_ok {
        return Err(RemoteError::BadName {
            backend: backend.into(),
            key: key.into(),
        });
    }
    Ok(format!(
        "{}{backend}/{}/{key}.kart",
        layout_root(),
        &key[..2]
    ))
}

/// The inverse of [`entry_path`]; None for anything else (other versions, temporary files).
fn parse_entry_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(&layout_root())?;
    let mut parts = rest.split('/');
    let (backend, _, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let key = file.strip_suffix(".kart")?;
    (entry_path(backend, key).ok()? == path).then(|| (backend.to_string(), key.to_string()))
}

/// Replaces every secret in a message by `***`.
fn scrub(mut message: String, secrets: &[String]) -> String {
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        message = message.replace(s.as_str(), "***");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_round_trip_and_reject_escapes() {
        let key = "ab".to_string() + &"0".repeat(62);
        let p = entry_path("cpu", &key).unwrap();
        assert_eq!(p, format!("v{CACHE_FORMAT_VERSION}/cpu/ab/{key}.kart"));
        assert_eq!(parse_entry_path(&p), Some(("cpu".into(), key.clone())));
        assert_eq!(parse_entry_path(&p.replace("/ab/", "/cd/")), None);
        assert_eq!(parse_entry_path("v1/cpu/ab/x.kart"), None);
        for (b, k) in [
            ("../x", "00"),
            ("cpu", "0"),
            ("cpu", "ZZ"),
            ("cpu", "../00"),
        ] {
            assert!(
                matches!(entry_path(b, k), Err(RemoteError::BadName { .. })),
                "{b} {k}"
            );
        }
    }

    #[test]
    fn a_shared_folder_that_cannot_be_written_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the store's root folder should be.
        let root = dir.path().join("not-a-folder");
        std::fs::write(&root, "x").unwrap();
        let store = FsStore::new(&root);
        let key = "ab".to_string() + &"0".repeat(62);
        let e = store.put("cpu", &key, b"entry").unwrap_err();
        assert!(
            matches!(&e, RemoteError::Io { op: "write", path, .. } if path.starts_with(&root)),
            "{e:?}"
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the io::Error is kept"
        );
        assert!(matches!(
            store.get("cpu", "../x"),
            Err(RemoteError::BadName { .. })
        ));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let e = ConfigError::NotMilliseconds {
            var: "KILN_REMOTE_CACHE_TIMEOUT_MS",
            value: "soon".into(),
        };
        assert_eq!(
            e.to_string(),
            "KILN_REMOTE_CACHE_TIMEOUT_MS=soon is not a number of milliseconds from 0 to \
             86400000 (a day)"
        );
        // An endpoint that does not parse is shown without its password.
        let config = Config {
            s3: S3Config {
                endpoint: Some("http://user:hunter2@[bad".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = open("s3://bucket", &config).err().expect("a bad endpoint");
        assert!(matches!(e, OpenError::S3Endpoint { .. }), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn durations_and_scrubbing() {
        assert_eq!(parse_duration("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("18446744073709551615d"), None);
        assert_eq!(parse_duration("3651d"), None);
        assert_eq!(
            scrub("auth hunter2 failed".into(), &["hunter2".into()]),
            "auth *** failed"
        );
        let c = S3Config {
            secret_access_key: Some("SECRETKEY".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("SECRETKEY"));
    }
}
