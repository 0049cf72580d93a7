//! The two SQL stores. The statements are shared (one macro expands them for SQLite and
//! for PostgreSQL); each transaction starts with a write so SQLite in WAL mode never has
//! to upgrade a read lock (which fails at once instead of waiting for `busy_timeout`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use pyti::model::JobSpec;
use pyti::proto::JobState;
use sqlx::Row;

use super::{
    AttemptResults, HistoryRow, JobFilter, JobRow, Millis, Store, StoreError, StoreOutcome,
    StoreResult, TaskRow, TokenRow, Transition, WorkerRow,
};
use schema::{
    attempt_of, filter_clause, live_states_list, outcome_of, state_of, status_of, ADDED_COLUMNS,
    JOB_COLUMNS, SCHEMA,
};

mod schema;

/// The store over one SQLite file (WAL).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    name: Arc<str>,
}

/// The store over a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: sqlx::PgPool,
    name: Arc<str>,
}

/// Opens the store `database` names: a `postgres://` (or `postgresql://`) URL, or else
/// a SQLite file path (created with its directory if missing). Creates the tables.
pub async fn open(database: &str) -> StoreResult<Arc<dyn Store>> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(database).await?))
    } else {
        Ok(Arc::new(SqliteStore::open(database).await?))
    }
}

/// The error for `database` failing with `source`.
fn database_error(database: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Database {
        database: pyti::redact::url(database),
        source,
    }
}

impl SqliteStore {
    /// Opens (creating) the SQLite file at `path` in WAL mode.
    pub async fn open(path: &str) -> StoreResult<Self> {
        let fail = database_error(path);
        let file = path.strip_prefix("sqlite://").unwrap_or(path);
        if let Some(parent) = std::path::Path::new(file).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| fail(sqlx::Error::Io(e)))?;
            }
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(file)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            // FULL: the worker deletes its spool once "stored" is answered, so a commit
            // must survive a power loss, not only a crash of the master.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::pool::PoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(fail)?;
        Self::with_tables(pool, path).await
    }
}

impl PostgresStore {
    /// Connects to the PostgreSQL database at `url` and creates the tables.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let fail = database_error(url);
        let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(&fail)?;
        let pool = sqlx::pool::PoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(fail)?;
        Self::with_tables(pool, url).await
    }
}

/// The store over `$pool` (its rows `$row`), with the dialect's words for an
/// auto-incremented key (`$serial_key`) and a byte column (`$bytes`).
macro_rules! sql_store {
    ($store:ty, $pool:ty, $row:ty, $serial_key:literal, $bytes:literal) => {
        impl $store {
            /// Creates the tables (if missing) over an open `pool` to `database`.
            async fn with_tables(pool: $pool, database: &str) -> StoreResult<Self> {
                let schema = SCHEMA
                    .replace("{SERIAL_KEY}", $serial_key)
                    .replace("{BYTES}", $bytes);
                sqlx::raw_sql(&schema)
                    .execute(&pool)
                    .await
                    .map_err(database_error(database))?;
                for (table, column) in ADDED_COLUMNS {
                    let added = sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column}"))
                        .execute(&pool)
                        .await;
                    // A store made with the column already has it: both dialects say so.
                    if let Err(error) = added {
                        let message = error.to_string();
                        if !(message.contains("duplicate column") || message.contains("already exists")) {
                            return Err(database_error(database)(error));
                        }
                    }
                }
                Ok(Self {
                    pool,
                    name: pyti::redact::url(database).into(),
                })
            }

            fn fail(&self, source: sqlx::Error) -> StoreError {
                StoreError::Database {
                    database: self.name.to_string(),
                    source,
                }
            }

            fn job_from_row(&self, row: &$row) -> StoreResult<JobRow> {
                let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| self.fail(e));
                let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| self.fail(e));
                let job_id = get_s("job_id")?;
                let variants: Vec<String> = serde_json::from_str(&get_s("platform_variants")?)
                    .map_err(|e| StoreError::Corrupt {
                        database: self.name.to_string(),
                        job_id: job_id.clone(),
                        message: format!("platform_variants: {e}"),
                    })?;
                Ok(JobRow {
                    spec: JobSpec {
                        project_name: get_s("project_name")?,
                        project_version: get_s("project_version")?,
                        recipe_identifier: get_s("recipe_identifier")?,
                        platform_identifier: get_s("platform_identifier")?,
                        platform_variants: variants,
                    },
                    resolved_version: get_s("resolved_version")?,
                    state: state_of(get_i("state")?),
                    attempt: attempt_of(get_i("attempt")?),
                    worker_id: get_s("worker_id")?,
                    outcome: outcome_of(get_i("outcome")?),
                    submitted_at_ms: get_i("submitted_at_ms")?,
                    updated_at_ms: get_i("updated_at_ms")?,
                    lease_deadline_ms: row
                        .try_get::<Option<i64>, _>("lease_deadline_ms")
                        .map_err(|e| self.fail(e))?,
                    cancel_requested: get_i("cancel_requested")? != 0,
                    lease_id: get_s("lease_id")?,
                    submitted_by: get_s("submitted_by")?,
                    history: Vec::new(),
                    job_id,
                })
            }

            async fn job_without_history(&self, job_id: &str) -> StoreResult<Option<JobRow>> {
                let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1");
                let row = sqlx::query(&sql)
                    .bind(job_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| self.fail(e))?;
                row.map(|r| self.job_from_row(&r)).transpose()
            }
        }

        #[tonic::async_trait]
        impl Store for $store {
            async fn insert_job(&self, job: &JobRow, reason: &str) -> StoreResult<()> {
                let mut tx = self.pool.begin().await.map_err(|e| self.fail(e))?;
                self.insert_job_in(&mut tx, job, reason).await?;
                tx.commit().await.map_err(|e| self.fail(e))
            }

            async fn insert_job_once(
                &self,
                job: &JobRow,
                reason: &str,
                key: &str,
            ) -> StoreResult<Option<String>> {
                let mut tx = self.pool.begin().await.map_err(|e| self.fail(e))?;
                let claimed = sqlx::query(
                    "INSERT INTO submit_keys (submit_key, job_id) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(key)
                .bind(&job.job_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(e))?
                .rows_affected();
                if claimed == 0 {
                    tx.rollback().await.map_err(|e| self.fail(e))?;
                    let existing: String =
                        sqlx::query("SELECT job_id FROM submit_keys WHERE submit_key = $1")
                            .bind(key)
                            .fetch_one(&self.pool)
                            .await
                            .map_err(|e| self.fail(e))?
                            .try_get("job_id")
                            .map_err(|e| self.fail(e))?;
                    return Ok(Some(existing));
                }
                self.insert_job_in(&mut tx, job, reason).await?;
                tx.commit().await.map_err(|e| self.fail(e))?;
                Ok(None)
            }

            async fn get_job(&self, job_id: &str) -> StoreResult<Option<JobRow>> {
                let Some(mut job) = self.job_without_history(job_id).await? else {
                    return Ok(None);
                };
                let rows = sqlx::query(
                    "SELECT state, at_ms, reason, worker_id, attempt FROM job_history \
                     WHERE job_id = $1 ORDER BY id",
                )
                .bind(job_id)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.fail(e))?;
                for row in rows {
                    job.history.push(HistoryRow {
                        state: state_of(row.try_get("state").map_err(|e| self.fail(e))?),
                        at_ms: row.try_get("at_ms").map_err(|e| self.fail(e))?,
                        reason: row.try_get("reason").map_err(|e| self.fail(e))?,
                        worker_id: row.try_get("worker_id").map_err(|e| self.fail(e))?,
                        attempt: attempt_of(row.try_get("attempt").map_err(|e| self.fail(e))?),
                    });
                }
                Ok(Some(job))
            }

            async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRow>> {
                let (clause, texts) = filter_clause(filter);
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY job_id DESC LIMIT {}",
                    filter.limit
                );
                let mut query = sqlx::query(&sql);
                for text in &texts {
                    query = query.bind(text);
                }
                let rows = query
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| self.fail(e))?;
                rows.iter().map(|r| self.job_from_row(r)).collect()
            }

            async fn transition(&self, t: &Transition) -> StoreResult<Option<JobRow>> {
                let mut tx = self.pool.begin().await.map_err(|e| self.fail(e))?;
                let from: Vec<String> = t.from.iter().map(|s| (*s as i32).to_string()).collect();
                if !self
                    .update_job(&mut tx, t, &from.join(", "), t.from_attempt)
                    .await?
                {
                    tx.rollback().await.map_err(|e| self.fail(e))?;
                    return Ok(None);
                }
                tx.commit().await.map_err(|e| self.fail(e))?;
                self.job_without_history(&t.job_id).await
            }

            async fn renew_lease(
                &self,
                job_id: &str,
                attempt: u32,
                worker_id: &str,
                deadline_ms: Millis,
            ) -> StoreResult<Option<JobRow>> {
                let changed = sqlx::query(
                    "UPDATE jobs SET lease_deadline_ms = $1 \
                     WHERE job_id = $2 AND attempt = $3 AND worker_id = $4 AND state = $5",
                )
                .bind(deadline_ms)
                .bind(job_id)
                .bind(i64::from(attempt))
                .bind(worker_id)
                .bind(JobState::Running as i64)
                .execute(&self.pool)
                .await
                .map_err(|e| self.fail(e))?
                .rows_affected();
                if changed == 0 {
                    return Ok(None);
                }
                self.job_without_history(job_id).await
            }

            async fn lapsed_leases(&self, now_ms: Millis) -> StoreResult<Vec<JobRow>> {
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1 AND lease_deadline_ms < $2 \
                     ORDER BY job_id"
                );
                let rows = sqlx::query(&sql)
                    .bind(JobState::Running as i64)
                    .bind(now_ms)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| self.fail(e))?;
                rows.iter().map(|r| self.job_from_row(r)).collect()
            }

            async fn store_results(
                &self,
                results: &AttemptResults,
                transition: &Transition,
            ) -> StoreResult<StoreOutcome> {
                let mut tx = self.pool.begin().await.map_err(|e| self.fail(e))?;
                let inserted = sqlx::query(
                    "INSERT INTO results (job_id, attempt, worker_id, outcome, results_json, \
                     error, stored_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&results.job_id)
                .bind(i64::from(results.attempt))
                .bind(&results.worker_id)
                .bind(results.outcome as i64)
                .bind(&results.results_json)
                .bind(&results.error)
                .bind(results.stored_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(e))?
                .rows_affected();
                if inserted == 0 {
                    tx.rollback().await.map_err(|e| self.fail(e))?;
                    return Ok(StoreOutcome::Duplicate);
                }
                // Results count from any live state, whatever the transition says.
                if !self
                    .update_job(&mut tx, transition, &live_states_list(), None)
                    .await?
                {
                    tx.rollback().await.map_err(|e| self.fail(e))?;
                    return Ok(StoreOutcome::Duplicate);
                }
                self.insert_tasks_and_logs(&mut tx, results).await?;
                tx.commit().await.map_err(|e| self.fail(e))?;
                match self.job_without_history(&results.job_id).await? {
                    Some(job) => Ok(StoreOutcome::Stored(Box::new(job))),
                    None => Ok(StoreOutcome::Duplicate),
                }
            }

            async fn get_results(&self, job_id: &str) -> StoreResult<Option<AttemptResults>> {
                let Some(row) = sqlx::query(
                    "SELECT attempt, worker_id, outcome, results_json, error, stored_at_ms \
                     FROM results WHERE job_id = $1 ORDER BY attempt DESC LIMIT 1",
                )
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.fail(e))?
                else {
                    return Ok(None);
                };
                let f = |e| self.fail(e);
                let attempt: i64 = row.try_get("attempt").map_err(f)?;
                let mut results = AttemptResults {
                    job_id: job_id.to_owned(),
                    attempt: attempt_of(attempt),
                    worker_id: row.try_get("worker_id").map_err(f)?,
                    outcome: outcome_of(row.try_get("outcome").map_err(f)?),
                    results_json: row.try_get("results_json").map_err(f)?,
                    error: row.try_get("error").map_err(f)?,
                    stored_at_ms: row.try_get("stored_at_ms").map_err(f)?,
                    tasks: Vec::new(),
                    logs: Vec::new(),
                };
                let tasks = sqlx::query(
                    "SELECT task, status, duration_s, metrics_json, log_name, summary \
                     FROM task_results WHERE job_id = $1 AND attempt = $2 ORDER BY position, task",
                )
                .bind(job_id)
                .bind(attempt)
                .fetch_all(&self.pool)
                .await
                .map_err(f)?;
                for t in tasks {
                    results.tasks.push(TaskRow {
                        task: t.try_get("task").map_err(f)?,
                        status: status_of(t.try_get("status").map_err(f)?),
                        duration_s: t.try_get("duration_s").map_err(f)?,
                        metrics_json: t.try_get("metrics_json").map_err(f)?,
                        log_name: t.try_get("log_name").map_err(f)?,
                        summary: t.try_get("summary").map_err(f)?,
                    });
                }
                let logs = sqlx::query(
                    "SELECT log_name, data FROM logs WHERE job_id = $1 AND attempt = $2 \
                     ORDER BY log_name",
                )
                .bind(job_id)
                .bind(attempt)
                .fetch_all(&self.pool)
                .await
                .map_err(f)?;
                for l in logs {
                    results
                        .logs
                        .push((l.try_get("log_name").map_err(f)?, l.try_get("data").map_err(f)?));
                }
                Ok(Some(results))
            }

            async fn count_results(&self, job_id: &str) -> StoreResult<u64> {
                let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM results WHERE job_id = $1")
                    .bind(job_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| self.fail(e))?
                    .try_get("n")
                    .map_err(|e| self.fail(e))?;
                Ok(u64::try_from(count).unwrap_or(0))
            }

            async fn upsert_worker(&self, worker: &WorkerRow) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO workers (worker_id, control_address, capacity, \
                     registered_at_ms, last_seen_ms) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (worker_id) DO UPDATE SET control_address = $2, \
                     capacity = $3, last_seen_ms = $5",
                )
                .bind(&worker.worker_id)
                .bind(&worker.control_address)
                .bind(&worker.capacity)
                .bind(worker.registered_at_ms)
                .bind(worker.last_seen_ms)
                .execute(&self.pool)
                .await
                .map_err(|e| self.fail(e))?;
                Ok(())
            }

            async fn workers(&self) -> StoreResult<Vec<WorkerRow>> {
                let rows = sqlx::query(
                    "SELECT worker_id, control_address, capacity, registered_at_ms, last_seen_ms \
                     FROM workers ORDER BY worker_id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.fail(e))?;
                let f = |e| self.fail(e);
                rows.iter()
                    .map(|r| {
                        Ok(WorkerRow {
                            worker_id: r.try_get("worker_id").map_err(f)?,
                            control_address: r.try_get("control_address").map_err(f)?,
                            capacity: r.try_get("capacity").map_err(f)?,
                            registered_at_ms: r.try_get("registered_at_ms").map_err(f)?,
                            last_seen_ms: r.try_get("last_seen_ms").map_err(f)?,
                        })
                    })
                    .collect()
            }

            async fn delete_worker(&self, worker_id: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM workers WHERE worker_id = $1")
                    .bind(worker_id)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.fail(e))?;
                Ok(())
            }

            async fn insert_token(&self, token: &TokenRow) -> StoreResult<bool> {
                let inserted = sqlx::query(
                    "INSERT INTO tokens (token_id, name, role, secret_hash, created_at_ms, \
                     expires_at_ms, revoked_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&token.token_id)
                .bind(&token.name)
                .bind(&token.role)
                .bind(&token.secret_hash)
                .bind(token.created_at_ms)
                .bind(token.expires_at_ms)
                .bind(token.revoked_at_ms)
                .execute(&self.pool)
                .await
                .map_err(|e| self.fail(e))?
                .rows_affected();
                Ok(inserted == 1)
            }

            async fn token(&self, token_id: &str) -> StoreResult<Option<TokenRow>> {
                let rows = self.token_rows("WHERE token_id = $1", Some(token_id)).await?;
                Ok(rows.into_iter().next())
            }

            async fn tokens(&self) -> StoreResult<Vec<TokenRow>> {
                self.token_rows("", None).await
            }

            async fn revoke_token(&self, name: &str, at_ms: Millis) -> StoreResult<bool> {
                let changed = sqlx::query(
                    "UPDATE tokens SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL",
                )
                .bind(at_ms)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(|e| self.fail(e))?
                .rows_affected();
                Ok(changed > 0)
            }
        }

        impl $store {
            async fn token_rows(&self, clause: &str, id: Option<&str>) -> StoreResult<Vec<TokenRow>> {
                let sql = format!(
                    "SELECT token_id, name, role, secret_hash, created_at_ms, expires_at_ms, \
                     revoked_at_ms FROM tokens {clause} ORDER BY name"
                );
                let mut query = sqlx::query(&sql);
                if let Some(id) = id {
                    query = query.bind(id);
                }
                let rows = query.fetch_all(&self.pool).await.map_err(|e| self.fail(e))?;
                let f = |e| self.fail(e);
                rows.iter()
                    .map(|r| {
                        Ok(TokenRow {
                            token_id: r.try_get("token_id").map_err(f)?,
                            name: r.try_get("name").map_err(f)?,
                            role: r.try_get("role").map_err(f)?,
                            secret_hash: r.try_get("secret_hash").map_err(f)?,
                            created_at_ms: r.try_get("created_at_ms").map_err(f)?,
                            expires_at_ms: r.try_get("expires_at_ms").map_err(f)?,
                            revoked_at_ms: r.try_get("revoked_at_ms").map_err(f)?,
                        })
                    })
                    .collect()
            }

            /// Inserts `job` and its first history entry in `tx`.
            async fn insert_job_in(
                &self,
                tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
                job: &JobRow,
                reason: &str,
            ) -> StoreResult<()> {
                let variants = serde_json::to_string(&job.spec.platform_variants)
                    .expect("a list of strings serialises");
                sqlx::query(&format!(
                    "INSERT INTO jobs ({JOB_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                ))
                .bind(&job.job_id)
                .bind(&job.spec.project_name)
                .bind(&job.spec.project_version)
                .bind(&job.spec.recipe_identifier)
                .bind(&job.spec.platform_identifier)
                .bind(variants)
                .bind(&job.resolved_version)
                .bind(job.state as i64)
                .bind(i64::from(job.attempt))
                .bind(&job.worker_id)
                .bind(job.outcome as i64)
                .bind(job.submitted_at_ms)
                .bind(job.updated_at_ms)
                .bind(job.lease_deadline_ms)
                .bind(i64::from(job.cancel_requested))
                .bind(&job.lease_id)
                .bind(&job.submitted_by)
                .execute(&mut **tx)
                .await
                .map_err(|e| self.fail(e))?;
                let first = Transition::of(job, job.state, reason, job.submitted_at_ms);
                self.record_history(tx, &first).await
            }

            /// Adds the task results and logs of `results` in `tx`.
            async fn insert_tasks_and_logs(
                &self,
                tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
                results: &AttemptResults,
            ) -> StoreResult<()> {
                // `position` keeps the recipe's order for GetResults.
                for (position, task) in results.tasks.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO task_results (job_id, attempt, task, status, duration_s, \
                         metrics_json, log_name, summary, position) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                    )
                    .bind(&results.job_id)
                    .bind(i64::from(results.attempt))
                    .bind(&task.task)
                    .bind(task.status as i64)
                    .bind(task.duration_s)
                    .bind(&task.metrics_json)
                    .bind(&task.log_name)
                    .bind(&task.summary)
                    .bind(i64::try_from(position).unwrap_or(i64::MAX))
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| self.fail(e))?;
                }
                for (name, data) in &results.logs {
                    sqlx::query(
                        "INSERT INTO logs (job_id, attempt, log_name, data) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(&results.job_id)
                    .bind(i64::from(results.attempt))
                    .bind(name)
                    .bind(data)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| self.fail(e))?;
                }
                Ok(())
            }

            /// Applies `t`'s new values to its job, and records them in its history,
            /// if the job is in one of `states` (an SQL list) and, when `attempt` is
            /// given, at that attempt; whether it was.
            async fn update_job(
                &self,
                tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
                t: &Transition,
                states: &str,
                attempt: Option<u32>,
            ) -> StoreResult<bool> {
                let attempt_condition = if attempt.is_some() {
                    "AND attempt = $9"
                } else {
                    "AND $9 IS NULL"
                };
                let sql = format!(
                    "UPDATE jobs SET state = $1, attempt = $2, worker_id = $3, \
                     lease_deadline_ms = $4, outcome = $5, cancel_requested = $6, \
                     updated_at_ms = $7, lease_id = $10 WHERE job_id = $8 AND state IN ({states}) \
                     {attempt_condition}"
                );
                let changed = sqlx::query(&sql)
                    .bind(t.to as i64)
                    .bind(i64::from(t.attempt))
                    .bind(&t.worker_id)
                    .bind(t.lease_deadline_ms)
                    .bind(t.outcome as i64)
                    .bind(i64::from(t.cancel_requested))
                    .bind(t.at_ms)
                    .bind(&t.job_id)
                    .bind(attempt.map(i64::from))
                    .bind(&t.lease_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| self.fail(e))?
                    .rows_affected();
                if changed == 0 {
                    return Ok(false);
                }
                self.record_history(tx, t).await?;
                Ok(true)
            }

            async fn record_history(
                &self,
                tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
                t: &Transition,
            ) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO job_history (job_id, state, at_ms, reason, worker_id, attempt) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&t.job_id)
                .bind(t.to as i64)
                .bind(t.at_ms)
                .bind(&t.reason)
                .bind(&t.worker_id)
                .bind(i64::from(t.attempt))
                .execute(&mut **tx)
                .await
                .map_err(|e| self.fail(e))?;
                Ok(())
            }
        }
    };
}

sql_store!(
    SqliteStore,
    sqlx::SqlitePool,
    sqlx::sqlite::SqliteRow,
    "INTEGER PRIMARY KEY AUTOINCREMENT",
    "BLOB"
);
sql_store!(
    PostgresStore,
    sqlx::PgPool,
    sqlx::postgres::PgRow,
    "BIGSERIAL PRIMARY KEY",
    "BYTEA"
);

#[cfg(test)]
mod tests;
