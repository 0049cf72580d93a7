//! The results dict: what a run found, as versioned JSON in `results/results.json`.
//!
//! It is written by the guest and read by the host, where it is hostile input (the
//! package under test ran as root on the machine that wrote it), so the same types come
//! with a strict, capped reader, [`parse_results`]. The format is documented as a JSON
//! Schema in `schemas/results.schema.json`; a test keeps the two in step.
//!
//! Every run ends with one [`Outcome`] from a closed set that separates the package's
//! faults (never retried) from the farm's (retried, never counted against the package).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::behaviour::{BehaviourReport, Rule, Verdict};
use crate::job::{InputRole, JobIdentity};
pub use crate::outcome::Outcome;
use crate::recipe::TaskKind;

/// Version of the results format written by this build.
pub const RESULTS_SCHEMA_VERSION: u32 = 3;

/// The oldest results format this reader still accepts: each version since only added
/// optional fields (2: `platform.cpu`, `tasks[].platform_fault`; 3: `nonce`,
/// `tasks[].package_fault`, import `console_scripts`, behaviour `exfiltration`).
pub const OLDEST_READABLE_SCHEMA_VERSION: u32 = 1;

/// The most entries the guest writes into any one list; the rest is counted, not listed.
pub const MAX_LISTED: usize = 2000;

/// One run's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// Always [`RESULTS_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The job this run belongs to.
    pub job: JobIdentity,
    /// Where it ran.
    pub platform: GuestPlatform,
    /// Every input file with the hash the host announced and whether the bytes matched.
    pub inputs: Vec<InputCheck>,
    /// One entry per recipe task, in recipe order.
    pub tasks: Vec<TaskResult>,
    /// The overall outcome.
    pub outcome: Outcome,
    /// One sentence on why this outcome.
    pub outcome_detail: String,
    /// Wall-clock seconds the agent ran.
    pub duration_s: f64,
    /// The run's nonce from `job.json`, which only the agent can read: the host refuses
    /// results without the one it sent (absent in old results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The guest platform as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestPlatform {
    /// `platform.python_version()` of the interpreter used, if it could be asked.
    pub python_version: Option<String>,
    /// `uname -r` equivalent (`/proc/sys/kernel/osrelease`).
    pub kernel: Option<String>,
    /// `uname -m` equivalent.
    pub machine: String,
    /// The image hash given in `job.json`.
    pub image_hash: Option<String>,
    /// Version of the agent that wrote the results.
    pub agent_version: String,
    /// The CPU the guest saw (model, x86-64 level, flags); absent in old results.
    #[serde(default)]
    pub cpu: Option<crate::cpu::CpuInfo>,
}

/// An input file as checked by the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputCheck {
    /// Path relative to the IO disk.
    pub path: String,
    /// Its role.
    pub role: InputRole,
    /// The sha256 announced in `job.json`.
    pub sha256: String,
    /// Whether the file's bytes hash to it.
    pub verified: bool,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Ran, and found nothing wrong.
    Passed,
    /// Ran, and found something wrong with the package.
    Failed,
    /// Could not be run (a missing tool, an agent fault): no finding about the package.
    Error,
    /// Not run: nothing to run it on, or a task it needs did not pass.
    Skipped,
    /// Its deadline passed; its process group was killed.
    TimedOut,
}

impl TaskStatus {
    /// The stable name (`passed`, `timed_out`, ...), as in results.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Error => "error",
            Self::Skipped => "skipped",
            Self::TimedOut => "timed_out",
        }
    }
}

/// One task's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    /// Which task.
    pub name: TaskKind,
    /// How it ended.
    pub status: TaskStatus,
    /// Wall-clock seconds it took.
    pub duration_s: f64,
    /// Its deadline.
    pub timeout_s: u64,
    /// Its log, relative to `results/` (e.g. `logs/install.log`), if one was written.
    pub log: Option<String>,
    /// One line for humans: what happened.
    pub message: String,
    /// What it measured, if it got far enough to measure anything.
    pub metrics: Option<TaskMetrics>,
    /// Set (with status `error`) when the farm's platform, not the package, made the
    /// task fail: e.g. an instruction the guest CPU lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_fault: Option<String>,
    /// Set when the package attacked the sandbox or exhausted the guest during this
    /// task: a package fault whatever the task's status says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_fault: Option<PackageFault>,
}

/// How a package harmed the sandbox during a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFault {
    /// What kind of harm.
    pub kind: PackageFaultKind,
    /// What the agent saw.
    pub detail: String,
}

/// The kinds of harm to the sandbox itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageFaultKind {
    /// It went for the results channel, the agent or the power switch.
    Tampering,
    /// It hit the process limit, filled the disk or ran out of memory.
    Exhaustion,
}

impl PackageFaultKind {
    /// The outcome a job with this fault ends with.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Tampering => Outcome::SandboxTampering,
            Self::Exhaustion => Outcome::ResourceExhaustion,
        }
    }
}

/// What a task measured; the key names the task kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskMetrics {
    /// From `install`.
    Install(InstallMetrics),
    /// From `import`.
    Import(ImportMetrics),
    /// From `behaviour`.
    Behaviour(BehaviourReport),
    /// From `tests`.
    Tests(TestsMetrics),
    /// From `quality`.
    Quality(QualityMetrics),
    /// Filled in by the host; free-form, the host owns its shape.
    Metadata(BTreeMap<String, serde_json::Value>),
}

/// What `install` measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallMetrics {
    /// The distribution file installed (`dist/...`).
    pub installed_from: String,
    /// pip's exit code (None when it was killed).
    pub pip_exit_code: Option<i32>,
    /// How many files the distribution installed (its RECORD).
    pub installed_file_count: u64,
    /// The installed files, relative to site-packages, at most [`MAX_LISTED`].
    pub installed_files: Vec<String>,
    /// How many files were written outside the environment and the expected temp dirs.
    pub weird_place_count: u64,
    /// Those files, at most [`MAX_LISTED`].
    pub weird_places: Vec<WrittenFile>,
}

/// A file that appeared or changed during a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrittenFile {
    /// Absolute path.
    pub path: String,
    /// Size after the task, in bytes.
    pub size: u64,
    /// Whether it is new or was there before with another size or mtime.
    pub change: FileChange,
}

/// How a file changed between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChange {
    /// It did not exist before.
    Created,
    /// It existed with another size or mtime.
    Modified,
}

/// What `import` measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportMetrics {
    /// One entry per top-level module, sorted by name.
    pub modules: Vec<ModuleImport>,
    /// Each console script the distribution installs, run with `--help` (traced like
    /// the imports: a script's code is package code too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console_scripts: Vec<ConsoleScriptRun>,
}

/// One console script run with `--help`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleScriptRun {
    /// Its name in `entry_points.txt`.
    pub name: String,
    /// Its exit code (None when a signal or the deadline ended it).
    pub exit_code: Option<i32>,
}

/// One module's import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleImport {
    /// The top-level module name.
    pub module: String,
    /// Whether `import module` succeeded.
    pub ok: bool,
    /// The exception's last line when it did not.
    pub error: Option<String>,
}

/// What `tests` measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestsMetrics {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests that errored (in setup, or collection errors).
    pub errors: u64,
    /// Tests skipped or xfailed.
    pub skipped: u64,
    /// Where the counts come from: `junit` (pytest's XML) or `summary` (its last line).
    pub source: String,
    /// pytest's exit code.
    pub exit_code: Option<i32>,
}

/// What `quality` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityMetrics {
    /// Python files checked.
    pub files: u64,
    /// Their lines.
    pub lines: u64,
    /// pycodestyle (PEP 8) findings.
    pub pycodestyle: ToolCounts,
    /// pyflakes findings.
    pub pyflakes: ToolCounts,
    /// 0 to 10: `10 - 10 * (pycodestyle + 5 * pyflakes) / lines`, floored at 0.
    pub score: f64,
}

/// A checker's findings, counted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCounts {
    /// All findings.
    pub total: u64,
    /// Findings by code (pycodestyle's E/W codes, pyflakes' messages mapped to F codes).
    pub by_code: BTreeMap<String, u64>,
}

fn metrics_of(task: &TaskResult) -> Option<&TaskMetrics> {
    task.metrics.as_ref()
}

/// The outcome of a run from its task results (inputs already verified), with a
/// sentence on why. Definite package faults come first (a harmful package stays harmful
/// even if a later task timed out), then farm faults (a retry may change the rest), then
/// softer package findings. A suspicious verdict whose only reasons are writes outside
/// the environment is reported as `wrote_outside_environment`, the more precise name.
pub fn decide_outcome(tasks: &[TaskResult]) -> (Outcome, String) {
    let find = |kind: TaskKind| tasks.iter().find(|t| t.name == kind);
    // Harm to the sandbox outranks everything a task may have measured after it.
    for kind in [PackageFaultKind::Tampering, PackageFaultKind::Exhaustion] {
        let fault = tasks.iter().find_map(|t| {
            t.package_fault
                .as_ref()
                .filter(|f| f.kind == kind)
                .map(|f| (t, f))
        });
        if let Some((task, fault)) = fault {
            return (kind.outcome(), format!("{}: {}", task.name, fault.detail));
        }
    }
    let verdict = find(TaskKind::Behaviour)
        .and_then(metrics_of)
        .and_then(|m| match m {
            TaskMetrics::Behaviour(report) => Some(report.verdict),
            _ => None,
        });
    let reasons = || {
        find(TaskKind::Behaviour)
            .map(|t| t.message.clone())
            .unwrap_or_default()
    };
    if verdict == Some(Verdict::Malicious) {
        return (Outcome::HarmfulBehaviour, reasons());
    }
    for (kind, outcome) in [
        (TaskKind::Install, Outcome::InstallFailed),
        (TaskKind::Import, Outcome::ImportFailed),
    ] {
        if let Some(task) = find(kind).filter(|t| t.status == TaskStatus::Failed) {
            return (outcome, format!("{kind}: {}", task.message));
        }
    }
    if let Some((task, fault)) = tasks
        .iter()
        .find_map(|t| t.platform_fault.as_ref().map(|fault| (t, fault)))
    {
        return (Outcome::CpuUnsupported, format!("{}: {fault}", task.name));
    }
    if let Some(task) = tasks.iter().find(|t| t.status == TaskStatus::Error) {
        return (
            Outcome::AgentError,
            format!("{}: {}", task.name, task.message),
        );
    }
    if let Some(task) = tasks.iter().find(|t| t.status == TaskStatus::TimedOut) {
        return (
            Outcome::TaskTimeout,
            format!("{}: {}", task.name, task.message),
        );
    }
    if let Some(task) = find(TaskKind::Tests).filter(|t| t.status == TaskStatus::Failed) {
        return (Outcome::TestsFailed, format!("tests: {}", task.message));
    }
    let only_writes = find(TaskKind::Behaviour)
        .and_then(metrics_of)
        .is_some_and(|m| match m {
            TaskMetrics::Behaviour(report) => report
                .reasons
                .iter()
                .all(|r| r.rule == Rule::WriteOutsideEnvironment),
            _ => false,
        });
    if verdict == Some(Verdict::Suspicious) && !only_writes {
        return (Outcome::SuspiciousBehaviour, reasons());
    }
    if verdict == Some(Verdict::Suspicious) {
        return (Outcome::WroteOutsideEnvironment, reasons());
    }
    let weird = find(TaskKind::Install)
        .and_then(metrics_of)
        .and_then(|m| match m {
            TaskMetrics::Install(install) if install.weird_place_count > 0 => Some(install),
            _ => None,
        });
    if let Some(install) = weird {
        return (
            Outcome::WroteOutsideEnvironment,
            format!(
                "install wrote {} file(s) outside the environment",
                install.weird_place_count
            ),
        );
    }
    if let Some(task) = find(TaskKind::Quality).filter(|t| t.status == TaskStatus::Failed) {
        return (Outcome::QualityFailed, format!("quality: {}", task.message));
    }
    (
        Outcome::Passed,
        "every task passed or was skipped".to_string(),
    )
}

/// Caps for [`parse_results`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsLimits {
    /// Largest file accepted, in bytes.
    pub max_bytes: usize,
    /// Most task entries.
    pub max_tasks: usize,
    /// Most elements in any array and members in any object.
    pub max_items: usize,
    /// Longest string (keys included), in bytes.
    pub max_string_bytes: usize,
}

impl Default for ResultsLimits {
    /// 8 MiB, 32 tasks, 10 000 items per list, 64 KiB per string.
    fn default() -> Self {
        ResultsLimits {
            max_bytes: 8 << 20,
            max_tasks: 32,
            max_items: 10_000,
            max_string_bytes: 64 << 10,
        }
    }
}

/// Why a results file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// Over the size cap.
    #[error("results.json is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// Not JSON, nested too deeply, a wrong type, or an unknown field.
    #[error("results.json does not parse: {0}")]
    Syntax(String),
    /// Written by an agent speaking another version.
    #[error(
        "results.json has schema_version {found:?}; this reader accepts {OLDEST_READABLE_SCHEMA_VERSION} to {RESULTS_SCHEMA_VERSION}"
    )]
    Version {
        /// What the file says.
        found: Option<serde_json::Value>,
    },
    /// Within the size cap but over a structural cap.
    #[error("results.json at {at}: {problem}")]
    OverLimit {
        /// JSON pointer of the offending value.
        at: String,
        /// Which cap.
        problem: String,
    },
}

/// Reads a results file written by an untrusted guest.
///
/// Refuses, in order: more than `limits.max_bytes`; anything that is not JSON (nesting
/// deeper than 128 is refused by the JSON parser); a `schema_version` other than
/// [`OLDEST_READABLE_SCHEMA_VERSION`]..=[`RESULTS_SCHEMA_VERSION`]; any string, array or object over its cap; and anything
/// that does not match the types exactly. Unknown fields are refused everywhere except
/// inside the host-owned `metadata` metrics: a newer guest that adds a field must bump
/// `schema_version`, so an unknown field means corruption or tampering, not a newer
/// agent.
pub fn parse_results(bytes: &[u8], limits: &ResultsLimits) -> Result<Results, ResultsError> {
    if bytes.len() > limits.max_bytes {
        return Err(ResultsError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ResultsError::Syntax(e.to_string()))?;
    let version = value.get("schema_version");
    let readable = u64::from(OLDEST_READABLE_SCHEMA_VERSION)..=u64::from(RESULTS_SCHEMA_VERSION);
    if !version
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|v| readable.contains(&v))
    {
        return Err(ResultsError::Version {
            found: version.cloned(),
        });
    }
    check_caps(&value, limits, &mut String::new())?;
    if let Some(tasks) = value.get("tasks").and_then(serde_json::Value::as_array) {
        if tasks.len() > limits.max_tasks {
            return Err(ResultsError::OverLimit {
                at: "/tasks".to_string(),
                problem: format!("{} tasks; the limit is {}", tasks.len(), limits.max_tasks),
            });
        }
    }
    serde_path_to_error::deserialize(value)
        .map_err(|e| ResultsError::Syntax(format!("at {}: {}", e.path(), e.inner())))
}

fn check_caps(
    value: &serde_json::Value,
    limits: &ResultsLimits,
    at: &mut String,
) -> Result<(), ResultsError> {
    let over = |at: &str, problem: String| ResultsError::OverLimit {
        at: if at.is_empty() {
            "/".to_string()
        } else {
            at.to_string()
        },
        problem,
    };
    let check_string = |at: &str, text: &str| {
        if text.len() > limits.max_string_bytes {
            return Err(over(
                at,
                format!(
                    "a string of {} bytes; the limit is {}",
                    text.len(),
                    limits.max_string_bytes
                ),
            ));
        }
        Ok(())
    };
    match value {
        serde_json::Value::String(text) => check_string(at, text),
        serde_json::Value::Array(items) => {
            if items.len() > limits.max_items {
                return Err(over(
                    at,
                    format!(
                        "{} elements; the limit is {}",
                        items.len(),
                        limits.max_items
                    ),
                ));
            }
            for (index, item) in items.iter().enumerate() {
                let length = at.len();
                at.push_str(&format!("/{index}"));
                check_caps(item, limits, at)?;
                at.truncate(length);
            }
            Ok(())
        }
        serde_json::Value::Object(members) => {
            if members.len() > limits.max_items {
                return Err(over(
                    at,
                    format!(
                        "{} members; the limit is {}",
                        members.len(),
                        limits.max_items
                    ),
                ));
            }
            for (key, item) in members {
                check_string(at, key)?;
                let length = at.len();
                at.push('/');
                at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                check_caps(item, limits, at)?;
                at.truncate(length);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "results_tests.rs"]
mod tests;
