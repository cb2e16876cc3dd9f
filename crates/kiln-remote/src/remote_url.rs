//! `--remote-cache URL` / `KILN_REMOTE_CACHE`: the three forms, and redaction for messages.
//!
//! | form | meaning |
//! | --- | --- |
//! | `redis://[user[:password]@]host[:port][/db[/prefix]]` | a Redis server; port 6379, db 0, key prefix `kiln` by default |
//! | `s3://bucket[/prefix]` | an S3 bucket or an S3-compatible store; endpoint, region and credentials from the standard AWS variables |
//! | `file:///absolute/path` | a shared folder (NFS, a mounted volume) |
//!
//! Passwords never leave this module: [`RemoteUrl::shown`] (what every message uses) has them
//! replaced by `***`, and S3 credentials are refused in the URL (they belong in the AWS
//! variables, out of `ps` and shell history).

use crate::{UrlError, UrlErrorKind};
use std::path::PathBuf;

/// Which store, as parsed from the URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Redis {
        /// `redis://[user:password@]host:port/db`, for the client (holds the password).
        connect: String,
        /// `host:port`.
        address: String,
        /// Key prefix, without leading or trailing `/`.
        prefix: String,
        password: Option<String>,
    },
    S3 {
        bucket: String,
        /// Object prefix, without leading or trailing `/` (may be empty).
        prefix: String,
    },
    Fs {
        root: PathBuf,
    },
}

/// Shows no password: `connect` and `password` are written as `***` when they hold one.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Redis {
                address,
                prefix,
                password,
                ..
            } => f
                .debug_struct("Redis")
                .field("address", address)
                .field("prefix", prefix)
                .field("password", &password.as_ref().map(|_| "***"))
                .finish_non_exhaustive(),
            Location::S3 { bucket, prefix } => f
                .debug_struct("S3")
                .field("bucket", bucket)
                .field("prefix", prefix)
                .finish(),
            Location::Fs { root } => f.debug_struct("Fs").field("root", root).finish(),
        }
    }
}

/// A parsed remote URL. Neither `Debug` nor `Display` shows a password.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub location: Location,
    shown: String,
}

impl std::fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteUrl({})", self.shown)
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl RemoteUrl {
    /// The URL with any password replaced by `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The secrets the URL holds, to scrub from error texts that might echo them.
    pub fn secrets(&self) -> Vec<String> {
        match &self.location {
            Location::Redis {
                password: Some(p), ..
            } => vec![p.clone()],
            _ => Vec::new(),
        }
    }

    pub fn parse(raw: &str) -> Result<RemoteUrl, UrlError> {
        let raw = raw.trim();
        // Never echo the raw text: it may hold a password, or control characters.
        let shown = redact(raw);
        let bad = |kind: UrlErrorKind| UrlError {
            url: shown.clone(),
            kind,
        };
        // A path where a URL belongs: say how to write it (the URL parser would only say
        // "relative URL without a base").
        if !raw.contains("://") {
            return Err(bad(if raw.starts_with('/') {
                UrlErrorKind::PathNotUrl(shown.clone())
            } else {
                UrlErrorKind::NotAUrl
            }));
        }
        let u = url::Url::parse(raw).map_err(|e| bad(UrlErrorKind::Syntax(e)))?;
        let location = match u.scheme() {
            "redis" => {
                let host = u
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad(UrlErrorKind::NoHost))?;
                let port = u.port().unwrap_or(6379);
                let mut segments = u
                    .path_segments()
                    .map(|s| s.filter(|s| !s.is_empty()).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter();
                let db: u32 = match segments.next() {
                    None => 0,
                    Some(d) => d.parse().map_err(|_| bad(UrlErrorKind::DatabaseNumber))?,
                };
                let rest: Vec<&str> = segments.collect();
                let prefix = if rest.is_empty() {
                    "kiln".to_string()
                } else {
                    rest.join("/")
                };
                let password = u
                    .password()
                    .map(percent_decode)
                    .filter(|p| !p.is_empty())
                    .or_else(|| {
                        std::env::var("KILN_REDIS_PASSWORD")
                            .ok()
                            .filter(|p| !p.is_empty())
                    });
                let mut connect = u.clone();
                connect.set_path(&format!("/{db}"));
                connect.set_query(None);
                connect.set_fragment(None);
                if let Some(p) = &password {
                    connect
                        .set_password(Some(p))
                        .map_err(|_| bad(UrlErrorKind::Password))?;
                }
                Location::Redis {
                    connect: connect.to_string(),
                    address: format!("{host}:{port}"),
                    prefix,
                    password,
                }
            }
            "rediss" => return Err(bad(UrlErrorKind::RedisTls)),
            "s3" => {
                if u.password().is_some() || !u.username().is_empty() {
                    return Err(bad(UrlErrorKind::S3Credentials));
                }
                let bucket = u
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad(UrlErrorKind::NoBucket))?;
                Location::S3 {
                    bucket: bucket.to_string(),
                    prefix: u.path().trim_matches('/').to_string(),
                }
            }
            "file" => {
                let root = u
                    .to_file_path()
                    .map_err(|_| bad(UrlErrorKind::NotAbsolutePath))?;
                Location::Fs {
                    root: folder_path(root).map_err(bad)?,
                }
            }
            other => return Err(bad(UrlErrorKind::UnsupportedScheme(other.to_string()))),
        };
        Ok(RemoteUrl { location, shown })
    }
}

/// A shared folder's path, refused if it holds a NUL byte (`%00`: no file can be named so, and
/// the byte would reach messages raw) or names no folder below the root (`file://`,
/// `file:///`, `file://localhost`: the cache would be written into `/`).
fn folder_path(p: PathBuf) -> Result<PathBuf, UrlErrorKind> {
    if p.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(UrlErrorKind::NulInPath);
    }
    if !p
        .components()
        .any(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(UrlErrorKind::NoFolder);
    }
    Ok(p)
}

/// `text` with control characters (NUL, ESC, ...) written as escapes, for messages.
fn escape_controls(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let e: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            e
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = if b[i] == b'%' {
            b.get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        } else {
            None
        };
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `raw` as messages may show it: no password, whatever form it takes, and control characters
/// escaped. Works on any text a user typed, URL or not.
///
/// A URL with an authority (`scheme://...`) that parses is shown as parsed, its password (or a
/// lone user name: Redis reads `redis://secret@host` as a password) replaced by `***`: the
/// parser knows exactly where the user information ends. Anything else — text the parser
/// refuses (`redis://u:pa/ss@h`, `redis://u:pw@[::1`), a URL without an authority
/// (`redis:/u:pw@h`, `redis:u:pw@h`), no URL at all (`u:pw@h:1`) — may hold a password
/// anywhere before its last `@`, or after a `:` where a port belongs (`redis://u:pw`): all of
/// that is replaced by `***`, in the percent-decoded text (so `%40` for `@` hides nothing).
pub fn redact(raw: &str) -> String {
    let parsed = url::Url::parse(raw).ok().filter(|u| u.has_authority());
    let shown = match parsed {
        Some(mut u) => {
            let hidden = if u.password().is_some() {
                u.set_password(Some("***")).is_ok()
            } else if !u.username().is_empty() {
                u.set_username("***").is_ok()
            } else {
                true
            };
            if hidden {
                u.to_string()
            } else {
                redact_malformed(&percent_decode(raw))
            }
        }
        None => redact_malformed(&percent_decode(raw)),
    };
    escape_controls(&shown)
}

/// [`redact`] of text that is not a URL with an authority: the scheme is kept (`redis:`,
/// `redis:/`, `redis://`), everything up to the last `@` after it becomes `***`, and so does
/// anything after the authority's `:` that is not a port number.
fn redact_malformed(text: &str) -> String {
    let scheme_end = text
        .find(':')
        .filter(|&i| {
            let scheme = &text[..i];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
        .map_or(0, |i| i + 1);
    let slashes = text[scheme_end..].len() - text[scheme_end..].trim_start_matches('/').len();
    let (head, rest) = text.split_at(scheme_end + slashes);
    let rest = match rest.rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_string(),
    };
    // `host:port`: a port is digits; anything else there may be a password (`u:pw`). The
    // colons of an IPv6 literal (`[::1]`) are no port.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let port_colon = match authority.ends_with(']') {
        true => None,
        false => authority.rfind(':'),
    };
    let authority = match port_colon {
        Some(i) if !authority[i + 1..].chars().all(|c| c.is_ascii_digit()) => {
            match authority.find('[') {
                // Inside an IPv6 literal never closed: nothing after its `[` is shown.
                Some(open) if !authority[..i].contains(']') => {
                    format!("{}***", &authority[..=open])
                }
                _ => format!("{}:***", &authority[..i]),
            }
        }
        _ => authority.to_string(),
    };
    format!("{head}{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_forms() {
        let u = RemoteUrl::parse("redis://127.0.0.1:7000/3").unwrap();
        assert_eq!(
            u.location,
            Location::Redis {
                connect: "redis://127.0.0.1:7000/3".into(),
                address: "127.0.0.1:7000".into(),
                prefix: "kiln".into(),
                password: None,
            }
        );
        let u = RemoteUrl::parse("redis://cache.example").unwrap();
        assert!(
            matches!(&u.location, Location::Redis { connect, address, .. }
            if connect == "redis://cache.example/0" && address == "cache.example:6379")
        );
        let u = RemoteUrl::parse("redis://bob:s%40cret@h:1/2/team/a").unwrap();
        match &u.location {
            Location::Redis {
                prefix, password, ..
            } => {
                assert_eq!(prefix, "team/a");
                assert_eq!(password.as_deref(), Some("s@cret"));
            }
            _ => panic!("{u:?}"),
        }
        assert_eq!(u.shown(), "redis://bob:***@h:1/2/team/a");
        assert!(!format!("{u:?} {u}").contains("cret"));
        let e = RemoteUrl::parse("redis://u:hunter2@h/notanumber").unwrap_err();
        assert!(matches!(e.kind, UrlErrorKind::DatabaseNumber), "{e:?}");
        assert_eq!(e.url, "redis://u:***@h/notanumber");
        let e = e.to_string();
        assert!(
            e.contains("database number") && !e.contains("hunter2"),
            "{e}"
        );
        let e = RemoteUrl::parse("rediss://u:hunter2@h").unwrap_err();
        assert!(matches!(e.kind, UrlErrorKind::RedisTls), "{e:?}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("TLS") && !e.contains("hunter2"), "{e}");
    }

    /// Issue 28, defect 8: a password is never shown, whatever form it takes, in the URL of
    /// any error (or of a URL that parses).
    #[test]
    fn no_form_of_a_password_is_shown() {
        for raw in [
            // No authority, or no URL at all.
            "redis:/admin:S3cretPW@127.0.0.1:1/0",
            "redis:admin:S3cretPW@127.0.0.1",
            "admin:S3cretPW@127.0.0.1:1",
            "redis:/S3cretPW@h",
            // The parser refuses it.
            "redis://admin:S3cretPW@[::1",
            "redis://admin:S3cret/PW@h:1/0",
            "redis://admin:S3cret#PW@h",
            "redis://admin:S3cret?PW@h",
            "redis://admin:S3cretPW@h:99999",
            "redis://admin:S3cretPW@h@:1",
            // Where a port belongs, or with `@` percent-encoded.
            "redis://admin:S3cretPW",
            "redis://admin:S3cretPW%40h:1/0",
            "redis://[::1]:S3cretPW",
            // Percent-encoded, a lone user (Redis's password), other schemes, controls.
            "redis://admin:S3cret%50W@h/notanumber",
            "redis://%53%33cret%50W@h/x",
            "redis://S3cretPW@h/notanumber",
            "rediss://admin:S3cretPW@h",
            "gopher://admin:S3cretPW@h",
            "s3://AKIA:S3cretPW@bkt",
            "file://admin:S3cretPW@/tmp",
            "redis://admin:S3cretPW@h/\u{1b}[31m",
            " redis://admin:S3cretPW@h:1/0/a ",
        ] {
            let shown = match RemoteUrl::parse(raw) {
                Ok(u) => format!("{u} {u:?}"),
                Err(e) => format!("{e} {e:?}"),
            };
            for secret in ["S3cretPW", "S3cret", "%50W", "%53%33"] {
                assert!(!shown.contains(secret), "{raw}: {shown}");
            }
            assert!(!shown.contains('\u{1b}'), "{raw}: {shown}");
        }
        // What is no password stays: the scheme, the host, the port, the path.
        assert_eq!(
            redact("redis:/admin:S3cretPW@127.0.0.1:1/0"),
            "redis:/***@127.0.0.1:1/0"
        );
        assert_eq!(redact("admin:S3cretPW@h:1"), "admin:***@h:1");
        assert_eq!(redact("redis://u:pw"), "redis://u:***");
        assert_eq!(redact("redis://[::1]:6379/0"), "redis://[::1]:6379/0");
        assert_eq!(redact("file:///mnt/a@b"), "file:///mnt/a@b");
    }

    #[test]
    fn s3_and_file_forms() {
        let u = RemoteUrl::parse("s3://bkt/some/prefix/").unwrap();
        assert_eq!(
            u.location,
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "some/prefix".into()
            }
        );
        let e = RemoteUrl::parse("s3://AKIA:topsecret@bkt/p").unwrap_err();
        assert!(matches!(e.kind, UrlErrorKind::S3Credentials), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("AWS_ACCESS_KEY_ID") && !e.contains("topsecret"),
            "{e}"
        );
        let u = RemoteUrl::parse("file:///mnt/shared/kiln").unwrap();
        assert_eq!(
            u.location,
            Location::Fs {
                root: "/mnt/shared/kiln".into()
            }
        );
        for (bad, kind) in [
            ("gs://x", "UnsupportedScheme"),
            ("/plain/path", "PathNotUrl"),
            ("s3://", "NoBucket"),
            ("file://host/relative", "NotAbsolutePath"),
        ] {
            let e = RemoteUrl::parse(bad).unwrap_err();
            assert!(format!("{:?}", e.kind).starts_with(kind), "{bad}: {e:?}");
        }
        // How to write a folder, not "relative URL without a base".
        let e = RemoteUrl::parse("/plain/path").unwrap_err().to_string();
        assert!(e.contains("write file:///plain/path"), "{e}");
        let e = RemoteUrl::parse("cache-dir").unwrap_err().to_string();
        assert!(e.contains("file:///absolute/path"), "{e}");
        // A folder, not the root (issue 28, defect 7: `file://` wrote into `/`).
        for root in [
            "file://",
            "file:///",
            "file://localhost",
            "file://localhost/",
            "file:///.",
            "file:////",
            "file:///..",
            "file:///%2E",
        ] {
            let e = RemoteUrl::parse(root).unwrap_err();
            assert!(matches!(e.kind, UrlErrorKind::NoFolder), "{root}: {e:?}");
            assert!(e.to_string().contains("file://"), "{e}");
        }
        assert!(RemoteUrl::parse("file:///tmp").is_ok());
        // A NUL byte is refused, and neither it nor another control character is echoed.
        let e = RemoteUrl::parse("file:///tmp/a%00b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NUL") && !e.contains('\0'), "{e:?}");
        let e = RemoteUrl::parse("gopher://a\u{1b}[31mb")
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\u{1b}') && e.contains("\\u{1b}"), "{e:?}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        // Text that is no URL may still hold a password before an `@` (`u:pw@h`).
        assert_eq!(redact("not a url :pw@"), "***@");
        let e = RemoteUrl::parse("redis://u:hunter2@[bad").unwrap_err();
        assert!(matches!(e.kind, UrlErrorKind::Syntax(_)), "{e:?}");
        // Neither the message, nor its causes, nor the debug form holds the password.
        let mut texts = vec![e.to_string(), format!("{e:?}")];
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            texts.push(c.to_string());
            cause = c.source();
        }
        assert!(texts.iter().all(|t| !t.contains("hunter2")), "{texts:?}");
    }
}
