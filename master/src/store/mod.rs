//! Where the master keeps jobs, their history, results, logs and worker registrations.
//!
//! One master on one machine wants a single SQLite file; a farm whose master must be
//! replaceable wants PostgreSQL. Both are real, so this is the one trait with two
//! implementations. Both run the same SQL (SQLite accepts `$1` parameters), generated
//! by one macro so they cannot drift; only the table definitions differ.
//!
//! Every state change is a conditional update ("from these states, at this attempt"),
//! so two actors racing on one job (a result arriving while its lease lapses, a
//! duplicate queue message) cannot both win: the loser sees `None` and backs off.

mod sql;

use pyti::model::JobSpec;
use pyti::proto::{JobState, Outcome, TaskStatus};

pub use sql::{open, PostgresStore, SqliteStore};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database {database}: {source}")]
    Database {
        /// The `database` setting (URL or path).
        database: String,
        #[source]
        source: sqlx::Error,
    },
    /// A stored row cannot be read back (written by an incompatible version?).
    #[error("database {database}: job {job_id} is unreadable: {message}")]
    Corrupt {
        database: String,
        job_id: String,
        message: String,
    },
}

/// Results of the store.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch: the store's clock unit.
pub type Millis = i64;

/// One transition in a job's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The state entered.
    pub state: JobState,
    /// When.
    pub at_ms: Millis,
    /// Why, in words.
    pub reason: String,
    /// Worker involved, if any.
    pub worker_id: String,
    /// Attempt at the time.
    pub attempt: u32,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Time-ordered id (UUID v7), so ids sort by submission.
    pub job_id: String,
    /// The validated request.
    pub spec: JobSpec,
    /// The version tested when the request left it empty.
    pub resolved_version: String,
    /// Current state.
    pub state: JobState,
    /// Current attempt, from 1.
    pub attempt: u32,
    /// Worker assigned or running it.
    pub worker_id: String,
    /// How it ended (unspecified while it runs).
    pub outcome: Outcome,
    /// When it was submitted.
    pub submitted_at_ms: Millis,
    /// Last change.
    pub updated_at_ms: Millis,
    /// When the running attempt's lease lapses.
    pub lease_deadline_ms: Option<Millis>,
    /// A user asked to cancel it while it ran.
    pub cancel_requested: bool,
    /// Random per assignment to a worker: only the holder of the job's queue message
    /// knows it (empty before the first assignment).
    pub lease_id: String,
    /// Who submitted it (`client:NAME`, `local`; empty for jobs stored before this
    /// was recorded): who besides admins may cancel it.
    pub submitted_by: String,
    /// Every transition, oldest first (empty in listings).
    pub history: Vec<HistoryRow>,
}

impl JobRow {
    /// Whether the job has ended for good.
    pub fn is_terminal(&self) -> bool {
        is_terminal(self.state)
    }
}

/// Whether `state` is an end state.
pub fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded
            | JobState::Failed
            | JobState::TimedOut
            | JobState::Cancelled
            | JobState::Dead
    )
}

/// The states a job can still leave.
pub const LIVE_STATES: [JobState; 4] = [
    JobState::Submitted,
    JobState::Queued,
    JobState::Assigned,
    JobState::Running,
];

/// A conditional state change: applied only when the job is in one of `from` (and at
/// `from_attempt`, when given).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The job.
    pub job_id: String,
    /// States the job must be in.
    pub from: Vec<JobState>,
    /// Attempt the job must be at, if it matters.
    pub from_attempt: Option<u32>,
    /// New state.
    pub to: JobState,
    /// Attempt after the change.
    pub attempt: u32,
    /// Worker after the change (empty for none).
    pub worker_id: String,
    /// Lease after the change.
    pub lease_deadline_ms: Option<Millis>,
    /// Outcome after the change.
    pub outcome: Outcome,
    /// Cancel flag after the change.
    pub cancel_requested: bool,
    /// Lease id after the change.
    pub lease_id: String,
    /// History text.
    pub reason: String,
    /// When.
    pub at_ms: Millis,
}

impl Transition {
    /// A transition of `job` to `to` that keeps everything else as it is.
    pub fn of(job: &JobRow, to: JobState, reason: impl Into<String>, at_ms: Millis) -> Self {
        Self {
            job_id: job.job_id.clone(),
            from: vec![job.state],
            from_attempt: Some(job.attempt),
            to,
            attempt: job.attempt,
            worker_id: job.worker_id.clone(),
            lease_deadline_ms: job.lease_deadline_ms,
            outcome: job.outcome,
            cancel_requested: job.cancel_requested,
            lease_id: job.lease_id.clone(),
            reason: reason.into(),
            at_ms,
        }
    }
}

/// Filter and page of `list_jobs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only these states (empty = all).
    pub states: Vec<JobState>,
    /// Only this project (empty = all).
    pub project_name: String,
    /// Only this worker (empty = all).
    pub worker_id: String,
    /// At most this many.
    pub limit: u32,
    /// Only jobs older than this id (the previous page's last).
    pub before_job_id: Option<String>,
}

/// One task's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Task name.
    pub task: String,
    /// Its status.
    pub status: TaskStatus,
    /// Seconds it took.
    pub duration_s: f64,
    /// Task metrics, a JSON object.
    pub metrics_json: String,
    /// Its log's name.
    pub log_name: String,
    /// One line for people.
    pub summary: String,
}

/// Everything one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResults {
    /// The job.
    pub job_id: String,
    /// The attempt.
    pub attempt: u32,
    /// Worker that ran it.
    pub worker_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The whole results dict.
    pub results_json: String,
    /// Farm error in words.
    pub error: String,
    /// Task results.
    pub tasks: Vec<TaskRow>,
    /// Logs: name → content (chunks concatenated by offset).
    pub logs: Vec<(String, Vec<u8>)>,
    /// When they were stored.
    pub stored_at_ms: Millis,
}

/// What `store_results` did.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOutcome {
    /// Stored; the job after its transition.
    Stored(Box<JobRow>),
    /// These results (or the job's final ones) were stored before: nothing changed.
    Duplicate,
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Its id.
    pub worker_id: String,
    /// Its WorkerControl address.
    pub control_address: String,
    /// Its last capacity report, protobuf-encoded `pyti.v1.Capacity`.
    pub capacity: Vec<u8>,
    /// First registration.
    pub registered_at_ms: Millis,
    /// Last registration or report.
    pub last_seen_ms: Millis,
}

/// A client bearer token: only the hash of its secret is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    /// Public id, part of the token.
    pub token_id: String,
    /// Who it is for (unique).
    pub name: String,
    /// `read`, `submit` or `admin`.
    pub role: String,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    /// When it was made.
    pub created_at_ms: Millis,
    /// When it stops working, if ever.
    pub expires_at_ms: Option<Millis>,
    /// When it was revoked.
    pub revoked_at_ms: Option<Millis>,
}

/// The master's storage.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds a new job (history gets its first entry with `reason`).
    async fn insert_job(&self, job: &JobRow, reason: &str) -> StoreResult<()>;
    /// Adds a new job under the idempotency key `key`, atomically; when a job was
    /// added under `key` before, adds nothing and returns that job's id.
    async fn insert_job_once(
        &self,
        job: &JobRow,
        reason: &str,
        key: &str,
    ) -> StoreResult<Option<String>>;
    /// A job with its history.
    async fn get_job(&self, job_id: &str) -> StoreResult<Option<JobRow>>;
    /// Jobs matching `filter`, newest first, without history.
    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRow>>;
    /// Applies `transition` if its condition holds; the job after it, or `None`.
    async fn transition(&self, transition: &Transition) -> StoreResult<Option<JobRow>>;
    /// Moves the lease of a running attempt; `None` when the job is no longer running
    /// that attempt on that worker.
    async fn renew_lease(
        &self,
        job_id: &str,
        attempt: u32,
        worker_id: &str,
        deadline_ms: Millis,
    ) -> StoreResult<Option<JobRow>>;
    /// Running jobs whose lease lapsed before `now_ms`.
    async fn lapsed_leases(&self, now_ms: Millis) -> StoreResult<Vec<JobRow>>;
    /// Stores one attempt's results and applies `transition` (from any live state),
    /// atomically; a second copy of the same attempt, or results for a job that
    /// already ended, change nothing.
    async fn store_results(
        &self,
        results: &AttemptResults,
        transition: &Transition,
    ) -> StoreResult<StoreOutcome>;
    /// The results of the job's latest stored attempt.
    async fn get_results(&self, job_id: &str) -> StoreResult<Option<AttemptResults>>;
    /// Number of result records stored for a job (tests count these).
    async fn count_results(&self, job_id: &str) -> StoreResult<u64>;
    /// Adds or updates a worker.
    async fn upsert_worker(&self, worker: &WorkerRow) -> StoreResult<()>;
    /// Every registered worker.
    async fn workers(&self) -> StoreResult<Vec<WorkerRow>>;
    /// Forgets a worker (it expired).
    async fn delete_worker(&self, worker_id: &str) -> StoreResult<()>;
    /// Adds a token; `false` when one with its name exists.
    async fn insert_token(&self, token: &TokenRow) -> StoreResult<bool>;
    /// The token with this id.
    async fn token(&self, token_id: &str) -> StoreResult<Option<TokenRow>>;
    /// Every token, by name.
    async fn tokens(&self) -> StoreResult<Vec<TokenRow>>;
    /// Revokes the token named `name` at `at_ms`; `false` when there is none.
    async fn revoke_token(&self, name: &str, at_ms: Millis) -> StoreResult<bool>;
}
