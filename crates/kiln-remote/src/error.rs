//! kiln-remote's errors. One store operation fails with [`kiln_compile::RemoteError`] (the
//! pipeline's remote tier sees the same type); opening a store, reading the settings and
//! `kiln cache push|pull` have their own. None of them ever shows a password or a secret key:
//! URLs are shown redacted ([`crate::RemoteUrl::shown`]) and client errors are scrubbed before
//! they are kept.

use kiln_compile::RemoteError;
use std::path::PathBuf;

/// A `--remote-cache` URL kiln cannot use. `url` is the URL as typed with any password
/// replaced by `***`.
#[derive(Debug, thiserror::Error)]
#[error("invalid remote cache URL {url}: {kind}")]
pub struct UrlError {
    pub url: String,
    #[source]
    pub kind: UrlErrorKind,
}

/// What is wrong with a remote cache URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlErrorKind {
    /// Not a URL at all (url's parser says why; it never echoes the text).
    #[error("{0}")]
    Syntax(#[source] url::ParseError),
    #[error("no host")]
    NoHost,
    #[error("no bucket")]
    NoBucket,
    #[error("the first path segment must be the database number")]
    DatabaseNumber,
    #[error("cannot set the password")]
    Password,
    #[error(
        "Redis over TLS is not supported yet; use redis:// (through a TLS tunnel such as stunnel if the server requires TLS)"
    )]
    RedisTls,
    /// Credentials belong in the AWS variables, out of `ps` and shell history.
    #[error("put no credentials in an s3:// URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    S3Credentials,
    #[error("expected file:///absolute/path")]
    NotAbsolutePath,
    /// A path where a URL belongs (the URL parser would only say "relative URL without a
    /// base"): how to write it as a URL (the path, shown).
    #[error("a path, not a URL; for a shared folder write file://{0}")]
    PathNotUrl(String),
    #[error("not a URL; use redis://host, s3://bucket or file:///absolute/path")]
    NotAUrl,
    #[error("the path holds a NUL byte (%00)")]
    NulInPath,
    /// `file://`, `file:///`, `file://localhost`: the root, never meant as a cache folder.
    #[error("names no folder (the cache would be written into /); write file:///absolute/path")]
    NoFolder,
    #[error("unsupported scheme `{0}` (use redis://, s3:// or file://)")]
    UnsupportedScheme(String),
}

/// A malformed `KILN_REMOTE_CACHE_*` variable ([`crate::Config::from_env`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value} is not a number of milliseconds from 0 to {max} (a day)", max = crate::MAX_WAIT_MS)]
    NotMilliseconds { var: &'static str, value: String },
    #[error("KILN_REMOTE_CACHE_TTL={value} is not a duration (3600, 90s, 30m, 12h, 7d) of at most {max} days", max = crate::MAX_TTL_DAYS)]
    NotDuration { value: String },
}

/// Why a store could not be opened ([`crate::open`]): a bad URL or setting, never an
/// unreachable store (that is found out when the store is used).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The Redis client refused the URL (scrubbed of the password).
    #[error("invalid Redis URL: {detail}")]
    Redis { detail: String },
    /// `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`) is not a URL; shown redacted.
    #[error("invalid S3 endpoint {endpoint}: {source}")]
    S3Endpoint {
        endpoint: String,
        #[source]
        source: url::ParseError,
    },
    #[error("invalid S3 bucket {bucket}: {source}")]
    S3Bucket {
        bucket: String,
        #[source]
        source: rusty_s3::BucketError,
    },
}

/// Why `kiln cache push|pull` stopped (at the first failure: these are explicit commands).
/// `url` is the store's URL as shown (no password).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("listing remote cache {url}: {source}")]
    List {
        url: String,
        #[source]
        source: RemoteError,
    },
    #[error("uploading to remote cache {url}: {source}")]
    Upload {
        url: String,
        #[source]
        source: RemoteError,
    },
    #[error("downloading from remote cache {url}: {source}")]
    Download {
        url: String,
        #[source]
        source: RemoteError,
    },
    /// The local cache could not store a pulled entry.
    #[error("writing to {}: {source}", dir.display())]
    Local {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
