//! A load generator for sizing the gateway: keeps `--concurrency` gRPC calls in flight until
//! `--requests` calls are done or `--duration` has passed (both hard-capped), then reports
//! calls/s, latency percentiles, the answers by gRPC code and, given `--server-pid`, the
//! server's CPU time per call (`utime + stime` from `/proc/PID/stat`, before and after) and its
//! peak resident memory during the run (`VmRSS` sampled from `/proc/PID/status`).
//!
//! ```sh
//! cargo run --release --example load -- --target http://127.0.0.1:50051 --concurrency 128 \
//!   --requests 50000 [--duration 60s] [--validate-only] [--health] [--server-pid PID] \
//!   [--token-file F] [--request-id fresh|replay] [--markdown-row LABEL]
//! ```
//!
//! `--watch` holds `--concurrency` `WatchUpgrade` streams over `--instances` instances for
//! `--duration` (the instances must stay short of the target, as the instant upstream's do) and
//! reports the upstream's `DescribeDBInstanceAttribute` calls per `--poll-interval` (read from
//! `--upstream`'s `/stats` at the start and the end of the window, once every stream has its
//! first message) with the gateway's peak RSS.
//!
//! Only loopback targets are accepted: this is a tool for a test bench, not for production.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use hdrhistogram::Histogram;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The most calls one run may make.
const MAX_REQUESTS: u64 = 10_000_000;
/// The longest one run may last.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// The most calls one run may keep in flight.
const MAX_CONCURRENCY: usize = 10_000;
/// Streams per HTTP/2 connection the load spreads over (the gateway allows 256).
const STREAMS_PER_CONNECTION: usize = 200;
/// How often the server's resident memory is sampled.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Slowest latency the histogram records; slower calls are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Debug, Parser)]
#[command(about = "Load generator for dds-gateway (loopback targets only)")]
struct Args {
    /// The gateway, `http://127.0.0.1:PORT`.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Calls kept in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Calls to make in all.
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
    /// Stop after this long even if calls remain (e.g. `60s`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// `UpgradeEngineVersion` with `validate_only` set.
    #[arg(long, conflicts_with = "health")]
    validate_only: bool,
    /// `grpc.health.v1.Health/Check` instead of the engine service: the server's floor.
    #[arg(long)]
    health: bool,
    /// The gateway's process id, for its CPU time per call and peak memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A file holding the bearer token to send.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// The instance to upgrade. Each call in flight upgrades its own instance (this id followed by
    /// the call's slot number), because the gateway refuses a second upgrade of an instance while
    /// one is in flight (`ABORTED` / `UPGRADE_IN_PROGRESS`).
    #[arg(long, default_value = "dds-bp1234567890ab")]
    instance: String,
    /// The target engine version.
    #[arg(long, default_value = "5.0")]
    version: String,
    /// HTTP/2 connections to spread the calls over (default: one per 200 in flight).
    #[arg(long)]
    connections: Option<usize>,
    /// Calls made before measuring, to open connections and warm caches.
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// With a `request_id`: `fresh` (a new UUID per call: a first idempotent upgrade) or
    /// `replay` (one UUID per slot, the same every call: a replay after the first).
    #[arg(long, value_parser = ["fresh", "replay"])]
    request_id: Option<String>,
    /// Hold `--concurrency` `WatchUpgrade` streams for `--duration` instead of making calls.
    #[arg(long, conflicts_with_all = ["health", "validate_only"])]
    watch: bool,
    /// `--watch`: the instances the streams are spread over.
    #[arg(long, default_value_t = 100)]
    instances: usize,
    /// `--watch`: the gateway's `watch.poll_interval`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// `--watch`: the upstream (`examples/instant_upstream.rs`), whose `/stats` counts reads.
    #[arg(long)]
    upstream: Option<String>,
    /// Print one Markdown table row labelled LABEL instead of the report.
    #[arg(long)]
    markdown_row: Option<String>,
}

/// What to call.
#[derive(Debug, Clone, Copy)]
enum Call {
    Health,
    Upgrade,
}

/// The clients of one connection.
#[derive(Clone)]
struct Clients {
    engine: EngineVersionServiceClient<Channel>,
    health: HealthClient<Channel>,
}

/// What one worker saw.
struct Tally {
    latency_us: Histogram<u64>,
    /// Answers by gRPC code (0..=16).
    codes: [u64; 17],
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(problem) = run(args).await {
        eprintln!("load: {problem}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<(), String> {
    check_loopback(&args.target)?;
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    if args.requests == 0 || args.requests > MAX_REQUESTS {
        return Err(format!("--requests must be 1..={MAX_REQUESTS}"));
    }
    if args.duration.is_zero() || args.duration > MAX_DURATION {
        return Err(format!(
            "--duration must be more than 0 and at most {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("--token-file {}: {err}", path.display()))?;
            let value = MetadataValue::try_from(format!("Bearer {}", text.trim()))
                .map_err(|_| "the token contains characters not allowed in a header")?;
            Some(value)
        }
        None => None,
    };
    let call = if args.health {
        Call::Health
    } else {
        Call::Upgrade
    };
    let connections = args
        .connections
        .unwrap_or(args.concurrency.div_ceil(STREAMS_PER_CONNECTION))
        .clamp(1, args.concurrency);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(args.target.clone())
            .map_err(|err| format!("--target: {err}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|err| format!("cannot connect to {}: {err}", args.target))?;
        clients.push(Clients {
            engine: EngineVersionServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
        });
    }
    if args.watch {
        return watch(&args, &clients, token).await;
    }
    let request = pb::UpgradeEngineVersionRequest {
        db_instance_id: args.instance.clone(),
        engine_version: args.version.clone(),
        validate_only: args.validate_only,
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        call,
        request,
        token,
        request_id: args.request_id.clone(),
    });

    // Warm-up: open every stream window and let the server allocate its pools before measuring.
    let warmup = args.warmup.min(args.requests);
    if warmup > 0 {
        let deadline = Instant::now() + args.duration.min(Duration::from_secs(30));
        drive(&shared, &clients, args.concurrency, warmup, deadline).await;
    }

    let before = args.server_pid.map(cpu_ticks).transpose()?;
    let sampler = args.server_pid.map(|pid| {
        let stop = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn(sample_rss(pid, stop.clone(), peak.clone()));
        (stop, peak, handle)
    });
    let started = Instant::now();
    let tallies = drive(
        &shared,
        &clients,
        args.concurrency,
        args.requests,
        started + args.duration,
    )
    .await;
    let elapsed = started.elapsed();
    let after = args.server_pid.map(cpu_ticks).transpose()?;
    let peak_rss_kib = match sampler {
        Some((stop, peak, handle)) => {
            stop.store(1, Ordering::Relaxed);
            let _ = handle.await;
            Some(peak.load(Ordering::Relaxed))
        }
        None => None,
    };

    let mut latency = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|err| format!("histogram: {err}"))?;
    let mut codes = [0u64; 17];
    for tally in &tallies {
        latency
            .add(&tally.latency_us)
            .map_err(|err| format!("histogram: {err}"))?;
        for (total, n) in codes.iter_mut().zip(tally.codes) {
            *total += n;
        }
    }
    let calls = latency.len();
    let cpu_per_call_us = match (before, after) {
        (Some(b), Some(a)) if calls > 0 => {
            let hz = clock_ticks_per_second();
            Some((a - b) as f64 * 1e6 / hz as f64 / calls as f64)
        }
        _ => None,
    };
    let report = Report {
        calls,
        elapsed,
        latency,
        codes,
        cpu_per_call_us,
        peak_rss_kib,
    };
    match &args.markdown_row {
        Some(label) => println!("{}", report.markdown_row(label, args.concurrency)),
        None => print!("{}", report.text(&args, connections)),
    }
    Ok(())
}

/// What every worker shares.
struct Shared {
    call: Call,
    request: pb::UpgradeEngineVersionRequest,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// `--request-id`.
    request_id: Option<String>,
}

/// Runs `concurrency` workers that together make `requests` calls or stop at `deadline`.
async fn drive(
    shared: &Arc<Shared>,
    clients: &[Clients],
    concurrency: usize,
    requests: u64,
    deadline: Instant,
) -> Vec<Tally> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let clients = clients[i % clients.len()].clone();
        let shared = shared.clone();
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            worker(&shared, i, clients, &issued, requests, deadline).await
        }));
    }
    let mut tallies = Vec::with_capacity(concurrency);
    for worker in workers {
        if let Ok(tally) = worker.await {
            tallies.push(tally);
        }
    }
    tallies
}

async fn worker(
    shared: &Shared,
    slot: usize,
    mut clients: Clients,
    issued: &AtomicU64,
    requests: u64,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally {
        latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .unwrap_or_else(|_| unreachable!("the bounds are valid")),
        codes: [0; 17],
    };
    let mut upgrade = shared.request.clone();
    upgrade.db_instance_id = format!("{}{slot:04}", upgrade.db_instance_id);
    let replayed = uuid::Uuid::new_v4().to_string();
    while issued.fetch_add(1, Ordering::Relaxed) < requests {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let timeout = deadline - now;
        let started = Instant::now();
        let code = match shared.call {
            Call::Health => {
                let mut request = tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                request.set_timeout(timeout);
                code_of(clients.health.check(request).await)
            }
            Call::Upgrade => {
                match shared.request_id.as_deref() {
                    Some("fresh") => upgrade.request_id = uuid::Uuid::new_v4().to_string(),
                    Some(_) => upgrade.request_id.clone_from(&replayed),
                    None => {}
                }
                let mut request = tonic::Request::new(upgrade.clone());
                request.set_timeout(timeout);
                if let Some(token) = &shared.token {
                    request
                        .metadata_mut()
                        .insert("authorization", token.clone());
                }
                code_of(clients.engine.upgrade_engine_version(request).await)
            }
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tally.latency_us.saturating_record(micros.max(1));
        tally.codes[code] += 1;
    }
    tally
}

/// `--watch`: holds the streams, counts the upstream's reads over `--duration` once every
/// stream has its first message, and prints them per poll interval with the peak RSS.
async fn watch(
    args: &Args,
    clients: &[Clients],
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
) -> Result<(), String> {
    let upstream = args
        .upstream
        .as_deref()
        .ok_or("--watch needs --upstream (the instant upstream's address)")?;
    check_loopback(upstream)?;
    if args.instances == 0 || args.instances > args.concurrency {
        return Err("--instances must be 1..=--concurrency".to_string());
    }
    let stats = format!("{}/stats", upstream.trim_end_matches('/'));
    dds_gateway::install_crypto_provider();
    let http = reqwest::Client::new();
    let describe_calls = || async {
        let text = http
            .get(&stats)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|err| format!("{stats}: {err}"))?
            .text()
            .await
            .map_err(|err| format!("{stats}: {err}"))?;
        text.trim()
            .strip_prefix("describe_calls ")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("{stats}: unexpected answer {text:?}"))
    };
    let sampler = args.server_pid.map(|pid| {
        let stop = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn(sample_rss(pid, stop.clone(), peak.clone()));
        (stop, peak, handle)
    });
    let (first_tx, mut first_rx) =
        tokio::sync::mpsc::channel::<Result<(), String>>(args.concurrency);
    let mut streams = Vec::with_capacity(args.concurrency);
    for slot in 0..args.concurrency {
        let mut client = clients[slot % clients.len()].engine.clone();
        let mut request = tonic::Request::new(pb::WatchUpgradeRequest {
            db_instance_id: format!("{}{:04}", args.instance, slot % args.instances),
            engine_version: args.version.clone(),
            region_id: String::new(),
        });
        request.set_timeout(args.duration + Duration::from_secs(60));
        if let Some(token) = &token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        let first_tx = first_tx.clone();
        streams.push(tokio::spawn(async move {
            let mut stream = match client.watch_upgrade(request).await {
                Ok(answer) => answer.into_inner(),
                Err(status) => {
                    let _ = first_tx.send(Err(format!("WatchUpgrade: {status}"))).await;
                    return;
                }
            };
            let first = match stream.message().await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("a watch ended without a message".to_string()),
                Err(status) => Err(format!("WatchUpgrade: {status}")),
            };
            let _ = first_tx.send(first).await;
            // Held open until aborted: the instance never reaches the target.
            while let Ok(Some(_)) = stream.message().await {}
        }));
    }
    drop(first_tx);
    for _ in 0..args.concurrency {
        match first_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(problem)) => return Err(problem),
            None => return Err("the watches ended early".to_string()),
        }
    }
    let before = describe_calls().await?;
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    let after = describe_calls().await?;
    let elapsed = started.elapsed();
    let open = streams.iter().filter(|s| !s.is_finished()).count();
    for stream in &streams {
        stream.abort();
    }
    let peak_rss_kib = match sampler {
        Some((stop, peak, handle)) => {
            stop.store(1, Ordering::Relaxed);
            let _ = handle.await;
            Some(peak.load(Ordering::Relaxed))
        }
        None => None,
    };
    let intervals = elapsed.as_secs_f64() / args.poll_interval.as_secs_f64();
    let per_interval = (after - before) as f64 / intervals;
    let per_instance = per_interval / args.instances as f64;
    let rss = peak_rss_kib.map_or("–".to_string(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    });
    match &args.markdown_row {
        Some(label) => println!(
            "| {label} | {} over {} instances | {per_interval:.1} ({per_instance:.2} per instance) | {rss} | {open} open at the end |",
            args.concurrency, args.instances
        ),
        None => println!(
            "watches     {} over {} instances ({open} still open at the end)\n\
             Describe    {} calls in {:.1} s = {per_interval:.1} per poll interval ({per_instance:.2} per instance)\n\
             server RSS  peak {rss}",
            args.concurrency,
            args.instances,
            after - before,
            elapsed.as_secs_f64()
        ),
    }
    Ok(())
}

fn code_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> usize {
    match result {
        Ok(_) => 0,
        Err(status) => (status.code() as usize).min(16),
    }
}

/// Refuses anything but a loopback address: `localhost`, `127.0.0.0/8` or `::1`.
fn check_loopback(target: &str) -> Result<(), String> {
    let uri: http::Uri = target
        .parse()
        .map_err(|err| format!("--target {target:?}: {err}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "--target {target:?}: only http:// (a loopback listener) is supported"
        ));
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "--target {target:?}: only loopback targets (127.0.0.1, ::1, localhost) are allowed"
        ))
    }
}

/// `utime + stime` of a process, in clock ticks (all its threads).
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|err| format!("--server-pid {pid}: {err}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))
    };
    Ok(field(11)? + field(12)?)
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn sample_rss(pid: u32, stop: Arc<AtomicU64>, peak: Arc<AtomicU64>) {
    while stop.load(Ordering::Relaxed) == 0 {
        if let Some(kib) = rss_kib(pid) {
            peak.fetch_max(kib, Ordering::Relaxed);
        }
        tokio::time::sleep(RSS_SAMPLE_INTERVAL).await;
    }
}

/// `sysconf(_SC_CLK_TCK)` through `getconf` (no `unsafe` here); Linux's usual 100 otherwise.
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

struct Report {
    calls: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    codes: [u64; 17],
    cpu_per_call_us: Option<f64>,
    peak_rss_kib: Option<u64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }

    fn codes_text(&self) -> String {
        let mut parts = Vec::new();
        for (code, &n) in self.codes.iter().enumerate() {
            if n > 0 {
                let name = format!("{:?}", tonic::Code::from_i32(code as i32));
                parts.push(format!("{name} {n}"));
            }
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }

    fn text(&self, args: &Args, connections: usize) -> String {
        let what = match (args.health, args.validate_only) {
            (true, _) => "grpc.health.v1.Health/Check".to_string(),
            (false, true) => "UpgradeEngineVersion (validate_only)".to_string(),
            (false, false) => "UpgradeEngineVersion".to_string(),
        };
        let mut out = format!(
            "target      {} ({connections} connection(s))\n\
             call        {what}\n\
             in flight   {}\n\
             calls       {} in {:.2} s: {:.0} calls/s\n\
             latency     p50 {} µs, p90 {} µs, p99 {} µs, max {} µs\n\
             answers     {}\n",
            args.target,
            args.concurrency,
            self.calls,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.percentile_us(0.5),
            self.percentile_us(0.9),
            self.percentile_us(0.99),
            self.latency.max(),
            self.codes_text(),
        );
        if let Some(cpu) = self.cpu_per_call_us {
            out.push_str(&format!("server CPU  {cpu:.1} µs per call\n"));
        }
        if let Some(kib) = self.peak_rss_kib {
            out.push_str(&format!(
                "server RSS  peak {:.1} MiB during the run\n",
                kib as f64 / 1024.0
            ));
        }
        out
    }

    /// `| label | in flight | calls/s | p50 | p90 | p99 | max | CPU/call | peak RSS | answers |`
    fn markdown_row(&self, label: &str, concurrency: usize) -> String {
        let cpu = self
            .cpu_per_call_us
            .map_or("–".to_string(), |c| format!("{c:.0} µs"));
        let rss = self.peak_rss_kib.map_or("–".to_string(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        });
        format!(
            "| {label} | {concurrency} | {:.0} | {} µs | {} µs | {} µs | {} µs | {cpu} | {rss} | {} |",
            self.rate(),
            self.percentile_us(0.5),
            self.percentile_us(0.9),
            self.percentile_us(0.99),
            self.latency.max(),
            self.codes_text(),
        )
    }
}
