//! The cluster's status log and the cloud's events.
//!
//! The leader agent posts a [`Report`] after every reconciliation loop, many
//! of them alike. The log keeps the last one, and a history of transitions
//! only: a report is a transition when its state, desired id, step or leader
//! differs from the one before (a changed message or attempt count alone is
//! not). The history is bounded ([`STATUS_HISTORY_MAX`]), oldest dropped
//! first, and lives in memory: a restarted cloud starts a new log, and the
//! leader's next report fills it in.
//!
//! Everything worth a line on the terminal of `cairn up` is a [`StatusEvent`]:
//! status transitions, desired states accepted or refused, hosts created,
//! restarted, failed and deleted. [`Events::publish`] is the one place that
//! logs them (tracing) and broadcasts them to subscribers. A subscriber that
//! falls more than [`STATUS_EVENTS_CAPACITY`] events behind loses the oldest
//! (it is told how many it missed) rather than slowing the cloud down.
//!
//! Not kept: reports older than the history, or who posted them (any client
//! of the cloud may post; the cloud trusts its loopback or private network).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

use cairn_control::status::{ReconcileState, Report};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::desired::DesiredSource;
use crate::lock;

/// Transitions kept in the history.
pub const STATUS_HISTORY_MAX: usize = 200;
/// Events a subscriber may fall behind before it loses the oldest.
pub const STATUS_EVENTS_CAPACITY: usize = 256;

/// A report that changed the status, and when it arrived (ms since the Unix
/// epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub report: Report,
}

/// `GET /v1/status`: the last report and the transitions before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub last: Option<Report>,
    /// When the last report arrived: shows whether a leader still reports.
    pub last_at_ms: Option<u64>,
    /// Oldest first.
    pub history: Vec<Transition>,
}

/// What happened to a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostChange {
    Created,
    /// Its agent exited on its own; the cloud restarts it.
    AgentExited,
    AgentRestarted,
    Failed,
    Deleted,
}

/// One line's worth of news for whoever watches the cloud.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusEvent {
    /// The leader's status changed.
    Transition(Transition),
    /// A desired state became the current one.
    DesiredAccepted { at_ms: u64, id: u64, source: DesiredSource },
    /// A desired state was refused; the current one stays.
    DesiredRefused { at_ms: u64, source: DesiredSource, message: String },
    /// Something happened to a host; `detail` says more for people.
    Host { at_ms: u64, name: String, change: HostChange, detail: String },
}

impl StatusEvent {
    /// Whether the event reports something going wrong.
    pub fn is_warning(&self) -> bool {
        match self {
            StatusEvent::Transition(t) => t.report.state == ReconcileState::ErrorState,
            StatusEvent::DesiredRefused { .. } => true,
            StatusEvent::Host { change, .. } => {
                matches!(change, HostChange::AgentExited | HostChange::Failed)
            }
            StatusEvent::DesiredAccepted { .. } => false,
        }
    }
}

impl fmt::Display for Transition {
    /// `WORKING_TOWARDS_DESIRED_STATE desired 2: create host-4 in zone-b (leader host-1)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        write!(f, "{} desired {}", r.state.as_str(), r.desired_id)?;
        match (&r.step, r.message.is_empty()) {
            (Some(step), true) => write!(f, ": {step}")?,
            (Some(step), false) if *step == r.message => write!(f, ": {step}")?,
            (Some(step), false) => write!(f, ": {step} ({})", r.message)?,
            (None, false) => write!(f, ": {}", r.message)?,
            (None, true) => {}
        }
        if r.attempts > 0 {
            write!(f, " [{} failed attempts]", r.attempts)?;
        }
        if let Some(pending) = r.pending_id {
            write!(f, " (desired {pending} waiting)")?;
        }
        if let Some(leader) = &r.leader_host {
            write!(f, " (leader {leader})")?;
        }
        Ok(())
    }
}

impl fmt::Display for StatusEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusEvent::Transition(t) => t.fmt(f),
            StatusEvent::DesiredAccepted { id, source, .. } => {
                write!(f, "desired state {id} accepted from {}", source.as_str())
            }
            StatusEvent::DesiredRefused { source, message, .. } => {
                write!(f, "desired state from {} refused: {message}", source.as_str())
            }
            StatusEvent::Host { name, change, detail, .. } => {
                let what = match change {
                    HostChange::Created => "created",
                    HostChange::AgentExited => "agent exited",
                    HostChange::AgentRestarted => "agent restarted",
                    HostChange::Failed => "failed",
                    HostChange::Deleted => "deleted",
                };
                write!(f, "host {name}: {what}")?;
                if !detail.is_empty() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
        }
    }
}

/// Logs and broadcasts [`StatusEvent`]s; cheap to clone.
#[derive(Clone)]
pub(crate) struct Events(broadcast::Sender<StatusEvent>);

impl Events {
    pub fn new() -> Events {
        Events(broadcast::channel(STATUS_EVENTS_CAPACITY).0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StatusEvent> {
        self.0.subscribe()
    }

    pub fn publish(&self, event: StatusEvent) {
        if event.is_warning() {
            tracing::warn!("{event}");
        } else {
            tracing::info!("{event}");
        }
        // No subscriber is fine: the line above is the record.
        let _ = self.0.send(event);
    }
}

/// Whether `next` changes the status `prev` described.
pub(crate) fn is_transition(prev: Option<&Report>, next: &Report) -> bool {
    prev.is_none_or(|prev| {
        prev.state != next.state
            || prev.desired_id != next.desired_id
            || prev.step != next.step
            || prev.leader_host != next.leader_host
    })
}

struct Log {
    last: Option<Report>,
    last_at_ms: Option<u64>,
    history: VecDeque<Transition>,
}

/// The last report and the bounded history of transitions.
pub(crate) struct StatusLog {
    log: Mutex<Log>,
    events: Events,
}

impl StatusLog {
    pub fn new(events: Events) -> StatusLog {
        let log = Log { last: None, last_at_ms: None, history: VecDeque::new() };
        StatusLog { log: Mutex::new(log), events }
    }

    /// Records a report that arrived at `at_ms`; publishes it and answers
    /// `true` when it is a transition.
    pub fn record(&self, report: Report, at_ms: u64) -> bool {
        let transition = {
            let mut log = lock(&self.log);
            let changed = is_transition(log.last.as_ref(), &report);
            log.last = Some(report.clone());
            log.last_at_ms = Some(at_ms);
            if !changed {
                return false;
            }
            let transition = Transition { at_ms, report };
            if log.history.len() == STATUS_HISTORY_MAX {
                log.history.pop_front();
            }
            log.history.push_back(transition.clone());
            assert!(log.history.len() <= STATUS_HISTORY_MAX);
            transition
        };
        self.events.publish(StatusEvent::Transition(transition));
        true
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let log = lock(&self.log);
        StatusSnapshot {
            last: log.last.clone(),
            last_at_ms: log.last_at_ms,
            history: log.history.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: ReconcileState, desired_id: u64, step: Option<&str>) -> Report {
        Report {
            state,
            desired_id,
            pending_id: None,
            step: step.map(str::to_string),
            message: String::new(),
            attempts: 0,
            leader_host: Some("host-1".into()),
            backups: Vec::new(),
        }
    }

    /// Repeats of a report are not transitions; a new message or attempt
    /// count alone is not either; a new step, state, id or leader is.
    #[test]
    fn transitions() {
        let working = report(ReconcileState::WorkingTowardsDesiredState, 2, Some("create host-4"));
        assert!(is_transition(None, &working));
        assert!(!is_transition(Some(&working), &working));
        let retried = Report { attempts: 2, message: "timed out".into(), ..working.clone() };
        assert!(!is_transition(Some(&working), &retried));
        let next_step = Report { step: Some("add host-4".into()), ..working.clone() };
        assert!(is_transition(Some(&working), &next_step));
        let new_leader = Report { leader_host: Some("host-2".into()), ..working.clone() };
        assert!(is_transition(Some(&working), &new_leader));
        let done = report(ReconcileState::AtDesiredState, 2, None);
        assert!(is_transition(Some(&working), &done));
    }

    /// The line `cairn up` prints for a transition.
    #[test]
    fn transition_line() {
        let working =
            report(ReconcileState::WorkingTowardsDesiredState, 2, Some("create host-4 in zone-b"));
        let line = Transition { at_ms: 0, report: working }.to_string();
        assert_eq!(
            line,
            "WORKING_TOWARDS_DESIRED_STATE desired 2: create host-4 in zone-b (leader host-1)"
        );
        let failed = Report {
            message: "agent unreachable".into(),
            attempts: 5,
            ..report(ReconcileState::ErrorState, 3, None)
        };
        let line = Transition { at_ms: 0, report: failed }.to_string();
        assert_eq!(
            line,
            "ERROR_STATE desired 3: agent unreachable [5 failed attempts] (leader host-1)"
        );
    }

    /// The history keeps the newest transitions, at most STATUS_HISTORY_MAX.
    #[test]
    fn history_is_bounded() {
        let log = StatusLog::new(Events::new());
        for id in 0..(STATUS_HISTORY_MAX as u64 + 10) {
            let r = report(ReconcileState::AtDesiredState, id, None);
            log.record(r.clone(), id);
            log.record(r, id + 1);
        }
        let snapshot = log.snapshot();
        assert_eq!(snapshot.history.len(), STATUS_HISTORY_MAX);
        assert_eq!(snapshot.history[0].report.desired_id, 10);
        assert_eq!(snapshot.last_at_ms, Some(STATUS_HISTORY_MAX as u64 + 10));
    }
}
