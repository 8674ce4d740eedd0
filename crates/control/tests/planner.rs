//! The reconciliation loop (accepting desired states, attempts, the error
//! state) and the fresh checks, as scenarios. The planner's own scenarios,
//! a cluster and a desired state in and the next step out, are scripts
//! under `tests/plans/` (`tests/golden.rs` runs them).

use cairn_control::desired::DesiredState;
use cairn_control::model::{
    ControlState, HostCondition, HostObs, NodeObs, NodeProcess, Observed, Step,
};
use cairn_control::planner::{plan, Next};
use cairn_control::reconcile::{record, turn, WAIT_LOOPS_PER_ATTEMPT};
use cairn_control::status::ReconcileState;
use cairn_util::version;

/// A desired state with `replicas` over zones a, b, c.
fn want(id: u64, replicas: u32) -> DesiredState {
    DesiredState {
        replicas,
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
        ..DesiredState::default_with_id(id)
    }
}

/// A cluster to observe, built host by host.
#[derive(Default)]
struct Cluster(Observed);

impl Cluster {
    /// A host with a healthy member node.
    fn member(mut self, host: &str, zone: &str, id: u64) -> Cluster {
        self.0.members.push(id);
        self.0.member_hosts.insert(id, host.into());
        self.0.members_caught_up = true;
        self.host(
            host,
            zone,
            HostCondition::Running,
            Some(node(Some(id), NodeProcess::Running, true)),
        )
    }

    fn host(
        mut self,
        host: &str,
        zone: &str,
        state: HostCondition,
        node: Option<NodeObs>,
    ) -> Cluster {
        let obs = HostObs { name: host.into(), zone: zone.into(), state, node };
        self.0.hosts.insert(host.into(), obs);
        self
    }

    fn leader(mut self, id: u64) -> Cluster {
        self.0.leader = Some(id);
        self
    }

    fn with(mut self, host: &str, change: impl FnOnce(&mut HostObs)) -> Cluster {
        change(self.0.hosts.get_mut(host).expect("a host of the scenario"));
        self
    }
}

fn node(id: Option<u64>, process: NodeProcess, healthy: bool) -> NodeObs {
    NodeObs { node_id: id, process, healthy, restart_generation: 0, version: version().into() }
}

fn three() -> Cluster {
    Cluster::default()
        .member("host-1", "zone-a", 1)
        .member("host-2", "zone-b", 2)
        .member("host-3", "zone-c", 3)
        .leader(1)
}

#[test]
fn a_removed_node_keeps_its_host_until_every_member_caught_up() {
    let mut cluster = three().member("host-4", "zone-a", 4).leader(1);
    let (control, next) = plan(&want(2, 3), &cluster.0, &ControlState::default());
    assert_eq!(next, Next::Step(Step::RemoveMember { node_id: 4, host: Some("host-4".into()) }));
    cluster.0.members.retain(|&id| id != 4);
    cluster.0.member_hosts.remove(&4);
    cluster.0.members_caught_up = false;
    let step = Step::DeleteHost { host: "host-4".into() };
    assert!(step.check(&cluster.0).is_err(), "not every member caught up");
    assert_ne!(plan(&want(2, 3), &cluster.0, &control).1, Next::Step(step.clone()));
    cluster.0.members_caught_up = true;
    assert_eq!(plan(&want(2, 3), &cluster.0, &control).1, Next::Step(step));
}

#[test]
fn fresh_checks_refuse_what_a_stale_look_planned() {
    let cluster = three();
    // Deleting a host that holds a member.
    assert!(Step::DeleteHost { host: "host-2".into() }.check(&cluster.0).is_err());
    // Removing node 2 meant as the one on a host it no longer runs on.
    let stale = Step::RemoveMember { node_id: 2, host: Some("host-9".into()) };
    assert!(stale.check(&cluster.0).is_err());
    // A restart while another member is down would cost the quorum.
    let down = three().with("host-3", |h| h.node.as_mut().unwrap().healthy = false);
    assert!(Step::RestartNode { host: "host-2".into(), generation: 1 }.check(&down.0).is_err());
}

#[test]
fn a_new_desired_state_waits_while_working_and_the_newest_wins() {
    let cluster = Cluster::default().member("host-1", "zone-a", 1).leader(1);
    let t = turn(&ControlState::default(), Some(&want(1, 3)), &cluster.0);
    assert_eq!(t.control.state, ReconcileState::WorkingTowardsDesiredState);
    assert!(t.step.is_some());
    // Working: desired state 3 waits (2 was never seen: the newest wins).
    let t = turn(&t.control, Some(&want(3, 1)), &cluster.0);
    assert_eq!(t.pending_id, Some(3));
    assert_eq!(t.control.accepted.as_ref().map(|d| d.id), Some(1));
    // At the desired state, it is accepted.
    let at = turn(&ControlState::default(), Some(&want(1, 1)), &cluster.0);
    assert_eq!(at.control.state, ReconcileState::AtDesiredState);
    let t = turn(&at.control, Some(&want(3, 1)), &cluster.0);
    assert_eq!(t.control.accepted.as_ref().map(|d| d.id), Some(3));
}

#[test]
fn max_attempts_failed_tries_end_in_error_state_until_something_changes() {
    let cluster = Cluster::default().member("host-1", "zone-a", 1).leader(1);
    let desired = DesiredState { max_attempts: 2, ..want(1, 3) };
    let mut control = ControlState::default();
    for _ in 0..2 {
        let t = turn(&control, Some(&desired), &cluster.0);
        assert!(t.step.is_some());
        control = record(&t.control, Err("the cloud refused".into()));
    }
    assert_eq!(control.state, ReconcileState::ErrorState);
    assert!(control.message.contains("the cloud refused"), "{}", control.message);
    // The failed step is not tried again on its own…
    assert_eq!(turn(&control, Some(&desired), &cluster.0).step, None);
    // …but a new desired state is accepted in ERROR_STATE.
    let t = turn(&control, Some(&want(2, 1)), &cluster.0);
    assert_eq!(t.control.accepted.as_ref().map(|d| d.id), Some(2));
    assert_eq!(t.control.state, ReconcileState::AtDesiredState);
}

#[test]
fn waiting_too_long_counts_as_failed_attempts() {
    let cluster = three().with("host-3", |h| {
        h.state = HostCondition::Unreachable;
        h.node = None;
    });
    let desired = DesiredState { max_attempts: 1, ..want(1, 3) };
    let mut control = ControlState { accepted: Some(desired.clone()), ..ControlState::default() };
    for _ in 0..WAIT_LOOPS_PER_ATTEMPT {
        control = turn(&control, Some(&desired), &cluster.0).control;
    }
    assert_eq!(control.state, ReconcileState::ErrorState);
}

#[test]
fn a_refused_desired_state_leaves_the_accepted_one() {
    let cluster = three();
    let control = turn(&ControlState::default(), Some(&want(1, 3)), &cluster.0).control;
    assert!(control.has_run);
    let restore = DesiredState { restore_from: Some("/backups/x".into()), ..want(2, 5) };
    let t = turn(&control, Some(&restore), &cluster.0);
    assert_eq!(t.control.accepted.as_ref().map(|d| d.id), Some(1));
    assert!(t.control.message.contains("restore_from"), "{}", t.control.message);
}

/// A control state stored before `inventory` was renamed `host_plans` reads
/// back with its host plans; a new one is written with the new name.
#[test]
fn a_control_state_stored_under_the_old_name_still_reads() {
    let mut state = ControlState::default();
    state.host_plans.insert(
        "host-1".into(),
        serde_json::from_value(serde_json::json!({
            "zone": "zone-a", "node_id": 1, "role": "serving"
        }))
        .expect("a host plan"),
    );
    let mut stored = serde_json::to_value(&state).expect("encodes");
    assert!(stored.get("host_plans").is_some() && stored.get("inventory").is_none());
    let plans = stored.as_object_mut().unwrap().remove("host_plans").unwrap();
    stored["inventory"] = plans;
    let read: ControlState = serde_json::from_value(stored).expect("the old name reads");
    assert_eq!(read, state);
}

// ---- Backups ----

/// 2026-12-06 18:00:30 UTC: half a minute into a six-hour slot.
const NOW_MS: u64 = 1_796_580_030_000;

fn backup(name: &str, sink: &str) -> cairn_control::desired::Backup {
    cairn_control::desired::Backup { name: name.into(), sink: sink.into() }
}

fn at(mut cluster: Cluster, now_ms: u64) -> Cluster {
    cluster.0.now_ms = now_ms;
    cluster
}

/// Runs turns, each step succeeding, until the cluster is at `desired`;
/// answers the steps taken.
fn settle(control: &mut ControlState, desired: &DesiredState, cluster: &Cluster) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..20 {
        let t = turn(control, Some(desired), &cluster.0);
        let Some(step) = t.step else {
            *control = t.control;
            return steps;
        };
        steps.push(step);
        *control = record(&t.control, Ok(()));
    }
    panic!("never settled: {steps:?}");
}

#[test]
fn an_on_demand_backup_is_recorded_taken_on_a_follower_then_deleted_when_removed() {
    let cluster = at(three().leader(2), NOW_MS);
    let desired = DesiredState { backups: vec![backup("b1", "manual")], ..want(1, 3) };
    let t = turn(&ControlState::default(), Some(&desired), &cluster.0);
    let take = Step::TakeBackup {
        name: "b1".into(),
        sink: "manual".into(),
        host: "host-1".into(),
        slot_ms: None,
    };
    assert_eq!(t.step, Some(take.clone()), "the first follower that serves, not the leader");
    // Recorded before the step runs, as not taken yet.
    assert_eq!(t.control.backups.len(), 1);
    assert!(!t.control.backups[0].taken);
    // A failed try leaves it recorded and not taken; the next turn tries again.
    let failed = record(&t.control, Err("the node refused".into()));
    assert_eq!(turn(&failed, Some(&desired), &cluster.0).step, Some(take.clone()));
    let mut control = record(&t.control, Ok(()));
    assert!(control.backups[0].taken);
    assert_eq!(settle(&mut control, &desired, &cluster), []);
    assert_eq!(control.state, ReconcileState::AtDesiredState);
    assert_eq!(cairn_control::reconcile::report(&control, None, None).backups, control.backups);

    // Removed from the desired state: deleted, and forgotten once deleted.
    let without = DesiredState { id: 2, backups: Vec::new(), ..desired.clone() };
    let steps = settle(&mut control, &without, &cluster);
    assert_eq!(steps, [Step::DeleteBackup { name: "b1".into(), sink: "manual".into() }]);
    assert!(control.backups.is_empty());
}

#[test]
fn a_try_that_never_finished_is_deleted_when_no_longer_wanted() {
    let cluster = at(three(), NOW_MS);
    let desired = DesiredState { backups: vec![backup("b1", "manual")], ..want(1, 3) };
    let t = turn(&ControlState::default(), Some(&desired), &cluster.0);
    assert!(matches!(t.step, Some(Step::TakeBackup { .. })));
    // The leader died mid-step: the sink may hold part of b1. The entry is
    // then removed (the state went to ERROR_STATE and a new one came).
    let mut control = t.control;
    control.state = ReconcileState::ErrorState;
    let without = DesiredState { id: 2, backups: Vec::new(), ..desired };
    let steps = settle(&mut control, &without, &cluster);
    assert_eq!(steps, [Step::DeleteBackup { name: "b1".into(), sink: "manual".into() }]);
}

#[test]
fn a_schedule_takes_one_backup_per_slot_and_keeps_keep() {
    let schedule = cairn_control::desired::BackupSchedule {
        every_s: 6 * 3_600,
        keep: 2,
        sink: "nightly".into(),
    };
    let desired = DesiredState { backup_schedule: Some(schedule), ..want(1, 1) };
    let one = Cluster::default().member("host-1", "zone-a", 1).leader(1);
    let mut control = ControlState::default();
    let six_hours = 6 * 3_600_000;
    let mut taken = Vec::new();
    for slot in 0..4 {
        let now = NOW_MS + slot * six_hours;
        let steps = settle(&mut control, &desired, &at(Cluster(one.0.clone()), now));
        taken.push(steps);
        // Later in the same slot: nothing more.
        let later = at(Cluster(one.0.clone()), now + 3_600_000);
        assert_eq!(settle(&mut control, &desired, &later), []);
    }
    let first = Step::TakeBackup {
        name: "scheduled-20261206-180000".into(),
        sink: "nightly".into(),
        // A single replica: its leader takes it.
        host: "host-1".into(),
        slot_ms: Some(NOW_MS - 30_000),
    };
    assert_eq!(taken[0], [first]);
    assert_eq!(taken[1].len(), 1, "{:?}", taken[1]);
    // The third slot's backup makes three: the oldest goes.
    let delete_first =
        Step::DeleteBackup { name: "scheduled-20261206-180000".into(), sink: "nightly".into() };
    assert_eq!(taken[2].len(), 2, "{:?}", taken[2]);
    assert_eq!(taken[2][1], delete_first);
    let names: Vec<&str> = control.backups.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["scheduled-20261207-060000", "scheduled-20261207-120000"]);
}

#[test]
fn scheduled_names_are_their_slot_in_utc() {
    use cairn_control::planner::scheduled_name;
    assert_eq!(scheduled_name(0), "scheduled-19700101-000000");
    assert_eq!(scheduled_name(NOW_MS - 30_000), "scheduled-20261206-180000");
    assert_eq!(scheduled_name(951_782_400_000), "scheduled-20000229-000000");
}
