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
//! what happened. `--request-timeout-ms` caps each request, and `--rotate`
//! sends a client's next request to the next target after a failure. The
//! result counts the operations answered in each second (`per_second`) and
//! in each 100 ms (`per_100ms`), from `started_unix_ms`, so that a script
//! that injects faults can line its fault windows up with them.
//!
//! `--system etcd` drives etcd's gRPC key-value API instead, with the same
//! workers, keys, values and histograms, so the two systems are measured by
//! one load generator (`bench/vs-etcd`). `--kill-after`/`--kill-cmd` kill a
//! node mid-run and report the failover time: from the kill to the first
//! acknowledged write sent after it. `--feeds N` opens N changefeeds of the
//! written keys first; each written value then begins with its send time, so
//! every event a feed gets gives a write-to-event latency; after the run one
//! more feed reads the run's changes back from the history, for the rate one
//! feed delivers.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::{Client, Read};
use cairn_util::Rng;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::args::{BenchArgs, Global, Output, SystemArg};
use crate::error::CliError;

/// Operations when neither `--ops` nor `--duration` is given.
const OPS_DEFAULT: u64 = 10_000;
/// Highest latency the histograms record; slower requests count as this.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Clients a run may start.
const CLIENTS_MAX: usize = 4096;

/// One connection to the system under test.
#[derive(Clone)]
enum Backend {
    Cairn(Client),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>),
}

impl Backend {
    async fn connect(
        global: &Global,
        system: SystemArg,
        target: &str,
    ) -> Result<Backend, CliError> {
        match system {
            SystemArg::Cairn => Ok(Backend::Cairn(global.client(target).map_err(CliError::Usage)?)),
            #[cfg(feature = "etcd")]
            SystemArg::Etcd => {
                // etcd over TLS: `--ca-cert` names its CA, the target
                // `https://`.
                let options = match &global.ca_cert {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|source| CliError::Io {
                            what: "read the CA certificate",
                            path: path.clone(),
                            source,
                        })?;
                        let tls = etcd_client::TlsOptions::new()
                            .ca_certificate(etcd_client::Certificate::from_pem(pem));
                        Some(etcd_client::ConnectOptions::new().with_tls(tls))
                    }
                    None => None,
                };
                let client = etcd_client::Client::connect([target], options).await?;
                Ok(Backend::Etcd(Box::new(client.kv_client())))
            }
            #[cfg(not(feature = "etcd"))]
            SystemArg::Etcd => Err(CliError::Usage(
                "this cairn was built without etcd's client: build it with \
                 `--features cairn/etcd` for --system etcd"
                    .into(),
            )),
        }
    }

    async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), CliError> {
        match self {
            Backend::Cairn(client) => {
                client.kv_put(key, value.clone()).await?;
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(kv) => {
                kv.put(key, value.to_vec(), None).await?;
            }
        }
        Ok(())
    }

    /// A read; etcd's default range read is linearizable like Cairn's, and
    /// `Read::Local` maps to etcd's serializable read.
    async fn get(&mut self, key: &str, read: Read) -> Result<(), CliError> {
        match self {
            Backend::Cairn(client) => {
                client.kv_get(key, read).await?;
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(kv) => {
                let options = match read {
                    Read::Local => Some(etcd_client::GetOptions::new().with_serializable()),
                    _ => None,
                };
                kv.get(key, options).await?;
            }
        }
        Ok(())
    }
}

/// When a node was killed and when the first write sent after it was
/// acknowledged, in microseconds since the run started (`u64::MAX`: not yet).
struct Failover {
    started: Instant,
    killed_us: AtomicU64,
    first_write_us: AtomicU64,
}

impl Failover {
    fn new(started: Instant) -> Failover {
        Failover {
            started,
            killed_us: AtomicU64::new(u64::MAX),
            first_write_us: AtomicU64::new(u64::MAX),
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// A write sent at `sent_us` was acknowledged now.
    fn write_acknowledged(&self, sent_us: u64) {
        if sent_us >= self.killed_us.load(Ordering::Acquire) {
            self.first_write_us.fetch_min(self.now_us(), Ordering::AcqRel);
        }
    }

    /// Milliseconds from the kill to the first write acknowledged after it.
    fn millis(&self) -> Option<f64> {
        let killed = self.killed_us.load(Ordering::Acquire);
        let first = self.first_write_us.load(Ordering::Acquire);
        (killed != u64::MAX && first != u64::MAX).then(|| (first - killed) as f64 / 1000.0)
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
    /// Operations answered without error in each whole second of the run,
    /// by when they were answered (to draw throughput through a fault).
    per_second: Vec<u64>,
    /// The same in each 100 ms.
    per_100ms: Vec<u64>,
}

/// Counts `at_us` into `buckets` of `width_us`, up to `max` buckets.
fn count_into(buckets: &mut Vec<u64>, at_us: u64, width_us: u64, max: usize) {
    let bucket = usize::try_from(at_us / width_us).unwrap_or(usize::MAX);
    if bucket >= max {
        return;
    }
    if buckets.len() <= bucket {
        buckets.resize(bucket + 1, 0);
    }
    buckets[bucket] += 1;
}

/// Adds `theirs` into `mine`, bucket by bucket.
fn add_buckets(mine: &mut Vec<u64>, theirs: Vec<u64>) {
    if mine.len() < theirs.len() {
        mine.resize(theirs.len(), 0);
    }
    for (mine, theirs) in mine.iter_mut().zip(theirs) {
        *mine += theirs;
    }
}

impl Tally {
    fn new() -> Tally {
        let histogram =
            || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds");
        Tally {
            reads: histogram(),
            writes: histogram(),
            errors: 0,
            first_error: None,
            per_second: Vec::new(),
            per_100ms: Vec::new(),
        }
    }

    /// Counts one operation answered `at_us` after the run began.
    fn answered_at(&mut self, at_us: u64) {
        count_into(&mut self.per_second, at_us, 1_000_000, PER_SECOND_MAX);
        count_into(&mut self.per_100ms, at_us, 100_000, PER_100MS_MAX);
    }

    fn merge(&mut self, other: Tally) {
        self.reads.add(other.reads).expect("same bounds");
        self.writes.add(other.writes).expect("same bounds");
        self.errors += other.errors;
        add_buckets(&mut self.per_second, other.per_second);
        add_buckets(&mut self.per_100ms, other.per_100ms);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn check(args: &BenchArgs) -> Result<(), CliError> {
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(CliError::Usage(format!("--clients must be 1 to {CLIENTS_MAX}")));
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err(CliError::Usage("--read-ratio must be between 0 and 1".into()));
    }
    if args.keys == 0 {
        return Err(CliError::Usage("--keys must be at least 1".into()));
    }
    if args.ops == Some(0) {
        return Err(CliError::Usage("--ops must be at least 1".into()));
    }
    if !args.feed_targets.is_empty() && args.feeds == 0 {
        return Err(CliError::Usage(
            "--feed-targets names where --feeds open: give --feeds".into(),
        ));
    }
    if args.feeds > 0 && args.system != SystemArg::Cairn {
        return Err(CliError::Usage("--feeds measures Cairn's changefeeds only".into()));
    }
    if args.feeds > 0 && args.value_size < STAMP_BYTES {
        return Err(CliError::Usage(format!(
            "--feeds stamps each value with its send time: --value-size must be at least \
             {STAMP_BYTES}"
        )));
    }
    Ok(())
}

pub async fn run(global: &Global, args: BenchArgs) -> ExitCode {
    if let Err(message) = check(&args) {
        return crate::output::usage(global.output, &message.to_string());
    }
    let targets =
        if args.targets.is_empty() { vec![global.addr.clone()] } else { args.targets.clone() };
    let mut clients = Vec::with_capacity(targets.len());
    for target in &targets {
        match Backend::connect(global, args.system, target).await {
            Ok(client) => clients.push(client),
            Err(e) => return crate::output::failed(global.output, "unreachable", &e.to_string()),
        }
    }
    let value = Bytes::from(vec![b'x'; args.value_size]);
    if args.prefill {
        eprintln!("prefilling {} keys…", args.keys);
        if let Err(e) = prefill(&clients, args.clients, args.keys, &value).await {
            return crate::output::failed(
                global.output,
                "prefill",
                &format!("prefill failed: {e}"),
            );
        }
    }
    let feeds = if args.feeds > 0 {
        let feed_targets = if args.feed_targets.is_empty() { &targets } else { &args.feed_targets };
        match Feeds::open(global, feed_targets, args.feeds).await {
            Ok(feeds) => Some(feeds),
            Err(e) => return crate::output::failed(global.output, "feeds", &e.to_string()),
        }
    } else {
        None
    };
    let (tally, elapsed, failover, started_unix_ms) = measure(&clients, &args, value).await;
    let mut result = summary(&args, &targets, &tally, elapsed);
    result["started_unix_ms"] = json!(started_unix_ms);
    if let Some(feeds) = feeds {
        let writes = tally.writes.len();
        result["feeds"] = feeds.finish(global, &targets[0], writes, elapsed).await;
    }
    if let Some(kill_after) = args.kill_after {
        result["failover"] = json!({
            "kill_after_s": kill_after.as_secs_f64(),
            "first_write_ms": failover.millis(),
        });
    }
    if let Some(path) = &args.result_file {
        if let Err(e) = write_result(path, &result) {
            let message = format!("cannot write {}: {e}", path.display());
            return crate::output::failed(global.output, "result_file", &message);
        }
    }
    match global.output {
        Output::Json => println!("{result}"),
        Output::Text => print_summary(&result),
    }
    ExitCode::SUCCESS
}

async fn prefill(
    clients: &[Backend],
    concurrency: usize,
    keys: u64,
    value: &Bytes,
) -> Result<(), CliError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks: tokio::task::JoinSet<Result<(), CliError>> = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut client = clients[worker % clients.len()].clone();
        let (next, value) = (next.clone(), value.clone());
        tasks.spawn(async move {
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= keys {
                    return Ok(());
                }
                client.put(&format!("bench/{key}"), &value).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

async fn measure(
    clients: &[Backend],
    args: &BenchArgs,
    value: Bytes,
) -> (Tally, Duration, Arc<Failover>, u64) {
    let started = Instant::now();
    let started_unix_ms = unix_us() / 1000;
    let failover = Arc::new(Failover::new(started));
    let killer = match (args.kill_after, args.kill_cmd.clone()) {
        (Some(after), Some(command)) => {
            let failover = failover.clone();
            Some(tokio::spawn(async move {
                tokio::time::sleep_until((started + *after).into()).await;
                let status =
                    tokio::process::Command::new("sh").arg("-c").arg(&command).status().await;
                // Taken once the command returned: a write sent later went
                // out after the kill.
                failover.killed_us.store(failover.now_us(), Ordering::Release);
                match status {
                    Ok(status) if status.success() => {}
                    Ok(status) => eprintln!("warning: --kill-cmd exited with {status}"),
                    Err(e) => eprintln!("warning: cannot run --kill-cmd: {e}"),
                }
            }))
        }
        _ => None,
    };
    let stop = match (args.ops, args.duration) {
        (_, Some(duration)) => Stop::Until(started + *duration),
        (ops, None) => Stop::Ops(ops.unwrap_or(OPS_DEFAULT)),
    };
    let progress = progress_bar(stop, args);
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.clients {
        let clients = clients.to_vec();
        let at = worker % clients.len();
        let timeout = args.request_timeout_ms.map(Duration::from_millis);
        let rotate = args.rotate;
        let rng = Rng::new(args.seed.wrapping_add(worker as u64));
        let (issued, value, progress) = (issued.clone(), value.clone(), progress.clone());
        let (keys, read_ratio, read) = (args.keys, args.read_ratio, args.read.into());
        let failover = failover.clone();
        let stamped = args.feeds > 0;
        tasks.spawn(async move {
            let work =
                Work { clients, at, timeout, rotate, rng, keys, read_ratio, read, value, stamped };
            work.run(stop, &issued, &progress, &failover).await
        });
    }
    let mut tally = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined.expect("bench task panicked"));
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    if let Some(killer) = killer {
        killer.abort();
    }
    (tally, elapsed, failover, started_unix_ms)
}

/// Seconds of a run counted one by one (`per_second` in the result); a
/// longer run's later seconds are left out of that count only.
const PER_SECOND_MAX: usize = 24 * 3600;
/// Tenths of a second counted one by one (`per_100ms`): the first hour.
const PER_100MS_MAX: usize = 36_000;
/// The pause after a failed request, so that a node that refuses at once is
/// not asked again in a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Bytes of the send time that begins a stamped value: microseconds since
/// the Unix epoch, as 16 decimal digits (the feeds run in this process, on
/// this clock).
const STAMP_BYTES: usize = 16;

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `value` with its first bytes replaced by the send time.
fn stamped(value: &Bytes, sent_us: u64) -> Bytes {
    let mut bytes = value.to_vec();
    bytes[..STAMP_BYTES].copy_from_slice(format!("{sent_us:016}").as_bytes());
    Bytes::from(bytes)
}

/// The send time a stamped value (base64, as a feed sends it) begins with.
fn stamp_of(new_val: &Value) -> Option<u64> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(new_val.as_str()?).ok()?;
    std::str::from_utf8(bytes.get(..STAMP_BYTES)?).ok()?.parse().ok()
}

/// The changefeeds of a `--feeds` run: each a task that records the
/// write-to-event latency of every event it gets.
struct Feeds {
    /// The index before the run: the history read back starts after it.
    since: u64,
    tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
    events: Arc<AtomicU64>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Feeds {
    async fn open(global: &Global, targets: &[String], count: usize) -> Result<Feeds, CliError> {
        use cairn_client::{Changes, FeedEvent, FeedTarget};
        let first = global.client(&targets[0]).map_err(CliError::Usage)?;
        let since = first.kv_put("bench-feeds/start", "x").await?;
        let events = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(tokio::sync::watch::Sender::new(false));
        let mut tasks = Vec::with_capacity(count);
        for feed in 0..count {
            let client = global.client(&targets[feed % targets.len()]).map_err(CliError::Usage)?;
            let target = FeedTarget::Kv { prefix: "bench/".into() };
            let mut changes = Changes::new(vec![client], target, Some(since.to_string()), false)?;
            let (events, stop) = (events.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                    .expect("valid histogram bounds");
                let mut stop = stop.subscribe();
                loop {
                    let data = tokio::select! {
                        event = changes.next() => match event {
                            Ok(FeedEvent::Change(data)) => data,
                            _ => break,
                        },
                        _ = stop.changed() => break,
                    };
                    events.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent_us) = stamp_of(&data["new_val"]) {
                        let micros = unix_us().saturating_sub(sent_us).clamp(1, LATENCY_US_MAX);
                        latencies.record(micros).expect("clamped into bounds");
                    }
                }
                latencies
            }));
        }
        // Every feed open before the first write.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Feeds { since, tasks, events, stop })
    }

    /// Waits (a while) for every feed to get every write, then stops them;
    /// reads the run's changes back through one more feed; answers the
    /// figures.
    async fn finish(self, global: &Global, target: &str, writes: u64, run: Duration) -> Value {
        use cairn_client::{Changes, FeedEvent, FeedTarget};
        let count = self.tasks.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.events.load(Ordering::Relaxed) < writes * count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let delivered = self.events.load(Ordering::Relaxed);
        let mut latencies =
            Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds");
        self.stop.send_replace(true);
        for task in self.tasks {
            if let Ok(histogram) = task.await {
                latencies.add(histogram).expect("same bounds");
            }
        }
        // A fresh feed reads the run's changes from the history.
        let read_back = async {
            let client = global.client(target).map_err(CliError::Usage)?;
            let target = FeedTarget::Kv { prefix: "bench/".into() };
            let mut changes =
                Changes::new(vec![client], target, Some(self.since.to_string()), false)?;
            let started = Instant::now();
            let mut events = 0u64;
            while events < writes {
                match tokio::time::timeout(Duration::from_secs(30), changes.next()).await {
                    Ok(Ok(FeedEvent::Change(_))) => events += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(CliError::from(e)),
                    Err(_) => break,
                }
            }
            Ok::<_, CliError>((events, started.elapsed()))
        };
        let read_back = match read_back.await {
            Ok((events, took)) => json!({
                "events": events,
                "elapsed_s": took.as_secs_f64(),
                "events_per_s": events as f64 / took.as_secs_f64().max(1e-9),
            }),
            Err(e) => json!({"error": e.to_string()}),
        };
        json!({
            "feeds": count,
            "events": delivered,
            "expected_events": writes * count,
            "events_per_s_per_feed": delivered as f64 / count.max(1) as f64 / run.as_secs_f64().max(1e-9),
            "write_to_event": latency(&latencies),
            "read_back": read_back,
        })
    }
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
    /// A connection to each target, and the one this client uses now.
    clients: Vec<Backend>,
    at: usize,
    /// The cap on each request, if any.
    timeout: Option<Duration>,
    /// Whether a failure moves this client to the next target.
    rotate: bool,
    rng: Rng,
    keys: u64,
    read_ratio: f64,
    read: Read,
    value: Bytes,
    /// Whether values begin with their send time (for `--feeds`).
    stamped: bool,
}

impl Work {
    async fn run(
        mut self,
        stop: Stop,
        issued: &AtomicU64,
        progress: &ProgressBar,
        failover: &Failover,
    ) -> Tally {
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
            let key = format!("bench/{}", self.rng.below(self.keys));
            let is_read = self.rng.unit() < self.read_ratio;
            let started = Instant::now();
            let sent_us = failover.now_us();
            let value = if is_read {
                None
            } else if self.stamped {
                Some(stamped(&self.value, unix_us()))
            } else {
                Some(self.value.clone())
            };
            let read = self.read;
            let client = &mut self.clients[self.at];
            let request = async {
                match &value {
                    None => client.get(&key, read).await,
                    Some(value) => client.put(&key, value).await,
                }
            };
            let result = match self.timeout {
                None => request.await,
                Some(limit) => match tokio::time::timeout(limit, request).await {
                    Ok(result) => result,
                    Err(_) => Err(CliError::TimedOut(limit.as_millis())),
                },
            };
            let micros = (started.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
            if result.is_ok() {
                tally.answered_at(failover.now_us());
            }
            match result {
                Ok(()) if is_read => tally.reads.record(micros).expect("clamped into bounds"),
                Ok(()) => {
                    tally.writes.record(micros).expect("clamped into bounds");
                    failover.write_acknowledged(sent_us);
                }
                Err(e) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(e.to_string());
                    if self.rotate {
                        self.at = (self.at + 1) % self.clients.len();
                    }
                    tokio::time::sleep(ERROR_PAUSE).await;
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
        "system": format!("{:?}", args.system).to_lowercase(),
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
        "per_second": tally.per_second,
        "per_100ms": tally.per_100ms,
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
    if let Some(feeds) = result.get("feeds") {
        println!(
            "  feeds: {} feeds got {} of {} events",
            feeds["feeds"], feeds["events"], feeds["expected_events"]
        );
        line("w→event", &feeds["write_to_event"]);
        let back = &feeds["read_back"];
        match back["events_per_s"].as_f64() {
            Some(rate) => {
                println!("  one feed read {} events back at {rate:.0} events/s", back["events"])
            }
            None => println!("  reading back failed: {}", back["error"]),
        }
    }
    if let Some(failover) = result.get("failover") {
        match failover["first_write_ms"].as_f64() {
            Some(ms) => println!("  failover: first write acknowledged {ms:.0} ms after the kill"),
            None => println!("  failover: no write acknowledged after the kill"),
        }
    }
}

fn write_result(path: &Path, result: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(result).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}
