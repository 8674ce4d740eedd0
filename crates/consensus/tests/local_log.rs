//! The single-node log: group commit gives every proposal its own index, in
//! order, durable before the answer; the proposer makes writes exactly-once
//! commands; the log stops when its last handle goes.

use cairn_consensus::{LocalLog, Proposer, Role};
use cairn_storage::{Command, Op, Outcome, StateMachine, Store};

fn start(dir: &std::path::Path) -> (cairn_consensus::LogThread, cairn_consensus::LogHandle) {
    let sm = StateMachine::open(Store::open(dir).unwrap()).unwrap();
    LocalLog::start(7, sm, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_proposals_get_distinct_contiguous_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (log, handle) = start(dir.path());
    let mut tasks = Vec::new();
    for task in 0..16 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut indexes = Vec::new();
            for i in 0..50 {
                let op = Op::KvPut { key: format!("{task}/{i}"), value: vec![] };
                let applied = handle.propose(Command::new(None, op)).await.unwrap();
                assert_eq!(applied.outcome, Outcome::KvWritten);
                indexes.push(applied.index);
            }
            // One proposer's writes are ordered as it issued them.
            assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
            indexes
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=800).collect::<Vec<u64>>());
    let status = handle.status().unwrap();
    assert_eq!((status.role, status.leader, status.applied_index), (Role::Leader, Some(7), 800));
    drop(handle);
    log.join();
    // Durable: a new state machine on the same directory is at 800.
    let sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
    assert_eq!(sm.applied_index(), 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proposer_writes_carry_session_ids_and_reuse_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (log, handle) = start(dir.path());
    let proposer = std::sync::Arc::new(Proposer::new(handle.clone()));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let proposer = proposer.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let op = Op::KvPut { key: format!("{task}/{i}"), value: vec![1] };
                proposer.write(op).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // 200 writes, plus one entry per session opened: at most one session per
    // concurrent writer, since sessions return to the pool.
    let applied = handle.status().unwrap().applied_index;
    assert!((201..=208).contains(&applied), "applied {applied}");
    drop((proposer, handle));
    log.join();
}

#[tokio::test]
async fn the_log_stops_when_its_last_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, handle) = start(dir.path());
    let stopped = log.stopped();
    handle.propose(Command::new(None, Op::Noop)).await.unwrap();
    let other = handle.clone();
    drop(handle);
    assert!(other.read_barrier().await.is_ok(), "one handle still keeps it running");
    drop(other);
    tokio::time::timeout(std::time::Duration::from_secs(30), stopped)
        .await
        .expect("the log thread exits");
    log.join();
}
