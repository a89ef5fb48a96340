//! Several origins on one PostgreSQL database, as behind a balancer: any of them serves any job,
//! live; a runner killed mid-job is taken over by another once its lease lapses, and one stopped
//! gracefully hands its jobs over at once; replicas starting together migrate the schema once; and
//! two owners can never write one line.

use std::time::Duration;

use hyper::{Method, StatusCode};
use keepalive_kit::ports;
use keepalive_kit::servers::start_origin as start_server;
use keepalive_server::jobs::feed::Feed;
use keepalive_server::jobs::{JobId, JobSpec, Jobs, Lease, Retention, Store};
use keepalive_server::JobMetrics;
use keepalive_server::ServerConfig;
use tokio::time::{sleep, timeout, Instant};

use crate::{ids, is_end, next_chunk, parse_events, Db, Http, Origin, TempDir, PATIENCE, SSE};

/// An in-process origin on `db` with `lease`, and a client for it.
async fn replica(db: &Db, lease: Duration) -> (Http, keepalive_kit::servers::Running) {
    let origin = start_server(ServerConfig {
        job_lease: lease,
        ..db.config()
    })
    .await;
    (Http::new(origin.addr), origin)
}

fn url(db: &Db) -> &str {
    match db {
        Db::Postgres { url, .. } => url,
        Db::Sqlite => unreachable!("these tests run on PostgreSQL only"),
    }
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn a_job_started_on_one_replica_is_read_live_from_another() {
    let db = Db::postgres();
    let (a, _a) = replica(&db, Duration::from_secs(5)).await;
    let (b, _b) = replica(&db, Duration::from_secs(5)).await;
    let job = a.start_job("lines=10&sleep=200ms").await;
    let id = job["id"].as_str().expect("id").to_owned();

    let response = b
        .send(Method::GET, &format!("/jobs/{id}/stream"), &[SSE])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["keepalive-epoch"],
        job["epoch"].as_str().expect("epoch"),
        "one database, one history"
    );
    let mut body = response.into_body();
    let mut got = Vec::new();
    let mut first_line_while_running = None;
    while let Some(chunk) = next_chunk(&mut body).await {
        got.extend_from_slice(&chunk);
        if first_line_while_running.is_none() && !parse_events(&got).is_empty() {
            let now = b.get(&format!("/jobs/{id}"), &[]).await.json();
            first_line_while_running = Some(now["state"] == "running");
        }
    }
    assert_eq!(
        first_line_while_running,
        Some(true),
        "B's first line came only after A's job ended: not live"
    );
    let events = parse_events(&got);
    assert_eq!(ids(&events), (1..=10).collect::<Vec<_>>());
    assert!(events.last().is_some_and(is_end), "no end event");
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn a_killed_runner_is_taken_over_and_a_reader_resuming_gets_every_line_once() {
    let db = Db::postgres();
    let temp = TempDir::new();
    let settings = [
        ("SERVER_DATABASE_URL", url(&db)),
        ("SERVER_JOB_LEASE", "1s"),
    ];
    let (addr_a, addr_b) = (
        ports::free().expect("a free port"),
        ports::free().expect("a free port"),
    );
    let mut a = Origin::spawn_with(addr_a, &settings, temp.0.join("a.log"));
    let (http_a, http_b) = (Http::new(addr_a), Http::new(addr_b));
    a.wait_healthy(&http_a).await;
    let mut b = Origin::spawn_with(addr_b, &settings, temp.0.join("b.log"));
    b.wait_healthy(&http_b).await;

    let job = http_a.start_job("lines=40&sleep=100ms").await;
    let id = job["id"].as_str().expect("id").to_owned();
    // A reader on B, cut (as a balancer would) after a while; A dies meanwhile.
    let response = http_b
        .send(Method::GET, &format!("/jobs/{id}/stream"), &[SSE])
        .await;
    let mut body = response.into_body();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        match timeout(until - Instant::now(), next_chunk(&mut body)).await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => panic!("the stream ended before the kill"),
            Err(_) => break,
        }
    }
    a.kill_9();
    let killed_at = Instant::now();
    drop(body);
    let mut seen = ids(&parse_events(&got));
    assert!(
        seen.len() >= 3,
        "B served only {} lines in 0.8 s",
        seen.len()
    );

    // Resuming by Last-Event-ID on B until the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ended = false;
    while !ended {
        assert!(Instant::now() < deadline, "the job never ended: {seen:?}");
        let last = seen.last().copied().unwrap_or(0).to_string();
        let reply = http_b
            .get(
                &format!("/jobs/{id}/stream"),
                &[SSE, ("last-event-id", &last)],
            )
            .await;
        if reply.status == StatusCode::NO_CONTENT {
            break;
        }
        let events = parse_events(&reply.body);
        ended = events.iter().any(is_end);
        seen.extend(ids(&events));
    }
    assert_eq!(
        seen,
        (1..=40).collect::<Vec<_>>(),
        "every line once, in order"
    );
    let finished = http_b.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(finished["state"], "completed", "{finished}");
    assert_eq!(finished["runs"], 2, "taken over once: {finished}");
    println!(
        "runner killed; B took the job over and finished it {:.1}s later",
        killed_at.elapsed().as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn a_replica_stopped_gracefully_hands_its_jobs_over_at_once() {
    let db = Db::postgres();
    // A lease far longer than the test: only a handback can explain a quick take-over.
    let lease = Duration::from_secs(120);
    let (a, a_origin) = replica(&db, lease).await;
    let (b, _b) = replica(&db, lease).await;
    let job = a.start_job("lines=1000&sleep=50ms").await;
    let id = job["id"].as_str().expect("id").to_owned();
    sleep(Duration::from_millis(300)).await;
    timeout(PATIENCE, a_origin.stopped())
        .await
        .expect("A stops")
        .expect("A served");
    let stopped = b.get(&format!("/jobs/{id}"), &[]).await.json();
    let written = stopped["lines_written"].as_u64().expect("lines_written");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = b.get(&format!("/jobs/{id}"), &[]).await.json();
        if now["runs"] == 2 && now["lines_written"].as_u64() > Some(written) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not take the job over within {PATIENCE:?} of A's stop: {now}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let cancelled = b.fetch(Method::DELETE, &format!("/jobs/{id}"), &[]).await;
    assert_eq!(cancelled.json()["state"], "cancelled");
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn replicas_starting_together_make_the_schema_once() {
    let db = Db::postgres();
    let retention = Retention {
        max_age: Duration::from_secs(60),
        max_jobs: 10,
    };
    let opening = (0..6).map(|_| {
        let backend = db.backend();
        tokio::spawn(async move {
            Jobs::open(
                &backend,
                Duration::from_secs(5),
                retention,
                10,
                JobMetrics::default(),
            )
            .await
        })
    });
    let mut epochs = Vec::new();
    for opened in futures_util::future::join_all(opening).await {
        let jobs = opened
            .expect("no panic")
            .expect("every replica opens the store");
        epochs.push(jobs.epoch().to_owned());
    }
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "one database, one epoch: {epochs:?}");
    let client = connect(&db).await;
    let applied: i64 = client
        .query_one("SELECT count(*) FROM keepalive_migrations", &[])
        .await
        .expect("the migrations table")
        .get(0);
    assert_eq!(applied, 1, "each migration applied once");
}

/// The body up to its end or its cut (a stream whose log could not be read is cut, for the client
/// to resume).
async fn until_cut(response: hyper::Response<hyper::body::Incoming>) -> Vec<u8> {
    use http_body_util::BodyExt;
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Ok(Some(Ok(frame))) = timeout(PATIENCE, body.frame()).await {
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    got
}

/// A client of the test's database, beside the origins'.
async fn connect(db: &Db) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url(db), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn a_line_committed_on_one_replica_wakes_the_readers_of_another_at_once() {
    let db = Db::postgres();
    let backend = db.backend();
    let lease = Lease::new(Duration::from_secs(30));
    let (writer, _) = Store::open(&backend, lease.clone(), Feed::default())
        .await
        .expect("the store opens");
    let heard = Feed::default();
    let (_reader, _) = Store::open(&backend, Lease::new(Duration::from_secs(30)), heard.clone())
        .await
        .expect("the store opens");
    let job: JobId = "00000000000000c1".parse().expect("a job id");
    let spec = JobSpec {
        sleep: Duration::ZERO,
        heartbeat: None,
        lines: 3,
    };
    writer.create(job.clone(), spec).await.expect("created");
    let mut changes = heard.subscribe(&job);
    let committed = Instant::now();
    assert!(writer.append(&job, 1, "one".into()).await.expect("append"));
    // Well within the readers' poll: only the notification can have woken it.
    timeout(Duration::from_millis(500), changes.changed())
        .await
        .expect("woken by the other replica's commit within 500 ms")
        .expect("the feed is open");
    println!("woken {:?} after the commit", committed.elapsed());
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn a_lost_database_connection_costs_no_line_and_no_job() {
    let db = Db::postgres();
    let (origin, _origin) = replica(&db, Duration::from_secs(1)).await;
    let job = origin.start_job("lines=30&sleep=100ms").await;
    let id = job["id"].as_str().expect("id").to_owned();
    sleep(Duration::from_millis(800)).await;
    // What a database restart or failover does to a session: the server ends it.
    let admin = connect(&db).await;
    let ended: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS ended",
            &[],
        )
        .await
        .expect("terminate the origin's session")
        .get(0);
    assert!(ended >= 1, "no session of the origin's to end");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<u64> = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the job never ended: {seen:?}");
        let last = seen.last().copied().unwrap_or(0).to_string();
        let response = origin
            .send(
                Method::GET,
                &format!("/jobs/{id}/stream"),
                &[SSE, ("last-event-id", &last)],
            )
            .await;
        match response.status() {
            StatusCode::NO_CONTENT => break,
            StatusCode::OK => {}
            // The store was unreachable for a moment: as a client would, ask again.
            _ => {
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let events = parse_events(&until_cut(response).await);
        seen.extend(ids(&events));
        if events.iter().any(is_end) {
            break;
        }
    }
    assert_eq!(
        seen,
        (1..=30).collect::<Vec<_>>(),
        "every line once, in order"
    );
    let finished = origin.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(finished["state"], "completed", "{finished}");
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn a_job_cancelled_through_one_replica_stops_on_the_one_running_it() {
    let db = Db::postgres();
    let (a, _a) = replica(&db, Duration::from_secs(5)).await;
    let (b, _b) = replica(&db, Duration::from_secs(5)).await;
    let job = a.start_job("lines=1000&sleep=50ms").await;
    let id = job["id"].as_str().expect("id").to_owned();
    sleep(Duration::from_millis(300)).await;
    let reading = {
        let b = b.clone();
        let id = id.clone();
        tokio::spawn(async move { b.get(&format!("/jobs/{id}/stream"), &[SSE]).await })
    };
    sleep(Duration::from_millis(200)).await;
    let cancelled = b
        .fetch(Method::DELETE, &format!("/jobs/{id}"), &[])
        .await
        .json();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let at_cancel = cancelled["lines_written"].as_u64().expect("lines_written");
    let events = parse_events(
        &timeout(PATIENCE, reading)
            .await
            .expect("B's reader ends")
            .expect("no panic")
            .body,
    );
    assert_eq!(
        events.last().map(|event| event.data.as_str()),
        Some(format!(r#"{{"state":"cancelled","lines":{at_cancel}}}"#).as_str()),
        "B's reader ends with the cancel"
    );
    sleep(Duration::from_millis(300)).await;
    let later = a.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(
        later["lines_written"].as_u64(),
        Some(at_cancel),
        "A wrote on after the cancel: {later}"
    );
}

#[tokio::test]
#[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
async fn two_owners_never_write_the_same_line() {
    let db = Db::postgres();
    let backend = db.backend();
    let open = |lease| {
        let backend = backend.clone();
        async move {
            Store::open(&backend, Lease::new(lease), Feed::default())
                .await
                .expect("the store opens")
                .0
        }
    };
    let first = open(Duration::from_secs(2)).await;
    let second = open(Duration::from_secs(30)).await;
    let job: JobId = "00000000000000b1".parse().expect("a job id");
    let spec = JobSpec {
        sleep: Duration::ZERO,
        heartbeat: None,
        lines: 5,
    };
    first.create(job.clone(), spec).await.expect("created");
    assert!(first.append(&job, 1, "one".into()).await.expect("append"));
    sleep(Duration::from_millis(2400)).await;
    assert_eq!(
        second.claim(10, Vec::new()).await.expect("claim").len(),
        1,
        "the lapsed job taken over"
    );
    // The old owner, unaware, tries the next line: refused; the new owner writes it.
    assert!(!first
        .append(&job, 2, "two, stale".into())
        .await
        .expect("append"));
    assert!(second.append(&job, 2, "two".into()).await.expect("append"));

    // Even past the fences, the database itself refuses a second line 2.
    let (client, connection) = tokio_postgres::connect(url(&db), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let twice = client
        .execute(
            "INSERT INTO keepalive_lines (job_id, number, end_offset, text) VALUES ($1, 2, 0, 'x')",
            &[&job.as_str()],
        )
        .await
        .expect_err("a second line 2");
    assert_eq!(
        twice.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{twice}"
    );
    let lines = second.lines_after(&job, 0, 10).await.expect("lines");
    assert_eq!(
        lines
            .iter()
            .map(|line| line.text.as_str())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );
}
