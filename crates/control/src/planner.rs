//! The planner: the one step to take next, as a pure function of the accepted
//! desired state, the observed cluster and the control state.
//!
//! It is level-triggered: it looks at the cluster as it is, not at what the
//! last step meant to do, so a step that failed, ran twice, or ran under a
//! leader that died is simply looked at again. What the cluster alone cannot
//! show (which host was meant to hold which new node, which hosts are being
//! retired) lives in the control state's host plans, updated here before the
//! step that needs it runs.
//!
//! Rules, in the order they are tried:
//! 1. `running: false` stops every node, followers first, the leader last.
//! 2. A cluster with no member yet starts node 1 on a host (bootstrap), from
//!    the backup `restore_from` names when it names one; the cluster grows
//!    from there by rule 8, new members catching up from node 1.
//! 3. Members' nodes stopped earlier are started again.
//! 4. Without a quorum of members serving nothing can change: wait.
//! 5. A member whose host failed is removed (that never lowers the number of
//!    members that serve); its replacement comes from rule 8.
//! 6. Hosts being retired are deleted once every member has applied through
//!    the configuration's first index (a removed node may be the only source
//!    of the previous configuration's tail until then).
//! 7. One change at a time: a node joining, or a member not serving, is
//!    waited for.
//! 8. Membership towards `replicas`, spread evenly over `zones`: add in the
//!    zone that lacks the most, remove from the zone that holds the most
//!    (never the leader when another will do). Adding first and removing after
//!    keeps the quorum; removing first is taken when a temporary host is not
//!    allowed and the guard holds.
//! 9. Rolling upgrade (or downgrade): members whose node runs another
//!    version than `version` are moved to it one at a time, followers first,
//!    the leader last. Then the rolling restart: members behind
//!    `restart_generation`, one at a time, the leader last. The executor
//!    waits for each node to serve and catch up before the step ends.
//! 10. Spare hosts are deleted.
//! 11. Backups, once the cluster is otherwise as desired: on-demand entries
//!     not taken yet are taken and taken ones no longer listed are deleted;
//!     a scheduled backup is taken when its time slot (`every`, aligned to
//!     the Unix epoch, so `6h` is 00:00, 06:00… UTC) comes, and the oldest
//!     beyond `keep` are deleted. A backup is taken on a follower that
//!     serves, the leader only when none does.
//!
//! Every step that takes a member down or out carries a [`Guard`] that holds
//! in the observation it was planned from; a 1-replica cluster's restart is
//! the one step that may make it unavailable, since it has no other node.
//!
//! Not here: running steps (the executor), accepting desired states and
//! counting attempts (`reconcile`), fetching and checking versions (the
//! agents).
//!
//! [`Guard`]: crate::model::Guard

use std::collections::BTreeMap;

use cairn_util::cluster_version::{supported_by, ClusterVersion};

use crate::desired::DesiredState;
use crate::model::{
    majority, BackupRecord, ControlState, HostCondition, HostObs, HostPlan, HostRole, NodeObs,
    NodeProcess, Observed, Step, NODE_ID_MAX,
};

/// What the planner decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// The cluster is as desired.
    Done,
    /// Take this step.
    Step(Step),
    /// Take this step, after which the cluster is as desired but cannot say
    /// so (it stops every node): the control state records the arrival first.
    Final(Step),
    /// Nothing to do but wait (for a node to join, restart, or serve).
    Wait(String),
    /// The desired state cannot be reached as things are; says why.
    Blocked(String),
}

/// The next step towards `desired`, and the control state with its host plans
/// brought up to date (to be stored before the step runs).
pub fn plan(
    desired: &DesiredState,
    observed: &Observed,
    control: &ControlState,
) -> (ControlState, Next) {
    let mut control = control.clone();
    let next = Planner { desired, observed, control: &mut control }.next();
    // The planner's promise: a step that takes a member down or out is
    // proposed only where its quorum guard holds in the observation.
    if let Next::Step(step) | Next::Final(step) = &next {
        if let Some(guard) = step.guard(observed) {
            assert!(guard.holds(observed), "planned {step:?}, which costs the quorum: {guard:?}");
        }
    }
    (control, next)
}

struct Planner<'a> {
    desired: &'a DesiredState,
    observed: &'a Observed,
    control: &'a mut ControlState,
}

impl Planner<'_> {
    fn next(&mut self) -> Next {
        if !self.observed.members.is_empty() {
            self.control.has_run = true;
        }
        self.sync_host_plans();
        if !self.desired.running {
            return self.stop_all();
        }
        if self.observed.members.is_empty() {
            return self.bootstrap();
        }
        if let Some(next) = self.start_stopped() {
            return next;
        }
        let n = self.observed.members.len();
        let up = self.observed.up_count();
        if up < majority(n) {
            return Next::Wait(format!("no quorum: {up} of {n} members serve"));
        }
        if let Some(next) = self.remove_lost() {
            return next;
        }
        if let Some(next) = self.delete_retiring() {
            return next;
        }
        if let Some(next) = self.wait_for_changes() {
            return next;
        }
        if let Some(next) = self.change_membership() {
            return next;
        }
        if let Some(next) = self.rolling_upgrade() {
            return next;
        }
        if let Some(next) = self.rolling_restart() {
            return next;
        }
        if let Some(next) = self.delete_spares() {
            return next;
        }
        if let Some(next) = self.backups() {
            return next;
        }
        Next::Done
    }

    /// Backups, once the cluster is otherwise as desired: on-demand entries
    /// not taken yet are taken, and backups no longer wanted are deleted
    /// (taken ones no longer listed, and tries that never finished); a
    /// scheduled backup whose time slot came is taken, and the oldest beyond
    /// `keep` are deleted.
    fn backups(&mut self) -> Option<Next> {
        let desired = self.desired;
        let schedule = desired.backup_schedule.as_ref();
        let every_ms = schedule.map(|s| s.every_s.saturating_mul(1_000).max(1));
        let slot = every_ms.map(|every| self.observed.now_ms / every * every);
        let wanted = |b: &BackupRecord| match b.slot_ms {
            None => desired.backups.iter().any(|w| w.name == b.name && w.sink == b.sink),
            // A scheduled backup that was taken stays until pruned; one
            // that was not is wanted only while its slot is the current one.
            Some(at) => b.taken || (Some(at) == slot && schedule.is_some_and(|s| s.sink == b.sink)),
        };
        if let Some(gone) = self.control.backups.iter().find(|b| !wanted(b)) {
            return Some(Next::Step(Step::DeleteBackup {
                name: gone.name.clone(),
                sink: gone.sink.clone(),
            }));
        }
        for entry in &desired.backups {
            let record =
                self.control.backups.iter().find(|b| b.name == entry.name && b.sink == entry.sink);
            if !record.is_some_and(|b| b.taken) {
                return Some(self.take_backup(entry.name.clone(), entry.sink.clone(), None));
            }
        }
        let (schedule, slot) = (schedule?, slot?);
        let mut scheduled: Vec<&BackupRecord> = self
            .control
            .backups
            .iter()
            .filter(|b| b.taken && b.slot_ms.is_some() && b.sink == schedule.sink)
            .collect();
        scheduled.sort_by_key(|b| b.slot_ms);
        if scheduled.len() > schedule.keep as usize {
            let oldest = scheduled[0];
            return Some(Next::Step(Step::DeleteBackup {
                name: oldest.name.clone(),
                sink: oldest.sink.clone(),
            }));
        }
        let latest = scheduled.last().and_then(|b| b.slot_ms);
        if self.observed.now_ms > 0 && latest.is_none_or(|latest| latest < slot) {
            return Some(self.take_backup(scheduled_name(slot), schedule.sink.clone(), Some(slot)));
        }
        None
    }

    /// Takes backup `name` on the first follower that serves, or on the
    /// leader when no follower does (a single replica); records it first,
    /// as not taken yet.
    fn take_backup(&mut self, name: String, sink: String, slot_ms: Option<u64>) -> Next {
        let leader = self.observed.leader;
        let mut serving: Vec<u64> =
            self.observed.members.iter().copied().filter(|&id| self.observed.is_up(id)).collect();
        serving.sort_by_key(|&id| (Some(id) == leader, id));
        let Some(host) = serving.first().and_then(|&id| self.observed.host_of(id)) else {
            return Next::Wait(format!("no member serves to take backup {sink}/{name} on"));
        };
        let host = host.name.clone();
        if !self.control.backups.iter().any(|b| b.name == name && b.sink == sink) {
            self.control.backups.push(BackupRecord {
                name: name.clone(),
                sink: sink.clone(),
                slot_ms,
                taken: false,
            });
        }
        Next::Step(Step::TakeBackup { name, sink, host, slot_ms })
    }

    /// Brings the host plans in line with what is observed: hosts it does not
    /// know are adopted, joined nodes become serving, removed ones retiring,
    /// and deleted retiring hosts are forgotten.
    fn sync_host_plans(&mut self) {
        let members = &self.observed.members;
        for (name, host) in &self.observed.hosts {
            let node_id = host.node.as_ref().and_then(|n| n.node_id);
            let plan = self.control.host_plans.entry(name.clone()).or_insert_with(|| HostPlan {
                zone: host.zone.clone(),
                node_id,
                role: match node_id {
                    None => HostRole::Provisioning,
                    Some(id) if members.contains(&id) => HostRole::Serving,
                    // A node the control plane never placed and that is no
                    // member: nobody will wait for it.
                    Some(_) => HostRole::Retiring,
                },
            });
            if plan.node_id.is_none() {
                plan.node_id = node_id;
            }
            match (plan.role, plan.node_id) {
                (HostRole::Provisioning, Some(id)) if members.contains(&id) => {
                    plan.role = HostRole::Serving;
                }
                (HostRole::Serving, Some(id)) if !members.is_empty() && !members.contains(&id) => {
                    plan.role = HostRole::Retiring;
                }
                // Marked from a stale look, or its removal failed: it serves.
                (HostRole::Retiring, Some(id)) if members.contains(&id) => {
                    plan.role = HostRole::Serving;
                }
                (HostRole::Provisioning, _) if host.state == HostCondition::Failed => {
                    plan.role = HostRole::Retiring;
                }
                _ => {}
            }
        }
        let observed = &self.observed.hosts;
        self.control
            .host_plans
            .retain(|name, plan| observed.contains_key(name) || plan.role != HostRole::Retiring);
        for number in self.control.host_plans.keys().filter_map(|n| host_number(n)) {
            self.control.next_host_number = self.control.next_host_number.max(number + 1);
        }
    }

    fn stop_all(&mut self) -> Next {
        let leader = self.observed.leader;
        let mut running: Vec<(&String, u64)> = Vec::new();
        for (name, host) in &self.observed.hosts {
            let Some(node) = &host.node else {
                if host.state == HostCondition::Unreachable {
                    return Next::Wait(format!("{name}'s agent does not answer"));
                }
                continue;
            };
            if let (Some(id), NodeProcess::Running | NodeProcess::Starting) =
                (node.node_id, node.process)
            {
                running.push((name, id));
            }
        }
        // Followers first: the leader keeps the cluster answering to the end.
        // One step stops them all: once a majority is stopped, the control
        // state can no longer be written, so it is written once, before.
        running.sort_by_key(|&(_, id)| (Some(id) == leader, id));
        if running.is_empty() {
            return Next::Done;
        }
        let hosts = running.into_iter().map(|(host, _)| host.clone()).collect();
        Next::Final(Step::StopNodes { hosts })
    }

    fn bootstrap(&mut self) -> Next {
        if self.control.has_run {
            return Next::Wait("the membership is not observed".into());
        }
        for (name, host) in &self.observed.hosts {
            if let Some(node) = host.node.as_ref().filter(|n| n.node_id.is_some()) {
                if host.state == HostCondition::Running && node.process != NodeProcess::Absent {
                    return Next::Wait(format!("the first node starting on {name}"));
                }
            }
        }
        let usable = self.observed.hosts.iter().find(|(_, h)| {
            h.state == HostCondition::Running
                && h.node.as_ref().is_some_and(|n| n.process == NodeProcess::Absent)
        });
        if let Some((name, _)) = usable {
            let name = name.clone();
            self.assign(&name, 1);
            if let Some(from) = &self.desired.restore_from {
                return Next::Step(Step::RestoreNode {
                    host: name,
                    node_id: 1,
                    from: from.clone(),
                });
            }
            return Next::Step(Step::StartNode { host: name, node_id: 1, join: false });
        }
        if self.observed.hosts.values().any(|h| h.state == HostCondition::Unreachable) {
            return Next::Wait("a host's agent does not answer yet".into());
        }
        let zone = self.desired.zones.first().cloned().unwrap_or_default();
        Next::Step(self.create_host(zone))
    }

    fn start_stopped(&mut self) -> Option<Next> {
        for (name, host) in &self.observed.hosts {
            let Some(node) = &host.node else { continue };
            let Some(id) = node.node_id else { continue };
            if host.state == HostCondition::Running
                && node.process == NodeProcess::Stopped
                && self.observed.members.contains(&id)
            {
                return Some(Next::Step(Step::StartNode {
                    host: name.clone(),
                    node_id: id,
                    join: false,
                }));
            }
        }
        None
    }

    fn remove_lost(&mut self) -> Option<Next> {
        let lost = self.observed.members.iter().copied().find(|&id| self.observed.is_lost(id))?;
        if self.observed.members.len() == 1 {
            return Some(Next::Blocked(format!(
                "node {lost}, the only replica, lost its host: its data is gone"
            )));
        }
        Some(self.remove(lost))
    }

    /// Removes member `id`, marking its host for deletion.
    fn remove(&mut self, id: u64) -> Next {
        let host = self.observed.host_of(id).map(|h| h.name.clone());
        let step = Step::RemoveMember { node_id: id, host };
        if let Some(guard) = step.guard(self.observed) {
            if !guard.holds(self.observed) {
                return Next::Wait(format!("removing node {id} now would cost the quorum"));
            }
        }
        for plan in self.control.host_plans.values_mut() {
            if plan.node_id == Some(id) {
                plan.role = HostRole::Retiring;
            }
        }
        Next::Step(step)
    }

    fn delete_retiring(&mut self) -> Option<Next> {
        for (name, plan) in &self.control.host_plans {
            if plan.role != HostRole::Retiring {
                continue;
            }
            let Some(host) = self.observed.hosts.get(name) else { continue };
            let holds_member = plan.node_id.is_some_and(|id| self.observed.members.contains(&id));
            if holds_member && host.state != HostCondition::Failed {
                continue;
            }
            if host.state == HostCondition::Failed || self.observed.members_caught_up {
                return Some(Next::Step(Step::DeleteHost { host: name.clone() }));
            }
        }
        None
    }

    fn wait_for_changes(&self) -> Option<Next> {
        for (name, plan) in &self.control.host_plans {
            let (HostRole::Provisioning, Some(id)) = (plan.role, plan.node_id) else { continue };
            let started = self
                .observed
                .hosts
                .get(name)
                .and_then(|h| h.node.as_ref())
                .is_some_and(|n| n.node_id == Some(id) && n.process != NodeProcess::Absent);
            if started {
                return Some(Next::Wait(format!("node {id} joining on {name}")));
            }
        }
        for &id in &self.observed.members {
            if !self.observed.is_up(id) {
                return Some(Next::Wait(format!("node {id} is not serving")));
            }
        }
        None
    }

    fn change_membership(&mut self) -> Option<Next> {
        let n = self.observed.members.len();
        let replicas = usize::try_from(self.desired.replicas).unwrap_or(usize::MAX);
        let spread = self.spread();
        let balanced = spread.values().all(|&(have, want)| have == want);
        let add_first = self.desired.allow_temporary_hosts || n == 1;
        if n < replicas || (n == replicas && !balanced && add_first) {
            return Some(self.add(&spread));
        }
        if n > replicas || !balanced {
            let id = self.pick_removal(&spread)?;
            return Some(self.remove(id));
        }
        None
    }

    /// Per zone (the desired ones and any a member is in): members there,
    /// and members wanted there.
    fn spread(&self) -> BTreeMap<String, (usize, usize)> {
        let zones = &self.desired.zones;
        let replicas = usize::try_from(self.desired.replicas).unwrap_or(usize::MAX);
        let mut spread: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (i, zone) in zones.iter().enumerate() {
            // The first `replicas % zones` zones take one more.
            let want = replicas / zones.len() + usize::from(i < replicas % zones.len());
            spread.insert(zone.clone(), (0, want));
        }
        for &id in &self.observed.members {
            if let Some(host) = self.observed.host_of(id) {
                spread.entry(host.zone.clone()).or_insert((0, 0)).0 += 1;
            }
        }
        spread
    }

    fn add(&mut self, spread: &BTreeMap<String, (usize, usize)>) -> Next {
        // The zone that lacks the most; ties go to the earliest in `zones`.
        let zone = self
            .desired
            .zones
            .iter()
            .max_by_key(|z| {
                let (have, want) = spread.get(*z).copied().unwrap_or((0, 0));
                (want as i64 - have as i64, std::cmp::Reverse(self.zone_rank(z)))
            })
            .cloned()
            .unwrap_or_default();
        // A host already meant for a new node in that zone: use it.
        let spare = self
            .control
            .host_plans
            .iter()
            .find(|(_, p)| p.role == HostRole::Provisioning && p.zone == zone)
            .map(|(name, p)| (name.clone(), p.node_id));
        if let Some((name, node_id)) = spare {
            return match self.observed.hosts.get(&name) {
                None => Next::Step(Step::CreateHost { host: name, zone }),
                Some(h) if h.state == HostCondition::Running && h.node.is_some() => {
                    let id = node_id.unwrap_or_else(|| self.free_node_id());
                    self.assign(&name, id);
                    Next::Step(Step::StartNode { host: name, node_id: id, join: true })
                }
                Some(_) => Next::Wait(format!("{name} is not ready")),
            };
        }
        Next::Step(self.create_host(zone))
    }

    fn zone_rank(&self, zone: &str) -> usize {
        self.desired.zones.iter().position(|z| z == zone).unwrap_or(usize::MAX)
    }

    /// The member to remove: from the zone with the most over what it
    /// should hold, not the leader when another will do, the highest id.
    fn pick_removal(&self, spread: &BTreeMap<String, (usize, usize)>) -> Option<u64> {
        self.observed.members.iter().copied().max_by_key(|&id| {
            let zone = self.observed.host_of(id).map(|h| h.zone.as_str()).unwrap_or("");
            let (have, want) = spread.get(zone).copied().unwrap_or((0, 0));
            (have as i64 - want as i64, Some(id) != self.observed.leader, id)
        })
    }

    /// Members whose node runs another version than `version` are moved to
    /// it one at a time, followers first and the leader last, each only
    /// while the others serve (rule 7 waited for the last one to serve
    /// again; the executor waits for it to catch up).
    fn rolling_upgrade(&self) -> Option<Next> {
        let version = &self.desired.version;
        if let Some(blocked) = self.cannot_run_cluster(version) {
            return Some(blocked);
        }
        self.one_at_a_time(
            |node| node.version != *version,
            |host| Step::RunVersion {
                host: host.to_string(),
                version: version.clone(),
                artifacts: self.desired.artifacts.clone(),
            },
            |host| format!("moving {host} to {version} now would cost the quorum"),
        )
    }

    /// Refuses a release that cannot run the cluster at its cluster version,
    /// when some member would move to it: a downgrade below a finalized
    /// upgrade, or a jump past the release after the cluster's.
    fn cannot_run_cluster(&self, version: &str) -> Option<Next> {
        let moving = self.observed.members.iter().any(|&id| {
            let node = self.observed.host_of(id).and_then(|host| host.node.as_ref());
            node.is_some_and(|node| node.version != version)
        });
        let cluster = self.observed.cluster_version.as_deref()?;
        let cluster = ClusterVersion::parse(cluster).ok()?;
        let supported = supported_by(version).ok()?;
        if !moving || supported.contains(cluster) {
            return None;
        }
        Some(Next::Blocked(format!(
            "version {version} runs cluster versions {supported}, and the cluster runs at \
             cluster version {cluster}: a finalized upgrade cannot be downgraded, and an upgrade \
             goes one minor release at a time"
        )))
    }

    fn rolling_restart(&self) -> Option<Next> {
        let generation = self.desired.restart_generation;
        self.one_at_a_time(
            |node| node.restart_generation < generation,
            |host| Step::RestartNode { host: host.to_string(), generation },
            |_| "a restart now would cost the quorum".into(),
        )
    }

    /// The step that takes down the first member whose node is `behind`,
    /// followers first and the leader last, while its quorum guard holds
    /// (a single replica has none: its restart is allowed to interrupt).
    fn one_at_a_time(
        &self,
        behind: impl Fn(&NodeObs) -> bool,
        step: impl Fn(&str) -> Step,
        costs_quorum: impl Fn(&str) -> String,
    ) -> Option<Next> {
        let mut todo: Vec<(u64, &String)> = Vec::new();
        for &id in &self.observed.members {
            let Some(host) = self.observed.host_of(id) else { continue };
            if host.node.as_ref().is_some_and(&behind) {
                todo.push((id, &host.name));
            }
        }
        let leader = self.observed.leader;
        todo.sort_by_key(|&(id, _)| (Some(id) == leader, id));
        let (_, host) = todo.first()?;
        let step = step(host);
        if self.observed.members.len() > 1 {
            let guard = step.guard(self.observed)?;
            if !guard.holds(self.observed) {
                return Some(Next::Wait(costs_quorum(host)));
            }
        }
        Some(Next::Step(step))
    }

    fn delete_spares(&mut self) -> Option<Next> {
        // Provisioning hosts left over (their node never started): no change
        // waits for them now.
        let spare = self
            .control
            .host_plans
            .iter()
            .find(|(_, p)| p.role == HostRole::Provisioning)
            .map(|(name, _)| name.clone())?;
        if let Some(plan) = self.control.host_plans.get_mut(&spare) {
            plan.role = HostRole::Retiring;
        }
        if self.observed.hosts.contains_key(&spare) {
            Some(Next::Step(Step::DeleteHost { host: spare }))
        } else {
            self.control.host_plans.remove(&spare);
            None
        }
    }

    /// Names a new host and records it before it is created.
    fn create_host(&mut self, zone: String) -> Step {
        let host = format!("host-{}", self.control.next_host_number);
        self.control.next_host_number += 1;
        self.control.host_plans.insert(
            host.clone(),
            HostPlan { zone: zone.clone(), node_id: None, role: HostRole::Provisioning },
        );
        Step::CreateHost { host, zone }
    }

    fn assign(&mut self, host: &str, id: u64) {
        if let Some(plan) = self.control.host_plans.get_mut(host) {
            plan.node_id = Some(id);
        }
    }

    /// The lowest node id no member, host or plan holds.
    fn free_node_id(&self) -> u64 {
        let held = |id: u64| {
            self.observed.members.contains(&id)
                || self.control.host_plans.values().any(|p| p.node_id == Some(id))
                || self
                    .observed
                    .hosts
                    .values()
                    .any(|h: &HostObs| h.node.as_ref().and_then(|n| n.node_id) == Some(id))
        };
        (1..=NODE_ID_MAX).find(|&id| !held(id)).unwrap_or(NODE_ID_MAX)
    }
}

/// `N` of a host named `host-N`.
fn host_number(name: &str) -> Option<u64> {
    name.strip_prefix("host-")?.parse().ok()
}

/// A scheduled backup's name: [`SCHEDULED_PREFIX`] and its time slot in UTC,
/// `scheduled-20261206-180000`.
///
/// [`SCHEDULED_PREFIX`]: crate::desired::SCHEDULED_PREFIX
pub fn scheduled_name(slot_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(slot_ms);
    // 2026-12-06T18:00:00Z
    let time = humantime::format_rfc3339_seconds(at).to_string();
    let digits: String = time.chars().filter(char::is_ascii_digit).collect();
    let (date, clock) = digits.split_at(digits.len().min(8));
    format!("{}{date}-{clock}", crate::desired::SCHEDULED_PREFIX)
}
