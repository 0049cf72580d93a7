//! The same checks against both stores: a SQLite file and a fresh PostgreSQL schema.

use super::*;
use pyti::proto::{Outcome, TaskStatus};

fn job(id: &str, project: &str) -> JobRow {
    JobRow {
        job_id: id.to_owned(),
        spec: JobSpec {
            project_name: project.to_owned(),
            project_version: "1.0".to_owned(),
            recipe_identifier: "recipe".to_owned(),
            platform_identifier: "linux-debian".to_owned(),
            platform_variants: vec!["python3.11".to_owned()],
        },
        resolved_version: String::new(),
        state: JobState::Submitted,
        attempt: 1,
        worker_id: String::new(),
        outcome: Outcome::Unspecified,
        submitted_at_ms: 1000,
        updated_at_ms: 1000,
        lease_deadline_ms: None,
        cancel_requested: false,
        lease_id: String::new(),
        submitted_by: format!("client:{project}"),
        history: Vec::new(),
    }
}

fn results(id: &str, attempt: u32) -> AttemptResults {
    AttemptResults {
        job_id: id.to_owned(),
        attempt,
        worker_id: "w1".to_owned(),
        outcome: Outcome::Passed,
        results_json: "{\"version\":1}".to_owned(),
        error: String::new(),
        tasks: vec![TaskRow {
            task: "install".to_owned(),
            status: TaskStatus::Passed,
            duration_s: 1.5,
            metrics_json: "{}".to_owned(),
            log_name: "install.log".to_owned(),
            summary: "installed".to_owned(),
        }],
        logs: vec![("install.log".to_owned(), b"pip says hi\n".to_vec())],
        stored_at_ms: 5000,
    }
}

async fn exercise(store: Arc<dyn Store>) {
    let prefix = uuid::Uuid::now_v7().to_string();
    let id = |n: u32| format!("{prefix}-{n:03}");
    for n in 0..5 {
        store
            .insert_job(
                &job(&id(n), if n % 2 == 0 { "even" } else { "odd" }),
                "submitted",
            )
            .await
            .unwrap();
    }
    let got = store.get_job(&id(0)).await.unwrap().unwrap();
    assert_eq!(got.spec.platform_variants, vec!["python3.11"]);
    assert_eq!(got.history.len(), 1);
    assert_eq!(got.submitted_by, "client:even", "who submitted it is kept");
    assert!(store.get_job("nope").await.unwrap().is_none());

    // Conditional transitions: the second identical one loses.
    let queued = Transition::of(&got, JobState::Queued, "queued", 1100);
    let after = store.transition(&queued).await.unwrap().unwrap();
    assert_eq!(after.state, JobState::Queued);
    assert!(store.transition(&queued).await.unwrap().is_none());
    let mut running = Transition::of(&after, JobState::Running, "started by w1", 1200);
    running.worker_id = "w1".to_owned();
    running.lease_deadline_ms = Some(2000);
    let mut stale = running.clone();
    stale.from_attempt = Some(7);
    assert!(store.transition(&stale).await.unwrap().is_none());
    store.transition(&running).await.unwrap().unwrap();
    assert!(store
        .renew_lease(&id(0), 1, "w2", 3000)
        .await
        .unwrap()
        .is_none());
    let renewed = store
        .renew_lease(&id(0), 1, "w1", 3000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.lease_deadline_ms, Some(3000));
    let lapsed: Vec<String> = store
        .lapsed_leases(3500)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert!(lapsed.contains(&id(0)));
    assert!(!store
        .lapsed_leases(2500)
        .await
        .unwrap()
        .iter()
        .any(|j| j.job_id == id(0)));

    // Results: stored once, a second copy is a duplicate, the job ends.
    let mut done = Transition::of(&renewed, JobState::Succeeded, "results stored", 5000);
    done.outcome = Outcome::Passed;
    done.lease_deadline_ms = None;
    match store
        .store_results(&results(&id(0), 1), &done)
        .await
        .unwrap()
    {
        StoreOutcome::Stored(job) => {
            assert_eq!(job.state, JobState::Succeeded);
            assert_eq!(job.outcome, Outcome::Passed);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .store_results(&results(&id(0), 1), &done)
            .await
            .unwrap(),
        StoreOutcome::Duplicate
    );
    assert_eq!(
        store
            .store_results(&results(&id(0), 2), &done)
            .await
            .unwrap(),
        StoreOutcome::Duplicate,
        "the job had ended"
    );
    assert_eq!(store.count_results(&id(0)).await.unwrap(), 1);
    let stored = store.get_results(&id(0)).await.unwrap().unwrap();
    assert_eq!(stored, results(&id(0), 1));
    let history = store.get_job(&id(0)).await.unwrap().unwrap().history;
    let states: Vec<JobState> = history.iter().map(|h| h.state).collect();
    assert_eq!(
        states,
        vec![
            JobState::Submitted,
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded
        ]
    );

    // Listing: filters and pages, newest first.
    let filter = JobFilter {
        project_name: "even".into(),
        limit: 2,
        ..Default::default()
    };
    let page = store.list_jobs(&filter).await.unwrap();
    assert_eq!(
        page.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>(),
        vec![id(4), id(2)]
    );
    let next = store
        .list_jobs(&JobFilter {
            before_job_id: Some(id(2)),
            ..filter.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>(),
        vec![id(0)]
    );
    let by_state = store
        .list_jobs(&JobFilter {
            states: vec![JobState::Succeeded],
            worker_id: "w1".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_state
            .iter()
            .map(|j| j.job_id.clone())
            .collect::<Vec<_>>(),
        vec![id(0)]
    );

    let worker = WorkerRow {
        worker_id: format!("{prefix}-w"),
        control_address: "http://127.0.0.1:1".into(),
        capacity: vec![1, 2, 3],
        registered_at_ms: 1,
        last_seen_ms: 1,
    };
    store.upsert_worker(&worker).await.unwrap();
    store
        .upsert_worker(&WorkerRow {
            capacity: vec![4],
            last_seen_ms: 9,
            registered_at_ms: 5,
            ..worker.clone()
        })
        .await
        .unwrap();
    let workers = store.workers().await.unwrap();
    let w = workers
        .iter()
        .find(|w| w.worker_id == worker.worker_id)
        .unwrap();
    assert_eq!(
        (w.capacity.clone(), w.registered_at_ms, w.last_seen_ms),
        (vec![4], 1, 9)
    );

    store.delete_worker(&worker.worker_id).await.unwrap();
    assert!(!store
        .workers()
        .await
        .unwrap()
        .iter()
        .any(|w| w.worker_id == worker.worker_id));

    let keyed = job(&format!("{prefix}-keyed"), "keyed");
    let key = format!("{prefix}-key");
    assert_eq!(
        store
            .insert_job_once(&keyed, "submitted", &key)
            .await
            .unwrap(),
        None
    );
    let retry = job(&format!("{prefix}-retry"), "keyed");
    assert_eq!(
        store
            .insert_job_once(&retry, "submitted", &key)
            .await
            .unwrap(),
        Some(keyed.job_id.clone()),
        "the same key answers the first job"
    );
    assert_eq!(
        store.get_job(&retry.job_id).await.unwrap(),
        None,
        "and adds none"
    );

    let token = TokenRow {
        token_id: format!("{prefix}-t"),
        name: format!("{prefix}-ci"),
        role: "submit".into(),
        secret_hash: "ab".repeat(32),
        created_at_ms: 1,
        expires_at_ms: Some(100),
        revoked_at_ms: None,
    };
    assert!(store.insert_token(&token).await.unwrap());
    let twin = TokenRow {
        token_id: format!("{prefix}-t2"),
        ..token.clone()
    };
    assert!(
        !store.insert_token(&twin).await.unwrap(),
        "names are unique"
    );
    assert_eq!(
        store.token(&token.token_id).await.unwrap(),
        Some(token.clone())
    );
    assert!(store.revoke_token(&token.name, 7).await.unwrap());
    assert!(
        !store.revoke_token(&token.name, 8).await.unwrap(),
        "revoked once"
    );
    let listed = store.tokens().await.unwrap();
    let t = listed.iter().find(|t| t.name == token.name).unwrap();
    assert_eq!(t.revoked_at_ms, Some(7));
    assert_eq!(store.token("nothing").await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_store_keeps_jobs_results_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/pyti.sqlite");
    let store = open(path.to_str().unwrap()).await.unwrap();
    exercise(store).await;
    // Reopening the file finds the tables and data.
    let again = open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(
        again
            .list_jobs(&JobFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        6,
        "the five jobs and the keyed one"
    );
}

#[tokio::test]
async fn postgres_store_keeps_jobs_results_and_workers() {
    let url = pyti_testkit::postgres::fresh_schema_url().await;
    exercise(open(&url).await.unwrap()).await;
}

/// The jobs table as the first release made it, with one job in it: no lease id, no
/// submitter.
fn first_release_jobs_table() -> (String, String) {
    let table = schema::SCHEMA.split(";").next().unwrap().replace(
        ",\n    lease_id TEXT NOT NULL DEFAULT '',\n    submitted_by TEXT NOT NULL DEFAULT ''",
        "",
    );
    assert!(
        !table.contains("submitted_by") && !table.contains("lease_id"),
        "{table}"
    );
    let row = "INSERT INTO jobs (job_id, project_name, project_version, recipe_identifier, \
        platform_identifier, platform_variants, resolved_version, state, attempt, worker_id, \
        outcome, submitted_at_ms, updated_at_ms, lease_deadline_ms, cancel_requested) \
        VALUES ('old', 'old', '1.0', 'recipe', 'linux-debian', '[]', '', 2, 1, '', 0, 1, 1, NULL, 0)";
    (table, row.to_owned())
}

/// A store made by the first release gains the added columns on open; its jobs keep
/// working, recorded as submitted by nobody (so only admins may cancel them).
async fn check_old_job(store: &dyn Store) {
    let old = store.get_job("old").await.unwrap().unwrap();
    assert_eq!((old.lease_id.as_str(), old.submitted_by.as_str()), ("", ""));
    assert_eq!(old.state, JobState::Queued);
}

#[tokio::test]
async fn sqlite_store_of_the_first_release_gains_the_new_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let (table, row) = first_release_jobs_table();
    sqlx::raw_sql(&table).execute(&pool).await.unwrap();
    sqlx::raw_sql(&row).execute(&pool).await.unwrap();
    pool.close().await;
    let store = open(path.to_str().unwrap()).await.unwrap();
    check_old_job(store.as_ref()).await;
    exercise(store).await;
    // Opening it again finds the columns there already.
    check_old_job(open(path.to_str().unwrap()).await.unwrap().as_ref()).await;
}

#[tokio::test]
async fn postgres_store_of_the_first_release_gains_the_new_columns() {
    let url = pyti_testkit::postgres::fresh_schema_url().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&url).unwrap();
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    let (table, row) = first_release_jobs_table();
    sqlx::raw_sql(&table).execute(&pool).await.unwrap();
    sqlx::raw_sql(&row).execute(&pool).await.unwrap();
    pool.close().await;
    let store = open(&url).await.unwrap();
    check_old_job(store.as_ref()).await;
    exercise(store).await;
    check_old_job(open(&url).await.unwrap().as_ref()).await;
}
