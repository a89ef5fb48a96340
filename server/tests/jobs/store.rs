//! The store's own guarantees, below HTTP, on both databases: a line is written once, in order, and
//! only by the job's owner while it runs; leases are held, renewed, lapse and are taken over;
//! retention never deletes a running job.

use std::time::Duration;

use keepalive_server::jobs::feed::Feed;
use keepalive_server::jobs::{JobId, JobSpec, JobState, Lease, Store};

use crate::Db;

fn spec(lines: u64) -> JobSpec {
    JobSpec {
        sleep: Duration::ZERO,
        heartbeat: None,
        lines,
    }
}

fn id(name: &str) -> JobId {
    name.parse().expect("a job id")
}

async fn open(db: &Db, lease: Duration) -> Store {
    let (store, _epoch) = Store::open(&db.backend(), Lease::new(lease), Feed::default())
        .await
        .expect("the store opens");
    store
}

async fn a_line_is_written_once_in_order_and_only_while_its_job_runs(db: Db) {
    let store = open(&db, Duration::from_secs(30)).await;
    let job = id("00000000000000a1");
    store.create(job.clone(), spec(3)).await.expect("created");
    let append = |number: u64| store.append(&job, number, format!("line {number}"));
    assert!(append(1).await.expect("append"), "the first line");
    assert!(!append(1).await.expect("append"), "line 1 written twice");
    assert!(
        !append(3).await.expect("append"),
        "line 3 written before line 2"
    );
    assert!(append(2).await.expect("append"), "the second line");
    assert!(store.cancel(&job).await.expect("cancel"));
    assert!(
        !append(3).await.expect("append"),
        "a line written after the cancel"
    );
    let lines = store.lines_after(&job, 0, 10).await.expect("lines");
    let numbers: Vec<u64> = lines.iter().map(|line| line.number).collect();
    assert_eq!(numbers, [1, 2]);
    let info = store.info(&job).await.expect("info").expect("the job");
    assert_eq!((info.state, info.lines_written), (JobState::Cancelled, 2));
    assert!(
        !store
            .finish(&job, JobState::Completed)
            .await
            .expect("finish"),
        "a cancelled job recorded as completed"
    );
}

async fn a_held_lease_is_not_taken_over_and_a_lapsed_one_is_counting_a_run(db: Db) {
    let store = open(&db, Duration::from_secs(2)).await;
    let job = id("00000000000000a2");
    store.create(job.clone(), spec(3)).await.expect("created");
    assert!(store.append(&job, 1, "one".into()).await.expect("append"));
    assert!(
        store.claim(10, Vec::new()).await.expect("claim").is_empty(),
        "a held job taken over"
    );
    tokio::time::sleep(Duration::from_millis(2400)).await;
    let claimed = store.claim(10, Vec::new()).await.expect("claim");
    assert_eq!(claimed.len(), 1, "the lapsed job is taken over");
    assert_eq!((claimed[0].lines_written, claimed[0].runs), (1, 2));
    assert!(
        store.claim(10, Vec::new()).await.expect("claim").is_empty(),
        "taken over twice"
    );
}

async fn a_job_handed_back_is_taken_over_at_once(db: Db) {
    let store = open(&db, Duration::from_secs(60)).await;
    let job = id("00000000000000a3");
    store.create(job.clone(), spec(3)).await.expect("created");
    assert_eq!(store.release().await.expect("release"), 1);
    let claimed = store.claim(10, Vec::new()).await.expect("claim");
    assert_eq!(claimed.len(), 1, "a job handed back was not taken over");
    assert_eq!(claimed[0].runs, 2);
}

async fn renewal_keeps_only_the_leases_still_held(db: Db) {
    let store = open(&db, Duration::from_secs(30)).await;
    let (kept, cancelled) = (id("00000000000000a4"), id("00000000000000a5"));
    store.create(kept.clone(), spec(3)).await.expect("created");
    store
        .create(cancelled.clone(), spec(3))
        .await
        .expect("created");
    store.cancel(&cancelled).await.expect("cancel");
    let held = store
        .renew(vec![kept.clone(), cancelled])
        .await
        .expect("renew");
    assert_eq!(held, [kept]);
}

async fn retention_deletes_the_oldest_finished_jobs_beyond_the_count_and_never_running_ones(
    db: Db,
) {
    let store = open(&db, Duration::from_secs(30)).await;
    let mut finished = Vec::new();
    for name in ["000000000000000a", "000000000000000b", "000000000000000c"] {
        let job = id(name);
        store.create(job.clone(), spec(1)).await.expect("created");
        assert!(store
            .finish(&job, JobState::Completed)
            .await
            .expect("finished"));
        // Distinct finishing times, in creation order.
        tokio::time::sleep(Duration::from_millis(5)).await;
        finished.push(job);
    }
    let running = id("000000000000000d");
    store
        .create(running.clone(), spec(1))
        .await
        .expect("created");

    // Three jobs at most: the running one counts, so one finished job must go, the oldest.
    let deleted = store
        .sweep(Duration::from_secs(3600), 3)
        .await
        .expect("swept");
    assert_eq!(deleted, 1);
    assert!(store.info(&finished[0]).await.expect("info").is_none());
    for kept in [&finished[1], &finished[2], &running] {
        assert!(store.info(kept).await.expect("info").is_some(), "{kept}");
    }

    // Past the age limit every finished job goes; the running one stays.
    let deleted = store.sweep(Duration::ZERO, 1000).await.expect("swept");
    assert_eq!(deleted, 2);
    assert!(store.info(&running).await.expect("info").is_some());
}

on_both_stores!(
    a_line_is_written_once_in_order_and_only_while_its_job_runs,
    a_held_lease_is_not_taken_over_and_a_lapsed_one_is_counting_a_run,
    a_job_handed_back_is_taken_over_at_once,
    renewal_keeps_only_the_leases_still_held,
    retention_deletes_the_oldest_finished_jobs_beyond_the_count_and_never_running_ones,
);
