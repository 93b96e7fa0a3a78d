//! A real `redis-server` for the tests (Debian package `redis-server`; `scripts/test` installs
//! it), on an ephemeral loopback port, persistence off, with a password, in plain TCP or TLS
//! only. Killed when dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::clock_skew::ClockSkew;
use super::pki;

/// The password every test Redis requires: obviously fake, and searched for in logs.
pub const PASSWORD: &str = "testredispassword";

pub struct RedisServer {
    process: Option<tokio::process::Child>,
    pub port: u16,
    tls: bool,
}

/// A test PKI for a TLS Redis: a CA and a server certificate for `localhost` and `127.0.0.1`
/// signed by it, as PEM files in a temporary directory of their own.
pub struct RedisPki {
    pub dir: TempDir,
}

impl RedisPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (issuer, ca) = pki::ca("dds-gateway test redis ca");
        let server = pki::leaf(
            &issuer,
            "redis",
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
        std::fs::write(dir.path().join("redis.pem"), server.cert).unwrap();
        std::fs::write(dir.path().join("redis.key"), server.key).unwrap();
        Self { dir }
    }

    /// The CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes another CA, one that signed nothing here, and returns its file.
    pub fn other_ca_file(&self) -> PathBuf {
        let (_, pem) = pki::ca("dds-gateway test other ca");
        let path = self.dir.path().join("other-ca.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }
}

/// A port the kernel just handed out and took back: free, unless taken in the meantime.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(free_port(), &[]).await
    }

    /// Starts with TLS only (no plain port), with `pki`'s server certificate; clients need no
    /// certificate of their own.
    pub async fn start_tls(pki: &RedisPki) -> Self {
        let port = free_port();
        let file = |name: &str| path_arg(&pki.dir.path().join(name));
        let options = [
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".to_string(),
            file("redis.pem"),
            "--tls-key-file".to_string(),
            file("redis.key"),
            "--tls-ca-cert-file".to_string(),
            file("ca.pem"),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
        ];
        Self::spawn(port, 0, &options, true, &[]).await
    }

    /// Starts (again) on `port`.
    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// Starts on `port` with more `redis-server` options.
    pub async fn start_with(port: u16, options: &[&str]) -> Self {
        Self::spawn(port, port, options, false, &[]).await
    }

    /// `port` is where clients connect; `plain_port` is redis-server's `--port` (0: none);
    /// `env` is added to redis-server's environment.
    async fn spawn<S: AsRef<std::ffi::OsStr>>(
        port: u16,
        plain_port: u16,
        options: &[S],
        tls: bool,
        env: &[(String, String)],
    ) -> Self {
        let process = tokio::process::Command::new("redis-server")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "--port",
                &plain_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
            ])
            .args(options)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let server = Self {
            process: Some(process),
            port,
            tls,
        };
        server.wait_ready().await;
        server
    }

    /// `redis://:password@127.0.0.1:port/0`, or `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://:{PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it answers `PING` (after `AUTH`); with TLS, whether it accepts connections
    /// (it listens once it is ready to serve).
    pub async fn ping(&self) -> bool {
        let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if self.tls {
            return true;
        }
        let command = format!("AUTH {PASSWORD}\r\nPING\r\n");
        if socket.write_all(command.as_bytes()).await.is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&answer).contains("PONG") {
            match tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => return false,
            }
        }
        true
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await.unwrap();
        }
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temporary path").to_string()
}

impl RedisServer {
    /// A connection of the test's own, beside the gateway's.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(
                // A stalled Redis answers late, not never.
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(None)
                    .set_response_timeout(None),
            )
            .await
            .unwrap()
    }

    /// Sends one command (`CLIENT PAUSE`, `HSET`...) on a connection of its own.
    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command
            .query_async(&mut self.connection().await)
            .await
            .unwrap()
    }

    /// Stalls every client for `ms` (`CLIENT PAUSE ms ALL`): their commands run, late, after it.
    pub async fn pause(&self, ms: u64) {
        self.command(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"])
            .await;
    }

    /// Redis's clock, in milliseconds.
    pub async fn now_ms(&self) -> i64 {
        let time: (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
        time.0 * 1000 + time.1 / 1000
    }
}

impl RedisServer {
    /// Starts with `DEBUG` allowed from loopback (for `DEBUG SLEEP`).
    pub async fn start_debuggable() -> Self {
        Self::start_with(free_port(), &["--enable-debug-command", "local"]).await
    }

    /// Starts with `DEBUG` allowed from loopback and its wall clock following `clock`.
    pub async fn start_skewed(clock: &ClockSkew) -> Self {
        let port = free_port();
        let options = ["--enable-debug-command", "local"];
        Self::spawn(port, port, &options, false, &clock.env()).await
    }

    /// Puts Redis to sleep for `seconds` (`DEBUG SLEEP`: every command, already sent or not, runs
    /// late) and returns once it sleeps; the returned task ends when it wakes.
    pub async fn sleep(&self, seconds: u64) -> tokio::task::JoinHandle<()> {
        let mut connection = self.connection().await;
        let mut probe = self.connection().await;
        let sleeping = tokio::spawn(async move {
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(seconds)
                .query_async::<()>(&mut connection)
                .await
                .unwrap();
        });
        // Asleep once a PING goes unanswered for a while.
        loop {
            let command = redis::cmd("PING");
            let ping = command.query_async::<String>(&mut probe);
            if tokio::time::timeout(Duration::from_millis(300), ping)
                .await
                .is_err()
            {
                return sleeping;
            }
        }
    }
}
