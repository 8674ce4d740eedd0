//! The planner's scenarios as data: one script a file under `tests/plans/`,
//! a cluster as observed and a desired state in, the planned step out.
//!
//! A script is lines of commands; `#` starts a comment. Each `plan` line is
//! followed by the line the planner's answer must print, starting with `> `.
//! The control state a `plan` returns carries over to the next one, as it
//! does in the leader's loop. `CAIRN_GOLDEN_UPDATE=1` rewrites the expected
//! lines from what the planner answers now (then read the diff).
//!
//! Commands:
//! - `desired ID replicas=N [zones=A,B,..] [restart_generation=N]
//!   [running=false] [version=V] [artifacts=DIR] [restore_from=DIR]`: the
//!   desired state the next plans aim at
//!   (zones default to zone-a, zone-b, zone-c);
//! - `member HOST ZONE ID`: a host whose healthy node is member ID;
//! - `empty HOST ZONE`: a host whose agent answers and holds no node;
//! - `leader ID`;
//! - `cluster-version MAJOR.MINOR`: the cluster version the leader's node
//!   reports (none until told);
//! - `failed HOST`, `unreachable HOST`: the cloud says the host failed, or
//!   its agent does not answer (no node seen either way);
//! - `unhealthy HOST`, `healthy HOST`: its node runs but does not serve,
//!   or serves again;
//! - `restarted HOST GENERATION`: its node was restarted for GENERATION;
//! - `runs HOST VERSION`: its node runs VERSION (all run this build's
//!   version until told otherwise);
//! - `removed ID`: node ID is no longer a member (its host stays);
//! - `deleted HOST`: the host is gone from the cloud;
//! - `caught-up true|false`: whether every member applied up to the
//!   configuration's start;
//! - `plan`: prints `step: …`, `final: …`, `wait: …`, `blocked: …` or `done`.

use std::path::{Path, PathBuf};

use cairn_control::desired::DesiredState;
use cairn_control::model::{ControlState, HostCondition, HostObs, NodeObs, NodeProcess, Observed};
use cairn_control::planner::{plan, Next};
use cairn_util::version;

/// One script's state while it runs.
struct Script {
    observed: Observed,
    control: ControlState,
    desired: Option<DesiredState>,
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans");
    let update = std::env::var("CAIRN_GOLDEN_UPDATE").is_ok_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scripts in {}", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable script");
        let produced = run(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if produced == text {
            continue;
        }
        if update {
            std::fs::write(file, &produced).expect("the script is rewritten");
        } else {
            failed.push(format!("{}:\n{}", file.display(), diff(&text, &produced)));
        }
    }
    if !failed.is_empty() {
        panic!(
            "{} of {} planner scripts differ (CAIRN_GOLDEN_UPDATE=1 rewrites them):\n\n{}",
            failed.len(),
            files.len(),
            failed.join("\n")
        );
    }
    println!("{} planner scripts hold", files.len());
}

/// Runs a script; answers its text with every expected line as the planner
/// answers now.
fn run(text: &str) -> Result<String, String> {
    let mut script =
        Script { observed: Observed::default(), control: ControlState::default(), desired: None };
    let mut out = String::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("> ") {
            continue; // replaced by what `plan` prints
        }
        out.push_str(line);
        out.push('\n');
        let words: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let answer = script.command(&words).map_err(|e| format!("line {}: {e}", number + 1))?;
        if let Some(answer) = answer {
            out.push_str(&format!("> {answer}\n"));
        }
    }
    Ok(out)
}

impl Script {
    fn command(&mut self, words: &[&str]) -> Result<Option<String>, String> {
        let number = |word: &str| word.parse::<u64>().map_err(|_| format!("{word:?} is no number"));
        match words {
            ["desired", id, options @ ..] => self.desired = Some(desired(number(id)?, options)?),
            ["member", host, zone, id] => {
                let id = number(id)?;
                self.observed.members.push(id);
                self.observed.member_hosts.insert(id, host.to_string());
                self.observed.members_caught_up = true;
                self.host(host, zone, HostCondition::Running, Some(node(Some(id), true)));
            }
            ["empty", host, zone] => {
                let absent = NodeObs { process: NodeProcess::Absent, ..node(None, false) };
                self.host(host, zone, HostCondition::Running, Some(absent));
            }
            ["leader", id] => self.observed.leader = Some(number(id)?),
            ["cluster-version", version] => {
                self.observed.cluster_version = Some(version.to_string())
            }
            ["failed", host] => {
                self.set(host, |h| (h.state, h.node) = (HostCondition::Failed, None))?
            }
            ["unreachable", host] => {
                self.set(host, |h| (h.state, h.node) = (HostCondition::Unreachable, None))?
            }
            ["unhealthy", host] => self.node(host, |n| n.healthy = false)?,
            ["healthy", host] => self.node(host, |n| n.healthy = true)?,
            ["restarted", host, generation] => {
                let generation = number(generation)?;
                self.node(host, |n| n.restart_generation = generation)?
            }
            ["runs", host, version] => self.node(host, |n| n.version = version.to_string())?,
            ["removed", id] => {
                let id = number(id)?;
                self.observed.members.retain(|m| *m != id);
                self.observed.member_hosts.remove(&id);
            }
            ["deleted", host] => {
                self.observed.hosts.remove(*host).ok_or(format!("no host {host}"))?;
            }
            ["caught-up", flag] => {
                self.observed.members_caught_up =
                    flag.parse().map_err(|_| format!("{flag:?} is not true or false"))?
            }
            ["plan"] => {
                let desired = self.desired.as_ref().ok_or("plan before any desired state")?;
                let (control, next) = plan(desired, &self.observed, &self.control);
                self.control = control;
                return Ok(Some(render(&next)));
            }
            other => return Err(format!("unknown command {other:?}")),
        }
        Ok(None)
    }

    fn host(&mut self, host: &str, zone: &str, state: HostCondition, node: Option<NodeObs>) {
        let obs = HostObs { name: host.into(), zone: zone.into(), state, node };
        self.observed.hosts.insert(host.into(), obs);
    }

    fn set(&mut self, host: &str, change: impl FnOnce(&mut HostObs)) -> Result<(), String> {
        change(self.observed.hosts.get_mut(host).ok_or(format!("no host {host}"))?);
        Ok(())
    }

    fn node(&mut self, host: &str, change: impl FnOnce(&mut NodeObs)) -> Result<(), String> {
        let obs = self.observed.hosts.get_mut(host).ok_or(format!("no host {host}"))?;
        change(obs.node.as_mut().ok_or(format!("{host} shows no node"))?);
        Ok(())
    }
}

fn node(id: Option<u64>, healthy: bool) -> NodeObs {
    NodeObs {
        node_id: id,
        process: NodeProcess::Running,
        healthy,
        restart_generation: 0,
        version: version().into(),
    }
}

/// `desired`'s options as a desired state numbered `id`.
fn desired(id: u64, options: &[&str]) -> Result<DesiredState, String> {
    let mut state = DesiredState {
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
        ..DesiredState::default_with_id(id)
    };
    for option in options {
        let (name, value) =
            option.split_once('=').ok_or(format!("{option:?} is not NAME=VALUE"))?;
        let bad = |what: &str| format!("{name}: {value:?} is not {what}");
        match name {
            "replicas" => state.replicas = value.parse().map_err(|_| bad("a number"))?,
            "zones" => state.zones = value.split(',').map(String::from).collect(),
            "restart_generation" => {
                state.restart_generation = value.parse().map_err(|_| bad("a number"))?
            }
            "running" => state.running = value.parse().map_err(|_| bad("true or false"))?,
            "version" => state.version = value.to_string(),
            "artifacts" => state.artifacts = Some(value.to_string()),
            "restore_from" => state.restore_from = Some(value.to_string()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(state)
}

fn render(next: &Next) -> String {
    match next {
        Next::Done => "done".into(),
        Next::Step(step) => format!("step: {}", step.describe()),
        Next::Final(step) => format!("final: {}", step.describe()),
        Next::Wait(why) => format!("wait: {why}"),
        Next::Blocked(why) => format!("blocked: {why}"),
    }
}

/// The lines that differ, expected then produced.
fn diff(expected: &str, produced: &str) -> String {
    let (expected, produced): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), produced.lines().collect());
    let mut out = String::new();
    for i in 0..expected.len().max(produced.len()) {
        let (e, p) = (expected.get(i).copied(), produced.get(i).copied());
        if e != p {
            out.push_str(&format!(
                "  line {}: expected {:?}\n           got {:?}\n",
                i + 1,
                e.unwrap_or("(end)"),
                p.unwrap_or("(end)")
            ));
        }
    }
    out
}
