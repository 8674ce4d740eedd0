//! `cairn bench`: concurrent clients against one or more nodes, reporting
//! throughput and latency percentiles.
//!
//! Each client keeps one request in flight on the key-value API, choosing reads
//! or writes by `--read-ratio` and keys uniformly from `--keys`, with its own
//! generator seeded from `--seed` (so a run's operation sequence repeats). It
//! stops after `--ops` operations in total or after `--duration`. Latencies go
//! into HDR histograms (microsecond precision), merged at the end. A progress
//! bar runs on a terminal; `--result-file` writes the figures as JSON.
//!
//! Errors are counted, not retried, and never stop the run: a benchmark reports
//! what happened.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::{Client, Read};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::args::{BenchArgs, Global};

/// Operations when neither `--ops` nor `--duration` is given.
const OPS_DEFAULT: u64 = 10_000;
/// Highest latency the histograms record; slower requests count as this.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Clients a run may start.
const CLIENTS_MAX: usize = 4096;

/// A small seeded generator (xorshift64*): the bench needs speed and
/// repeatability, not cryptographic quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero, or xorshift stays at zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy)]
enum Stop {
    Ops(u64),
    Until(Instant),
}

struct Tally {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        let histogram =
            || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds");
        Tally { reads: histogram(), writes: histogram(), errors: 0, first_error: None }
    }

    fn merge(&mut self, other: Tally) {
        self.reads.add(other.reads).expect("same bounds");
        self.writes.add(other.writes).expect("same bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn check(args: &BenchArgs) -> Result<(), String> {
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(format!("--clients must be 1 to {CLIENTS_MAX}"));
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err("--read-ratio must be between 0 and 1".into());
    }
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    if args.ops == Some(0) {
        return Err("--ops must be at least 1".into());
    }
    Ok(())
}

pub async fn run(global: &Global, args: BenchArgs) -> ExitCode {
    if let Err(message) = check(&args) {
        return crate::output::usage(global.output, &message);
    }
    let targets =
        if args.targets.is_empty() { vec![global.addr.clone()] } else { args.targets.clone() };
    let mut clients = Vec::with_capacity(targets.len());
    for target in &targets {
        match Client::new(target) {
            Ok(client) => clients.push(client),
            Err(e) => return crate::output::usage(global.output, &e.to_string()),
        }
    }
    let value = Bytes::from(vec![b'x'; args.value_size]);
    if args.prefill {
        eprintln!("prefilling {} keys…", args.keys);
        if let Err(e) = prefill(&clients, args.clients, args.keys, &value).await {
            eprintln!("error: prefill failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (tally, elapsed) = measure(&clients, &args, value).await;
    let result = summary(&args, &targets, &tally, elapsed);
    print_summary(&result);
    if let Some(path) = &args.result_file {
        if let Err(e) = write_result(path, &result) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

async fn prefill(
    clients: &[Client],
    concurrency: usize,
    keys: u64,
    value: &Bytes,
) -> Result<(), cairn_client::Error> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let client = clients[worker % clients.len()].clone();
        let (next, value) = (next.clone(), value.clone());
        tasks.spawn(async move {
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= keys {
                    return Ok(());
                }
                client.kv_put(&format!("bench/{key}"), value.clone()).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("prefill task panicked")?;
    }
    Ok(())
}

async fn measure(clients: &[Client], args: &BenchArgs, value: Bytes) -> (Tally, Duration) {
    let started = Instant::now();
    let stop = match (args.ops, args.duration) {
        (_, Some(duration)) => Stop::Until(started + *duration),
        (ops, None) => Stop::Ops(ops.unwrap_or(OPS_DEFAULT)),
    };
    let progress = progress_bar(stop, args);
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.clients {
        let client = clients[worker % clients.len()].clone();
        let rng = Rng::new(args.seed.wrapping_add(worker as u64));
        let (issued, value, progress) = (issued.clone(), value.clone(), progress.clone());
        let (keys, read_ratio, read) = (args.keys, args.read_ratio, args.read.into());
        tasks.spawn(async move {
            let work = Work { client, rng, keys, read_ratio, read, value };
            work.run(stop, &issued, &progress).await
        });
    }
    let mut tally = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined.expect("bench task panicked"));
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    (tally, elapsed)
}

fn progress_bar(stop: Stop, args: &BenchArgs) -> ProgressBar {
    let bar = match stop {
        Stop::Ops(ops) => ProgressBar::new(ops),
        Stop::Until(_) => ProgressBar::new(args.duration.map(|d| d.as_secs().max(1)).unwrap_or(1)),
    };
    let template = match stop {
        Stop::Ops(_) => "{elapsed_precise} [{bar:40}] {pos}/{len} ops ({per_sec})",
        Stop::Until(_) => "{elapsed_precise} [{bar:40}] {pos}/{len} s",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

struct Work {
    client: Client,
    rng: Rng,
    keys: u64,
    read_ratio: f64,
    read: Read,
    value: Bytes,
}

impl Work {
    async fn run(mut self, stop: Stop, issued: &AtomicU64, progress: &ProgressBar) -> Tally {
        let mut tally = Tally::new();
        let mut last_tick = Instant::now();
        loop {
            match stop {
                Stop::Ops(ops) => {
                    if issued.fetch_add(1, Ordering::Relaxed) >= ops {
                        return tally;
                    }
                }
                Stop::Until(deadline) => {
                    if Instant::now() >= deadline {
                        return tally;
                    }
                }
            }
            let key = format!("bench/{}", self.rng.next() % self.keys);
            let is_read = self.rng.unit() < self.read_ratio;
            let started = Instant::now();
            let result = if is_read {
                self.client.kv_get(&key, self.read).await.map(|_| ())
            } else {
                self.client.kv_put(&key, self.value.clone()).await.map(|_| ())
            };
            let micros = (started.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
            match result {
                Ok(()) if is_read => tally.reads.record(micros).expect("clamped into bounds"),
                Ok(()) => tally.writes.record(micros).expect("clamped into bounds"),
                Err(e) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            match stop {
                Stop::Ops(_) => progress.inc(1),
                Stop::Until(_) => {
                    if last_tick.elapsed() >= Duration::from_millis(200) {
                        last_tick = Instant::now();
                        progress.set_position(progress.elapsed().as_secs());
                    }
                }
            }
        }
    }
}

fn latency(histogram: &Histogram<u64>) -> Value {
    let ms = |micros: u64| micros as f64 / 1000.0;
    json!({
        "count": histogram.len(),
        "p50_ms": ms(histogram.value_at_quantile(0.50)),
        "p95_ms": ms(histogram.value_at_quantile(0.95)),
        "p99_ms": ms(histogram.value_at_quantile(0.99)),
        "max_ms": ms(histogram.max()),
    })
}

fn summary(args: &BenchArgs, targets: &[String], tally: &Tally, elapsed: Duration) -> Value {
    let mut all = tally.reads.clone();
    all.add(&tally.writes).expect("same bounds");
    let seconds = elapsed.as_secs_f64();
    let ops = all.len();
    json!({
        "targets": targets,
        "clients": args.clients,
        "value_size": args.value_size,
        "read_ratio": args.read_ratio,
        "read": format!("{:?}", args.read).to_lowercase(),
        "keys": args.keys,
        "prefill": args.prefill,
        "seed": args.seed,
        "elapsed_s": seconds,
        "ops": ops,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "ops_per_s": if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
        "latency": latency(&all),
        "reads": latency(&tally.reads),
        "writes": latency(&tally.writes),
    })
}

fn print_summary(result: &Value) {
    let line = |name: &str, l: &Value| {
        if l["count"].as_u64().unwrap_or(0) > 0 {
            println!(
                "  {name:<7} {:>9} ops   p50 {:>8.3} ms   p95 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
                l["count"], l["p50_ms"].as_f64().unwrap_or(0.0), l["p95_ms"].as_f64().unwrap_or(0.0),
                l["p99_ms"].as_f64().unwrap_or(0.0), l["max_ms"].as_f64().unwrap_or(0.0),
            );
        }
    };
    println!(
        "{} ops in {:.2} s: {:.0} ops/s, {} clients, {} B values, read ratio {}, {} errors",
        result["ops"],
        result["elapsed_s"].as_f64().unwrap_or(0.0),
        result["ops_per_s"].as_f64().unwrap_or(0.0),
        result["clients"],
        result["value_size"],
        result["read_ratio"],
        result["errors"],
    );
    line("all", &result["latency"]);
    line("reads", &result["reads"]);
    line("writes", &result["writes"]);
    if let Some(error) = result["first_error"].as_str() {
        println!("  first error: {error}");
    }
}

fn write_result(path: &Path, result: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(result).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_repeats_for_a_seed_and_spreads() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let first: Vec<u64> = (0..5).map(|_| a.next()).collect();
        assert_eq!(first, (0..5).map(|_| b.next()).collect::<Vec<_>>());
        let mut rng = Rng::new(0);
        let reads = (0..10_000).filter(|_| rng.unit() < 0.3).count();
        assert!((2_500..3_500).contains(&reads), "{reads}");
    }
}
