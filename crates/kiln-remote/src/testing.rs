//! Real servers for tests: the ones `scripts/test.sh` starts for the whole run (a
//! `redis-server`, moto's S3 server, a `distccd` on loopback, named by `KILN_TEST_*`), and a
//! private `redis-server` a test may stop to see what a dead remote does.
//!
//! Without `KILN_TEST_*` (a plain `cargo test`), tests that need them say so once and skip;
//! `scripts/test.sh` sets `KILN_TEST_SERVICES=1`, and then a missing server fails the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The servers of the test run.
pub struct Services {
    /// `redis://127.0.0.1:PORT/0`
    pub redis: String,
    /// `s3://BUCKET` on moto (endpoint and credentials in the `AWS_*` variables).
    pub s3: String,
    /// `127.0.0.1:PORT/2`, for `DISTCC_HOSTS`.
    pub distcc_hosts: String,
    /// The daemon's log: one `COMPILE_OK` line per job it compiled.
    pub distccd_log: PathBuf,
}

/// The servers `scripts/test.sh` started, or None (after saying once that tests needing them
/// are skipped); a failure instead when `KILN_TEST_SERVICES=1`.
pub fn services() -> Option<Services> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    match (
        var("KILN_TEST_REDIS_URL"),
        var("KILN_TEST_S3_URL"),
        var("KILN_TEST_DISTCC_HOSTS"),
        var("KILN_TEST_DISTCCD_LOG"),
    ) {
        (Some(redis), Some(s3), Some(distcc_hosts), Some(log)) => Some(Services {
            redis,
            s3,
            distcc_hosts,
            distccd_log: log.into(),
        }),
        _ => {
            assert!(
                var("KILN_TEST_SERVICES").is_none(),
                "KILN_TEST_SERVICES is set but KILN_TEST_REDIS_URL, KILN_TEST_S3_URL, \
                 KILN_TEST_DISTCC_HOSTS or KILN_TEST_DISTCCD_LOG is missing"
            );
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "skipping the tests that need redis-server, an S3 server and distccd: \
                     run scripts/test.sh, which starts them"
                )
            });
            None
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `redis-server` of one test, on a free port, without persistence; stopped when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// None when `redis-server` is not installed (and services are not required).
    pub fn start(password: Option<&str>) -> Option<RedisServer> {
        services()?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}): apt-get install redis-server")
        });
        let server = RedisServer {
            child: Some(child),
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while !server.answers() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL), as a crash or a cut cable would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
