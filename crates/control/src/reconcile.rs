//! One turn of the reconciliation loop, without its effects: accept a newer
//! desired state when the rules allow, plan, and count attempts.
//!
//! The leader agent calls [`turn`] with the control state it read from the
//! system table, the newest desired state the cloud serves, and a fresh
//! observation; it stores the returned control state, runs the returned step
//! (after checking its guard against a fresh look), and reports the outcome
//! with [`record`], storing again. The generative tests drive the same two
//! functions against a simulated cloud and agents.
//!
//! Rules (README, "Reconciliation"; docs/architecture.md, "Control plane"):
//! - a new desired state is accepted only in `AT_DESIRED_STATE` or
//!   `ERROR_STATE` (or before any): one arriving meanwhile waits, and since
//!   only the newest is offered, the newest wins;
//! - after `max_attempts` failed tries of one step (or as long spent waiting
//!   for the cluster to settle) the state is `ERROR_STATE`; the failed step is
//!   not tried again until the observed cluster or the desired state changes
//!   what the planner wants;
//! - in `AT_DESIRED_STATE` and `ERROR_STATE` the loop keeps observing: a
//!   divergence (a dead host, a node down) sends it back to work.

use crate::desired::{check_supported, check_transition, DesiredState};
use crate::model::{BackupRecord, ControlState, Observed, Step};
use crate::planner::{plan, Next};
use crate::status::{ReconcileState, Report};

/// Loops of waiting that count as one failed attempt (with the agent's
/// 500 ms loop, 20 s).
pub const WAIT_LOOPS_PER_ATTEMPT: u32 = 40;

/// What one turn decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    /// The control state to store before anything else.
    pub control: ControlState,
    /// The step to run, if any.
    pub step: Option<Step>,
    /// The newest desired state seen but not accepted (it waits), by id.
    pub pending_id: Option<u64>,
}

/// One turn: accept `offered` if allowed, then plan from `observed`.
pub fn turn(control: &ControlState, offered: Option<&DesiredState>, observed: &Observed) -> Turn {
    let mut control = control.clone();
    let (pending_id, refusal) = accept(&mut control, offered);
    let Some(desired) = control.accepted.clone() else {
        control.message = "waiting for a desired state".into();
        return Turn { control, step: None, pending_id };
    };
    let (mut next_control, next) = plan(&desired, observed, &control);
    let failed_before = control.state == ReconcileState::ErrorState;
    let step = match next {
        Next::Done => {
            next_control.state = ReconcileState::AtDesiredState;
            next_control.step = None;
            next_control.attempts = 0;
            next_control.waited_loops = 0;
            next_control.message = format!("at desired state {}", desired.id);
            None
        }
        Next::Step(step) | Next::Final(step)
            if failed_before && control.step.as_ref() == Some(&step) =>
        {
            // The step that failed for good: not again until something changes.
            None
        }
        Next::Step(step) => {
            start_step(&mut next_control, &control, &step);
            Some(step)
        }
        Next::Final(step) => {
            start_step(&mut next_control, &control, &step);
            next_control.state = ReconcileState::AtDesiredState;
            next_control.message = format!("at desired state {}", desired.id);
            Some(step)
        }
        Next::Wait(reason) => {
            wait(&mut next_control, &control, &desired, reason);
            None
        }
        Next::Blocked(reason) => {
            next_control.state = ReconcileState::ErrorState;
            next_control.step = None;
            next_control.message = reason;
            None
        }
    };
    if let Some(refusal) = refusal {
        // Said until a newer state replaces the refused one.
        next_control.message = refusal;
    }
    Turn { control: next_control, step, pending_id }
}

/// Accepts `offered` when its id is newer and the state allows; returns the
/// id of a newer state left waiting, or why it was refused.
fn accept(
    control: &mut ControlState,
    offered: Option<&DesiredState>,
) -> (Option<u64>, Option<String>) {
    let Some(offered) = offered else { return (None, None) };
    let accepted_id = control.accepted.as_ref().map_or(0, |d| d.id);
    if offered.id <= accepted_id {
        return (None, None);
    }
    let may_accept = control.accepted.is_none()
        || matches!(control.state, ReconcileState::AtDesiredState | ReconcileState::ErrorState);
    if !may_accept {
        return (Some(offered.id), None);
    }
    let checked = check_transition(control.accepted.as_ref(), control.has_run, offered)
        .and_then(|()| check_supported(offered));
    if let Err(e) = checked {
        return (None, Some(format!("desired state {} refused: {e}", offered.id)));
    }
    control.accepted = Some(offered.clone());
    control.state = ReconcileState::WorkingTowardsDesiredState;
    control.step = None;
    control.attempts = 0;
    control.waited_loops = 0;
    control.message = format!("accepted desired state {}", offered.id);
    (None, None)
}

fn start_step(next: &mut ControlState, before: &ControlState, step: &Step) {
    if before.step.as_ref() != Some(step) {
        next.attempts = 0;
    }
    next.state = ReconcileState::WorkingTowardsDesiredState;
    next.step = Some(step.clone());
    next.waited_loops = 0;
    next.message = step.describe();
}

fn wait(next: &mut ControlState, before: &ControlState, desired: &DesiredState, reason: String) {
    if before.state == ReconcileState::ErrorState && before.message == reason {
        return;
    }
    next.step = None;
    next.state = ReconcileState::WorkingTowardsDesiredState;
    next.waited_loops = before.waited_loops.saturating_add(1);
    if next.waited_loops % WAIT_LOOPS_PER_ATTEMPT == 0 {
        next.attempts = before.attempts.saturating_add(1);
        if next.attempts >= desired.max_attempts {
            next.state = ReconcileState::ErrorState;
        }
    }
    next.message = reason;
}

/// Records how the step of a turn went; a failure's message (text for
/// people, kept in the control state and the next report) goes into it.
pub fn record(control: &ControlState, result: Result<(), String>) -> ControlState {
    let mut control = control.clone();
    match result {
        Ok(()) => {
            match &control.step {
                Some(Step::TakeBackup { name, sink, slot_ms, .. }) => {
                    let known =
                        control.backups.iter_mut().find(|b| b.name == *name && b.sink == *sink);
                    match known {
                        Some(record) => record.taken = true,
                        None => control.backups.push(BackupRecord {
                            name: name.clone(),
                            sink: sink.clone(),
                            slot_ms: *slot_ms,
                            taken: true,
                        }),
                    }
                }
                Some(Step::DeleteBackup { name, sink }) => {
                    control.backups.retain(|b| !(b.name == *name && b.sink == *sink));
                }
                _ => {}
            }
            control.attempts = 0;
            control.step = None;
        }
        Err(error) => {
            control.attempts = control.attempts.saturating_add(1);
            let max = control.accepted.as_ref().map_or(1, |d| d.max_attempts);
            let step = control.step.as_ref().map(Step::describe).unwrap_or_default();
            control.message = format!("{step}: {error}");
            if control.attempts >= max {
                control.state = ReconcileState::ErrorState;
            }
        }
    }
    control
}

/// The status report of a control state.
pub fn report(
    control: &ControlState,
    pending_id: Option<u64>,
    leader_host: Option<String>,
) -> Report {
    Report {
        state: control.state,
        desired_id: control.accepted.as_ref().map_or(0, |d| d.id),
        pending_id,
        step: control.step.as_ref().map(Step::describe),
        message: control.message.clone(),
        attempts: control.attempts,
        leader_host,
        backups: control.backups.clone(),
    }
}
