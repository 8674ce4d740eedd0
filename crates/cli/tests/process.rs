//! Process tests: the real `cairn` binary as a user runs it. A node is killed
//! with SIGKILL in the middle of concurrent writes and must come back with every
//! acknowledged write; the CLI and the shell are driven as from a terminal
//! script; SIGTERM stops a node cleanly. Deadlines are generous: these machines
//! are shared and slow.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{Changes, Client, FeedEvent, FeedTarget, Read};
use tempfile::TempDir;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");
/// How long a node may take to start answering.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct NodeProcess {
    child: Child,
    addr: String,
    data_dir: PathBuf,
    token_file: PathBuf,
}

fn free_port() -> u16 {
    common::free_ports(1)
}

impl NodeProcess {
    fn start(data_dir: &Path, port: u16) -> NodeProcess {
        NodeProcess::start_with_token(data_dir, port, &data_dir.join("admin.token"))
    }

    /// A node whose admin token is in `token_file` (made there if missing).
    fn start_with_token(data_dir: &Path, port: u16, token_file: &Path) -> NodeProcess {
        NodeProcess::start_with_args(data_dir, port, token_file, &[])
    }

    /// A node with more arguments on its command line.
    fn start_with_args(
        data_dir: &Path,
        port: u16,
        token_file: &Path,
        more: &[&std::ffi::OsStr],
    ) -> NodeProcess {
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args(["node", "--id", "1", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &addr])
            .arg("--admin-token-file")
            .arg(token_file)
            .args(more)
            .env("CAIRN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the cairn binary starts");
        NodeProcess { child, addr, data_dir: data_dir.to_path_buf(), token_file: token_file.into() }
    }

    async fn ready(mut self) -> NodeProcess {
        let client = Client::with_timeout(&self.addr, Duration::from_secs(2)).unwrap();
        let started = Instant::now();
        loop {
            if client.health().await.is_ok() {
                return self;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("node on {} exited early: {status}", self.addr);
            }
            assert!(started.elapsed() < READY_TIMEOUT, "node on {} never became ready", self.addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's admin token (made in its data directory by default).
    fn token_file(&self) -> PathBuf {
        self.token_file.clone()
    }

    fn client(&self) -> Client {
        let token = std::fs::read_to_string(self.token_file()).unwrap().trim().to_string();
        Client::new(&self.addr).unwrap().with_token(Some(token))
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(mut self) -> PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.data_dir.clone()
    }

    fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.addr, Some(&self.token_file()), args, None)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_at(addr: &str, token_file: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    if let Some(token_file) = token_file {
        command.env("CAIRN_TOKEN_FILE", token_file);
    }
    let mut child = command
        .args(args)
        .env("CAIRN_ADDR", addr)
        .env_remove("CAIRN_TOKEN")
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = pipe.write_all(input.as_bytes());
    });
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn started(dir: &TempDir) -> NodeProcess {
    NodeProcess::start(&dir.path().join("node1"), free_port()).ready().await
}

/// Writers keep writing until told to stop or until the node goes away; every
/// acknowledged `(key, value)` is recorded.
async fn write_until_killed(
    client: Client,
    writers: usize,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    round: usize,
) {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (client, acked) = (client.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("r{round}/w{writer}/{i}");
                let value = format!("value of {key}");
                match client.kv_put(&key, value.clone()).await {
                    Ok(_) => acked.lock().unwrap().push((key, value)),
                    Err(_) => return,
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_kill_9() {
    // Three rounds: write concurrently, SIGKILL mid-stream, restart, check.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node1");
    let port = free_port();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut node = NodeProcess::start(&data_dir, port).ready().await;
    for round in 0..3 {
        let writers = tokio::spawn(write_until_killed(node.client(), 16, acked.clone(), round));
        // Kill once this round has a few hundred acknowledged writes.
        let wanted = acked.lock().unwrap().len() + 300;
        let started = Instant::now();
        while acked.lock().unwrap().len() < wanted {
            assert!(started.elapsed() < Duration::from_secs(120), "writes stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let data_dir = node.kill9();
        writers.await.unwrap();
        node = NodeProcess::start(&data_dir, port).ready().await;
        let client = node.client();
        let acked = acked.lock().unwrap().clone();
        for (key, value) in &acked {
            let got = client.kv_get(key, Read::Linearizable).await.unwrap();
            assert_eq!(
                got.as_deref(),
                Some(value.as_bytes()),
                "acknowledged write {key} lost after kill -9 (round {round})"
            );
        }
        eprintln!("round {round}: {} acknowledged writes all present after kill -9", acked.len());
    }
}

#[tokio::test]
async fn the_cli_speaks_to_a_node_with_text_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(&dir).await;

    let put = node.cli(&["put", "greeting", "hello world"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(stdout(&put).starts_with("OK (index "), "{}", stdout(&put));
    let get = node.cli(&["get", "greeting"]);
    assert_eq!(stdout(&get), "hello world\n");
    let json = node.cli(&["get", "greeting", "--output", "json"]);
    let value: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(value["value"], "hello world");

    let missing = node.cli(&["get", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("key 'nope' does not exist"), "{}", stderr(&missing));
    let missing_json = node.cli(&["get", "nope", "--output", "json"]);
    let error: serde_json::Value = serde_json::from_str(&stdout(&missing_json)).unwrap();
    assert_eq!(error["error"]["code"], "key_not_found");

    assert!(node.cli(&["table", "create", "users"]).status.success());
    assert_eq!(stdout(&node.cli(&["table", "list"])), "users\n");
    let insert =
        node.cli(&["doc", "insert", "users", r#"[{"id":"ada","born":1815},{"id":"alan"}]"#]);
    assert!(insert.status.success(), "{}", stderr(&insert));
    assert!(stdout(&insert).contains("inserted 2"), "{}", stdout(&insert));
    let update =
        node.cli(&["doc", "update", "users", "ada", r#"{"field":"math"}"#, "--output", "json"]);
    let updated: serde_json::Value = serde_json::from_str(&stdout(&update)).unwrap();
    assert_eq!(updated["doc"]["field"], "math");
    let list = node.cli(&["doc", "list", "users", "--limit", "1", "--all"]);
    assert_eq!(stdout(&list).lines().count(), 2, "{}", stdout(&list));
    let bad = node.cli(&["doc", "insert", "users", "{oops"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("not valid JSON"), "{}", stderr(&bad));
    let conflict = node.cli(&["doc", "insert", "users", r#"{"id":"ada"}"#]);
    assert_eq!(conflict.status.code(), Some(1));
    assert!(stderr(&conflict).contains("conflict"), "{}", stderr(&conflict));
    let replace = node.cli(&["doc", "insert", "users", r#"{"id":"ada"}"#, "--conflict", "replace"]);
    assert!(replace.status.success());
    assert!(node.cli(&["doc", "delete", "users", "alan"]).status.success());
    assert_eq!(node.cli(&["doc", "get", "users", "alan"]).status.code(), Some(1));
    assert!(node.cli(&["delete", "greeting"]).status.success());

    let unreachable = cli_at(&format!("127.0.0.1:{}", free_port()), None, &["get", "a"], None);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(stderr(&unreachable).contains("cannot reach"), "{}", stderr(&unreachable));
}

#[tokio::test]
async fn the_shell_runs_commands_and_sends_one_to_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(&dir).await;
    // Two nodes that share an admin token, as a cluster's nodes do.
    let other_dir = tempfile::tempdir().unwrap();
    let other = NodeProcess::start_with_token(
        &other_dir.path().join("node1"),
        free_port(),
        &node.token_file(),
    )
    .ready()
    .await;
    let other_port = other.addr.rsplit(':').next().unwrap().to_string();

    let script = format!(
        "put a 1\nget a\nput b \"two words\"\nget b\nput a 9 {other_port}\nget a {other_port}\nget a\n\
         table create t\ntable list\nfrobnicate\ndelete a\nget a\n"
    );
    let output = cli_at(&node.addr, Some(&node.token_file()), &["shell"], Some(&script));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("OK (index "), "{out}");
    assert_eq!(lines[1], "1", "{out}");
    assert_eq!(lines[3], "two words", "{out}");
    assert_eq!(lines[5], "9", "the trailing port sends the command to the other node: {out}");
    assert_eq!(lines[6], "1", "the shell's own node is unchanged: {out}");
    assert!(lines.contains(&"t"), "{out}");
    assert!(lines.contains(&"deleted"), "{out}");
    let err = stderr(&output);
    assert!(err.contains("frobnicate"), "unknown commands are named: {err}");
    assert!(err.contains("key 'a' does not exist"), "{err}");
    assert_eq!(output.status.code(), Some(1), "a scripted shell reports failed lines");
}

#[tokio::test]
async fn sigterm_stops_a_node_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = started(&dir).await;
    node.client().kv_put("k", "v").await.unwrap();
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < READY_TIMEOUT, "node ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a clean stop exits 0: {status}");
}

#[tokio::test]
async fn a_node_refuses_a_bad_command_line_and_a_busy_port() {
    let no_id = Command::new(BIN).args(["node", "--data-dir", "/tmp/x"]).output().unwrap();
    assert_eq!(no_id.status.code(), Some(2));
    assert!(stderr(&no_id).contains("--id"), "{}", stderr(&no_id));
    let zero =
        Command::new(BIN).args(["node", "--id", "0", "--data-dir", "/tmp/x"]).output().unwrap();
    assert_eq!(zero.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let node = started(&dir).await;
    let busy = Command::new(BIN)
        .args(["node", "--id", "2", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--listen", &node.addr])
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(stderr(&busy).contains("cannot listen"), "{}", stderr(&busy));
}

#[tokio::test]
async fn bench_reports_throughput_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(&dir).await;
    let result = dir.path().join("bench.json");
    let output = node.cli(&[
        "bench",
        "--clients",
        "4",
        "--ops",
        "400",
        "--read-ratio",
        "0.5",
        "--keys",
        "50",
        "--prefill",
        "--result-file",
        result.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("ops/s"), "{}", stdout(&output));
    let figures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(figures["ops"], 400);
    assert_eq!(figures["errors"], 0);
    assert!(figures["reads"]["count"].as_u64().unwrap() > 0);
    assert!(figures["writes"]["count"].as_u64().unwrap() > 0);
    assert!(figures["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    // Every answered operation is counted in the second it was answered.
    let per_second: Vec<u64> = serde_json::from_value(figures["per_second"].clone()).unwrap();
    assert!(!per_second.is_empty(), "{figures}");
    assert_eq!(per_second.iter().sum::<u64>(), 400, "{figures}");
    let bad = node.cli(&["bench", "--read-ratio", "2"]);
    assert_eq!(bad.status.code(), Some(2));
    // `--output json` prints the same figures as the result file, on stdout.
    let json = node.cli(&["--output", "json", "bench", "--clients", "2", "--ops", "50"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let printed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!(printed["ops"], 50, "{printed}");
    assert!(printed["latency"]["p99_ms"].as_f64().is_some(), "{printed}");
}

/// `cairn token` as an admin uses it: a token made with a role, used by
/// another client through `CAIRN_TOKEN`, refused past its role, listed
/// without its secret, and revoked.
#[tokio::test]
async fn tokens_are_made_used_listed_and_revoked_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(&dir).await;
    let stranger = cli_at(&node.addr, None, &["get", "a"], None);
    assert_eq!(stranger.status.code(), Some(1));
    assert!(stderr(&stranger).contains("unauthorized"), "{}", stderr(&stranger));

    let made =
        node.cli(&["--output", "json", "token", "create", "--name", "reports", "--role", "read"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let token = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["role"], "read");
    let bad_role = node.cli(&["token", "create", "--name", "x", "--role", "root"]);
    assert_eq!(bad_role.status.code(), Some(2), "{}", stderr(&bad_role));

    let as_reader = |args: &[&str]| {
        let mut command = Command::new(BIN);
        command.args(args).env("CAIRN_ADDR", &node.addr).env("CAIRN_TOKEN", &token);
        command.env_remove("CAIRN_TOKEN_FILE").output().unwrap()
    };
    assert!(node.cli(&["put", "a", "1"]).status.success());
    let read = as_reader(&["get", "a"]);
    assert_eq!(stdout(&read).trim(), "1", "{}", stderr(&read));
    let write = as_reader(&["put", "a", "2"]);
    assert_eq!(write.status.code(), Some(1));
    assert!(stderr(&write).contains("forbidden"), "{}", stderr(&write));

    let listed = node.cli(&["token", "list"]);
    assert!(stdout(&listed).contains(&id) && stdout(&listed).contains("reports"));
    let (_, secret) = token.split_once('.').unwrap();
    assert!(!stdout(&listed).contains(secret), "{}", stdout(&listed));
    let revoked = node.cli(&["token", "revoke", &id]);
    assert!(stdout(&revoked).contains("revoked"), "{}", stdout(&revoked));
    let after = as_reader(&["get", "a"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(stderr(&after).contains("unauthorized"), "{}", stderr(&after));
}

/// The next change a feed delivers, within 30 s.
async fn next_change(feed: &mut Changes) -> serde_json::Value {
    match tokio::time::timeout(Duration::from_secs(30), feed.next()).await {
        Ok(Ok(FeedEvent::Change(change))) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// `cairn backup create` takes a backup of a node run with --backup-dir,
/// `cairn restore` makes a new data directory of it that a node serves with
/// exactly the backed-up data, a changefeed resumes on it from a cursor
/// before the backup's index, and a backup with one flipped byte is refused
/// by `cairn restore`, naming the file, with nothing written.
#[tokio::test]
async fn a_backup_made_from_the_cli_restores_into_a_new_node() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let token = dir.path().join("admin.token");
    let more = [std::ffi::OsStr::new("--backup-dir"), backups.as_os_str()];
    let node = NodeProcess::start_with_args(&dir.path().join("node1"), free_port(), &token, &more)
        .ready()
        .await;
    let before_table = node.client().kv_put("greeting", "hello").await.unwrap();
    assert!(node.cli(&["table", "create", "users"]).status.success());
    let doc = r#"{"id": "ada", "born": 1815}"#;
    assert!(node.cli(&["doc", "insert", "users", doc]).status.success());
    let made = node.cli(&["--output", "json", "backup", "create", "b1"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let location = made["location"].as_str().unwrap().to_string();
    assert_eq!(Path::new(&location), backups.join("default/b1"));
    assert!(node.cli(&["put", "greeting", "later"]).status.success());
    let listed = node.cli(&["backup", "list"]);
    assert!(stdout(&listed).contains("default/b1"), "{}", stdout(&listed));

    let restore = |to: &Path| {
        Command::new(BIN)
            .args(["restore", "--from", &location, "--data-dir"])
            .arg(to)
            .output()
            .unwrap()
    };
    let copy_dir = dir.path().join("copy");
    let restored = restore(&copy_dir);
    assert!(restored.status.success(), "{}", stderr(&restored));
    assert!(stdout(&restored).contains(&format!("index {}", made["applied_index"])));
    let copy = NodeProcess::start_with_token(&copy_dir, free_port(), &token).ready().await;
    let greeting = copy.cli(&["get", "greeting"]);
    assert_eq!(stdout(&greeting).trim(), "hello", "{}", stderr(&greeting));
    let ada = copy.cli(&["--output", "json", "doc", "get", "users", "ada"]);
    let ada: serde_json::Value = serde_json::from_slice(&ada.stdout).unwrap();
    assert_eq!(ada["born"], 1815, "{ada}");
    // Changefeed cursors carry on over the restore point: a feed that
    // resumes before the backup's index gets the insert the backup holds,
    // then a write made on the restored node, after it.
    let users = FeedTarget::Table { table: "users".into(), id: None };
    let since = Some(format!("{before_table}.0"));
    let mut feed = Changes::new(vec![copy.client()], users, since, false).unwrap();
    let first = next_change(&mut feed).await;
    assert_eq!((first["type"].as_str(), first["id"].as_str()), (Some("add"), Some("ada")));
    assert!(first["index"].as_u64() <= made["applied_index"].as_u64(), "{first} {made}");
    let grace = r#"{"id": "grace", "born": 1906}"#;
    assert!(copy.cli(&["doc", "insert", "users", grace]).status.success());
    let second = next_change(&mut feed).await;
    assert_eq!(second["id"], "grace", "{second}");
    assert!(second["index"].as_u64() > made["applied_index"].as_u64(), "{second} {made}");
    drop(copy);

    // One flipped byte in one of its files: refused, naming the file.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backups.join("default/b1/manifest.json")).unwrap())
            .unwrap();
    let files = manifest["files"].as_array().unwrap();
    let file = files.iter().max_by_key(|f| f["bytes"].as_u64()).unwrap();
    let stored = backups.join("default/files").join(file["sha256"].as_str().unwrap());
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[0] ^= 0x80;
    std::fs::write(&stored, bytes).unwrap();
    let other = dir.path().join("other");
    let refused = restore(&other);
    assert_eq!(refused.status.code(), Some(1));
    let said = stderr(&refused);
    assert!(said.contains(file["name"].as_str().unwrap()) && said.contains("corrupt"), "{said}");
    assert!(!other.exists(), "nothing is written");
}

/// `cairn release` packs the very binary that runs as
/// cairn-<version>-<target>.tar.gz with its line in SHA256SUMS, which
/// `sha256sum -c` accepts; unpacked, it is the same binary and runs. Made
/// again, the line is replaced, not repeated. A directory that cannot be
/// made is a clear error.
#[test]
fn release_packs_this_binary_as_a_checked_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("artifacts");
    let release = || {
        Command::new(BIN)
            .args(["release", "--out"])
            .arg(&out)
            .args(["--output", "json"])
            .output()
            .unwrap()
    };
    let made = release();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let name = format!("cairn-{}-{}.tar.gz", cairn_util::version(), cairn_release::TARGET);
    let artifact = out.join(&name);
    assert_eq!(answer["artifact"], artifact.to_str().unwrap(), "{answer}");
    let sums = out.join(cairn_release::SUMS_FILE);
    assert_eq!(cairn_release::verify(&artifact, &sums).unwrap(), answer["sha256"]);
    let checked = Command::new("sha256sum").arg("-c").arg(&sums).current_dir(&out).output();
    if let Ok(checked) = checked {
        assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stdout));
    }
    let unpacked = cairn_release::unpack(&artifact, &dir.path().join("versions")).unwrap();
    assert_eq!(std::fs::read(&unpacked).unwrap(), std::fs::read(BIN).unwrap());
    let version = Command::new(&unpacked).arg("--version").output().unwrap();
    let printed = String::from_utf8_lossy(&version.stdout);
    assert!(printed.contains(cairn_util::version()), "{printed}");

    assert!(release().status.success());
    let listed = std::fs::read_to_string(&sums).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let refused =
        Command::new(BIN).args(["release", "--out"]).arg(file.join("sub")).output().unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("a-file"), "{message}");
}
