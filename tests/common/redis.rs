//! A real `redis-server` for the tests (Debian package `redis-server`; `scripts/test` installs
//! it), on an ephemeral loopback port, persistence off, with a password. Killed when dropped.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The password every test Redis requires: obviously fake, and searched for in logs.
pub const PASSWORD: &str = "testredispassword";

pub struct RedisServer {
    process: Option<tokio::process::Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Self {
        // A port the kernel just handed out and took back: free, unless taken in the meantime.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_with(port, &[]).await
    }

    /// Starts (again) on `port`.
    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// Starts on `port` with more `redis-server` options.
    pub async fn start_with(port: u16, options: &[&str]) -> Self {
        let process = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
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
        };
        server.wait_ready().await;
        server
    }

    /// `redis://:password@127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0", self.port)
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

    /// Whether it answers `PING` (after `AUTH`).
    pub async fn ping(&self) -> bool {
        let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
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
