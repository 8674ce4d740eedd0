//! The supervisor's two background loops: the watcher, which keeps the node
//! process as the intent says (restarting it with backoff after an
//! unexpected exit, stopping one that runs though it was asked stopped), and
//! the health poller, which asks the node `GET /v1/health` and keeps the last
//! answer.
//!
//! Invariants:
//! - The watcher acts only under the supervisor's `ops` lock, so it never
//!   mistakes a commanded stop for a crash, nor restarts a node while a
//!   command stops it.
//! - The health poller takes no `ops` lock (a slow node must not hold up a
//!   command) and drops an answer whose process has since changed.
//! - Both loops end when their [`Tasks`] guard is dropped, and neither
//!   touches the node then: a crashed or shut-down agent leaves the node as
//!   it was.
//!
//! Not handled here: what to do about an unhealthy node that still runs.
//! The node recovers by itself or the leader loop decides; killing a slow
//! node from here would turn slowness into unavailability.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::status::NodeState;
use crate::supervisor::{schedule_retry, Health, Poll, Supervisor};

/// How often the node process is checked for an exit.
pub const WATCH_PERIOD_MS: u64 = 100;
/// How often the node is asked for its health.
pub const HEALTH_PERIOD_MS: u64 = 500;
/// How long a health check may take before it counts as failed.
const HEALTH_TIMEOUT_MS: u64 = 2_000;

/// The running loops; dropping the guard ends them.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the watcher and the health poller of `supervisor`.
pub(crate) fn start(supervisor: &Supervisor) -> Result<Tasks, crate::Error> {
    let addr = supervisor.inner.spec.health_addr().to_string();
    let client = cairn_client::Client::with_tls(
        &addr,
        Duration::from_millis(HEALTH_TIMEOUT_MS),
        supervisor.inner.spec.api_tls.clone(),
    )
    .map_err(|e| crate::Error::InvalidArgument(format!("node address {addr}: {e}")))?;
    let watcher = tokio::spawn(watch_loop(supervisor.clone()));
    let poller = tokio::spawn(health_loop(supervisor.clone(), client));
    Ok(Tasks(vec![watcher, poller]))
}

async fn watch_loop(supervisor: Supervisor) {
    let mut ticks = tokio::time::interval(Duration::from_millis(WATCH_PERIOD_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let _ops = supervisor.inner.ops.lock().await;
        watch_once(&supervisor).await;
    }
}

/// One look: notice an exit, stop a node asked stopped, restart one due.
async fn watch_once(supervisor: &Supervisor) {
    match supervisor.poll() {
        Poll::Running => {
            if supervisor.state().intent.stopped {
                // Adopted from an agent that died while stopping it.
                if let Err(e) = supervisor.terminate().await {
                    tracing::warn!("cannot stop the node asked stopped: {e}");
                }
                supervisor.state().phase = NodeState::Stopped;
            }
            return;
        }
        Poll::Exited(how) => {
            let mut s = supervisor.state();
            let up = s.started_at.map_or(Duration::ZERO, |t| t.elapsed());
            if s.intent.stopped {
                s.phase = NodeState::Stopped;
                return;
            }
            tracing::warn!("{how} after {} ms up: restarting it", up.as_millis());
            schedule_retry(&mut s, up);
            s.message = how;
        }
        Poll::Absent => {}
    }
    let (due, is_restart) = {
        let s = supervisor.state();
        let wants_running = s.intent.node_id.is_some() && !s.intent.stopped && s.process.is_none();
        // Outside backoff, a node that should run and does not (a command
        // cut short between stop and start) is started at once.
        let is_restart = s.phase == NodeState::Backoff;
        let due = !is_restart || s.retry_at.is_none_or(|t| Instant::now() >= t);
        (wants_running && due, is_restart)
    };
    if due {
        if is_restart {
            supervisor.state().restarts += 1;
        }
        if let Err(e) = supervisor.launch() {
            tracing::warn!("cannot restart the node: {e}");
        }
    }
}

async fn health_loop(supervisor: Supervisor, client: cairn_client::Client) {
    let mut ticks = tokio::time::interval(Duration::from_millis(HEALTH_PERIOD_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (epoch, node_id) = {
            let s = supervisor.state();
            if s.process.is_none() {
                continue;
            }
            (s.epoch, s.intent.node_id)
        };
        let answer = client.health().await;
        let mut s = supervisor.state();
        if s.epoch != epoch {
            continue;
        }
        match answer.map_err(|e| e.to_string()).and_then(|v| read_health(&v, node_id)) {
            Ok(health) => {
                s.health = health;
                if s.phase == NodeState::Starting {
                    s.phase = NodeState::Running;
                }
            }
            Err(why) => {
                if s.health.healthy {
                    tracing::warn!("the node is not healthy: {why}");
                }
                s.health.healthy = false;
            }
        }
    }
}

/// Reads a 200 answer of `GET /v1/health`; an answer from another node (a
/// stray process on the node's port) is not this node's health.
fn read_health(answer: &cairn_client::Health, node_id: Option<u64>) -> Result<Health, String> {
    if Some(answer.id) != node_id {
        return Err(format!(
            "the health answer names node {}, not node {}",
            answer.id,
            node_id.unwrap_or(0)
        ));
    }
    Ok(Health { healthy: true, role: Some(answer.role), applied_index: answer.applied_index })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_client::NodeRole;

    /// A health answer counts only when it names this host's node.
    #[test]
    fn health_answers_must_name_the_node() {
        let answer = cairn_client::Health {
            status: "ok".into(),
            id: 2,
            role: NodeRole::Leader,
            applied_index: 9,
            peer_tls: true,
            insecure: false,
        };
        let health = read_health(&answer, Some(2)).expect("its own answer");
        assert!(health.healthy);
        assert_eq!((health.role, health.applied_index), (Some(NodeRole::Leader), 9));
        assert!(read_health(&answer, Some(3)).is_err());
        assert!(read_health(&answer, None).is_err());
    }
}
