//! The results of a run as the host finishes them: `results.json` read under the
//! hostile-input caps (or the init's account of why there is none), and the host's own
//! metadata checks put into the dict.

use std::collections::BTreeMap;
use std::path::Path;

use pyti_guest::layout;
use pyti_guest::recipe::TaskKind;
use pyti_guest::results::{
    parse_results, Results, ResultsLimits, TaskMetrics, TaskResult, TaskStatus,
};

use super::RunError;
use crate::pypidownload::{self, ResolvedSet};

/// Reads `results.json` from the copied results directory with the hostile-input caps,
/// or explains why there is none (the init's `agent-error.json`, when it wrote one).
pub(super) fn read_results_file(
    results_dir: &Path,
    console_log: &Path,
) -> Result<Results, RunError> {
    let path = results_dir.join(layout::RESULTS_FILE);
    let limits = ResultsLimits::default();
    // Size first: an oversized file is refused without being read into memory.
    if let Ok(meta) = std::fs::metadata(&path) {
        let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if size > limits.max_bytes {
            return Err(pyti_guest::results::ResultsError::TooLarge {
                size,
                limit: limits.max_bytes,
            }
            .into());
        }
    }
    match std::fs::read(&path) {
        Ok(bytes) => Ok(parse_results(&bytes, &limits)?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let record_path = results_dir.join(layout::AGENT_ERROR_FILE);
            let record = match std::fs::read_to_string(&record_path) {
                Ok(record) => record.trim().to_owned(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(error) => format!("{} unreadable: {error}", record_path.display()),
            };
            Err(RunError::AgentFailed {
                record,
                console_log: console_log.to_owned(),
            })
        }
        Err(error) => Err(RunError::io(&path, error)),
    }
}

/// Puts the host's static metadata checks in the `metadata` task (the guest leaves it
/// skipped) and decides the outcome again.
pub fn with_host_metadata(mut results: Results, resolved: &ResolvedSet) -> Results {
    let checks = serde_json::to_value(&resolved.metadata).unwrap_or_default();
    let metrics: BTreeMap<String, serde_json::Value> = match checks {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    let status = match resolved.metadata.overall() {
        pypidownload::CheckStatus::Fail => TaskStatus::Failed,
        _ => TaskStatus::Passed,
    };
    let message = format!("metadata checks: {:?}", resolved.metadata.overall()).to_lowercase();
    let task = TaskResult {
        name: TaskKind::Metadata,
        status,
        duration_s: 0.0,
        timeout_s: 0,
        log: None,
        message,
        metrics: Some(TaskMetrics::Metadata(metrics)),
        platform_fault: None,
        package_fault: None,
    };
    match results
        .tasks
        .iter_mut()
        .find(|t| t.name == TaskKind::Metadata)
    {
        Some(existing) => *existing = task,
        None => return results,
    }
    let (outcome, detail) = pyti_guest::results::decide_outcome(&results.tasks);
    results.outcome = outcome;
    results.outcome_detail = detail;
    results
}

/// The stable name of a results dict's outcome (`passed`, `install_failed`, ...).
pub fn outcome_name(results: &Results) -> String {
    serde_json::to_value(results.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_results_file_is_the_agent_s_failure_with_the_init_s_record() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join(layout::CONSOLE_LOG);
        let error = read_results_file(dir.path(), &console).unwrap_err();
        assert!(
            matches!(&error, RunError::AgentFailed { record, .. } if record.is_empty()),
            "{error}"
        );
        std::fs::write(
            dir.path().join(layout::AGENT_ERROR_FILE),
            "{\"kind\":\"agent-error\",\"exit_status\":101}\n",
        )
        .unwrap();
        let error = read_results_file(dir.path(), &console).unwrap_err();
        assert!(error.to_string().contains("\"exit_status\":101"), "{error}");
        assert!(error.to_string().contains("console.log"), "{error}");
        std::fs::write(dir.path().join(layout::RESULTS_FILE), "{").unwrap();
        let error = read_results_file(dir.path(), &console).unwrap_err();
        assert!(matches!(error, RunError::Results(_)), "{error}");
    }
}
