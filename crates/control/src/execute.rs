//! One turn of the leader's loop with its effects behind a trait: the agent
//! runs it over the cloud, the agents and its node
//! (`cairn_agent::leader`), and the generative tests over a simulated world
//! (`tests/generative/world.rs`), so that the tests exercise the executor the
//! agents run, not a copy of it.
//!
//! A turn ([`run_turn`]):
//! 1. plans from the observation ([`turn`]);
//! 2. stores the control state, step in flight included, before anything is
//!    done ([`Effects::store`]): a successor that takes over mid-step finds
//!    the step and takes it again (every step is idempotent);
//! 3. checks the step against a fresh look ([`Effects::look`],
//!    [`Step::check`]), unless bootstrapping (no membership to look at);
//! 4. runs it ([`Effects::run`]) and [`record`]s how it went;
//! 5. stores the outcome, except after a step that stopped every node
//!    (nothing could store it; the state stored before it says where the
//!    cluster is).
//!
//! A store that fails ends the turn (another leader wrote first, or the
//! node cannot write): what was decided is dropped and the next turn reads
//! again. A look or a step that fails is a failed attempt, recorded.
//!
//! Not here: where the control state is read from, who leads, waiting out
//! another leader's step, reporting to the cloud; the agent does those.
//!
//! The effects are `async` for the agent; a simulated world answers at
//! once, and [`now`] drives such a turn without a runtime.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::desired::DesiredState;
use crate::model::{ControlState, Observed, Step};
use crate::reconcile::{record, turn};

/// What a leader's turn does to the world.
pub trait Effects {
    type Error: fmt::Display;

    /// A fresh observation, right before a step runs.
    fn look(&mut self) -> impl Future<Output = Result<Observed, Self::Error>>;

    /// Runs `step` towards `desired`.
    fn run(
        &mut self,
        step: &Step,
        desired: &DesiredState,
    ) -> impl Future<Output = Result<(), Self::Error>>;

    /// Keeps `control` where a successor finds it; `pending_id` is the
    /// newest desired state seen and not accepted yet, `after_step` whether
    /// a step's outcome is being stored (else the decision before it).
    fn store(
        &mut self,
        control: &ControlState,
        pending_id: Option<u64>,
        after_step: bool,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

/// How a step went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end.
    Done,
    /// The fresh look refused it, or could not be had: nothing ran.
    Refused(String),
    /// It ran and failed, or timed out: it may have done part of its work.
    Failed(String),
}

impl Outcome {
    fn result(&self) -> Result<(), String> {
        match self {
            Outcome::Done => Ok(()),
            Outcome::Refused(why) | Outcome::Failed(why) => Err(why.clone()),
        }
    }
}

/// What a turn did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turned {
    /// The control state as stored last.
    pub control: ControlState,
    /// The step taken, and how it went.
    pub step: Option<(Step, Outcome)>,
}

/// One turn: plan, store, check, run, record, store (see the module docs).
/// `check` is false only while bootstrapping.
pub async fn run_turn<E: Effects>(
    effects: &mut E,
    control: &ControlState,
    offered: Option<&DesiredState>,
    observed: &Observed,
    check: bool,
) -> Result<Turned, E::Error> {
    let t = turn(control, offered, observed);
    effects.store(&t.control, t.pending_id, false).await?;
    let Some(step) = t.step else { return Ok(Turned { control: t.control, step: None }) };
    let desired =
        t.control.accepted.clone().expect("a turn plans a step only towards a desired state");
    let outcome = take(effects, &step, &desired, check).await;
    let control = record(&t.control, outcome.result());
    if !matches!(step, Step::StopNodes { .. }) {
        effects.store(&control, t.pending_id, true).await?;
    }
    Ok(Turned { control, step: Some((step, outcome)) })
}

/// Checks `step` against a fresh look (with `check`), then runs it.
async fn take<E: Effects>(
    effects: &mut E,
    step: &Step,
    desired: &DesiredState,
    check: bool,
) -> Outcome {
    if check {
        let refused = match effects.look().await {
            Ok(fresh) => step.check(&fresh).err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = refused {
            return Outcome::Refused(why);
        }
    }
    match effects.run(step, desired).await {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The value of a future that is ready at once, as a simulated world's
/// effects are. A future that waits is a bug of the simulation: it panics.
pub fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("a simulated effect waited"),
    }
}
