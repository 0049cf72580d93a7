//! The results dict as a person reads it: one line per task (status, time, key
//! findings), the behaviour verdict with its reasons, and the outcome. Pure formatting,
//! so what `pyti-vm-run` prints is tested without a VM.

use std::fmt::Write;

use pyti_guest::results::{Results, TaskMetrics, TaskStatus};

use crate::progress::Stage;

/// The summary table of one run.
pub fn render(title: &str, results: &Results, timings: &[(Stage, std::time::Duration)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "  {:<10} {:<10} {:>8}  FINDINGS",
        "TASK", "STATUS", "TIME"
    );
    for task in &results.tasks {
        let findings = findings(task.metrics.as_ref()).unwrap_or_else(|| task.message.clone());
        let _ = writeln!(
            out,
            "  {:<10} {:<10} {:>7.1}s  {}",
            task.name.as_str(),
            task.status.as_str(),
            task.duration_s,
            one_line(&findings, 90)
        );
    }
    let behaviour = results.tasks.iter().find_map(|t| match &t.metrics {
        Some(TaskMetrics::Behaviour(report)) => Some(report),
        _ => None,
    });
    if let Some(report) = behaviour {
        let verdict = serde_json::to_value(report.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(out, "  behaviour verdict: {verdict}");
        for reason in &report.reasons {
            let _ = writeln!(out, "    - {}", one_line(&reason.detail, 100));
        }
    }
    if !timings.is_empty() {
        let stages: Vec<String> = timings
            .iter()
            .map(|(stage, elapsed)| format!("{} {:.1}s", stage.as_str(), elapsed.as_secs_f64()))
            .collect();
        let _ = writeln!(out, "  stages: {}", stages.join(", "));
    }
    if let Some(cpu) = &results.platform.cpu {
        let _ = writeln!(
            out,
            "  guest: Python {}, {} (x86-64-v{})",
            results.platform.python_version.as_deref().unwrap_or("?"),
            cpu.model,
            cpu.x86_64_level
        );
    }
    let outcome = results.outcome.as_str();
    let _ = writeln!(
        out,
        "  outcome: {outcome} ({})",
        one_line(&results.outcome_detail, 100)
    );
    // Guest text is the package's as much as the agent's: no escape reaches a terminal.
    out.lines()
        .map(|line| crate::progress::neutralise(line) + "\n")
        .collect()
}

/// True when every task passed or was skipped.
pub fn all_passed(results: &Results) -> bool {
    results
        .tasks
        .iter()
        .all(|t| matches!(t.status, TaskStatus::Passed | TaskStatus::Skipped))
        && results.outcome == pyti_guest::results::Outcome::Passed
}

fn findings(metrics: Option<&TaskMetrics>) -> Option<String> {
    Some(match metrics? {
        TaskMetrics::Install(m) => {
            let mut text = format!("{} files installed", m.installed_file_count);
            if m.weird_place_count > 0 {
                let places: Vec<&str> = m
                    .weird_places
                    .iter()
                    .take(3)
                    .map(|w| w.path.as_str())
                    .collect();
                let _ = write!(
                    text,
                    "; {} written outside the environment: {}",
                    m.weird_place_count,
                    places.join(", ")
                );
            }
            text
        }
        TaskMetrics::Import(m) => {
            let ok: Vec<&str> = m
                .modules
                .iter()
                .filter(|i| i.ok)
                .map(|i| i.module.as_str())
                .collect();
            let failed: Vec<String> = m
                .modules
                .iter()
                .filter(|i| !i.ok)
                .map(|i| format!("{} ({})", i.module, i.error.as_deref().unwrap_or("error")))
                .collect();
            match (ok.is_empty(), failed.is_empty()) {
                (_, false) => format!("failed: {}", failed.join(", ")),
                (false, true) => format!("imported {}", ok.join(", ")),
                (true, true) => "no top-level modules".to_owned(),
            }
        }
        TaskMetrics::Behaviour(r) => format!(
            "{} network, {} DNS, {} processes, {} sensitive reads, {} persistence",
            r.network.len(),
            r.dns.len(),
            r.processes.len(),
            r.sensitive_reads.len(),
            r.persistence.len()
        ),
        TaskMetrics::Tests(m) => format!(
            "{} passed, {} failed, {} errors, {} skipped",
            m.passed, m.failed, m.errors, m.skipped
        ),
        TaskMetrics::Quality(m) => {
            let mut codes: Vec<(&String, &u64)> = m
                .pycodestyle
                .by_code
                .iter()
                .chain(&m.pyflakes.by_code)
                .collect();
            codes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let top: Vec<String> = codes
                .iter()
                .take(4)
                .map(|(c, n)| format!("{c}x{n}"))
                .collect();
            format!(
                "score {:.1}/10, pycodestyle {}, pyflakes {}{}",
                m.score,
                m.pycodestyle.total,
                m.pyflakes.total,
                if top.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", top.join(" "))
                }
            )
        }
        TaskMetrics::Metadata(map) => {
            let failing: Vec<&str> = map
                .iter()
                .filter(|(k, v)| {
                    k.ends_with("_check")
                        && v.get("status").and_then(|s| s.as_str()) != Some("pass")
                })
                .map(|(k, _)| k.trim_end_matches("_check"))
                .collect();
            if failing.is_empty() {
                "licence, readme, classifiers, python_requires, wheel tags, yanked: ok".to_owned()
            } else {
                format!("to look at: {}", failing.join(", "))
            }
        }
    })
}

fn one_line(text: &str, width: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > width {
        format!("{}…", line.chars().take(width - 1).collect::<String>())
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_in_guest_text_do_not_reach_the_terminal() {
        let results: Results = serde_json::from_value(serde_json::json!({
            "schema_version": 3,
            "job": {"job_id": "j", "attempt": 1, "project_name": "p", "project_version": "1",
                    "recipe_identifier": "install", "platform_identifier": "linux-debian",
                    "platform_variants": []},
            "platform": {"python_version": "3.11", "kernel": null, "machine": "x86_64",
                         "image_hash": null, "agent_version": "0"},
            "inputs": [], "tasks": [], "outcome": "install_failed",
            "outcome_detail": "install: \u{1b}]0;owned\u{7}\u{1b}[2J", "duration_s": 1.0
        }))
        .unwrap();
        let text = render("p==1", &results, &[]);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}]0;owned"), "{text}");
    }

    #[test]
    fn long_findings_are_cut_on_one_line() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line(&"x".repeat(20), 10), format!("{}…", "x".repeat(9)));
    }
}
