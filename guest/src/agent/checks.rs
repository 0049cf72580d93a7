//! The tests and quality tasks: the project's own test suite, and pycodestyle and
//! pyflakes over its sources.
//!
//! Both work from the sdist, where projects ship their tests and whole sources; the
//! tools come as wheels from the IO disk's `tools/`.

use super::env;
use super::parse;
use super::process::{Deadline, TaskLog};
use super::tasks::{TaskContext, TaskOutput};
use crate::recipe::{TaskKind, TaskSpec};
use crate::results::{QualityMetrics, TaskMetrics, TaskStatus};

impl TaskContext<'_> {
    pub(super) fn tests(
        &mut self,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<TaskOutput> {
        let install_in_recipe = self
            .job
            .recipe
            .tasks
            .iter()
            .any(|t| t.kind == TaskKind::Install);
        if install_in_recipe && self.install_failed {
            return Ok(skipped("install did not pass"));
        }
        let Some(sdist) = self.sdist().cloned() else {
            return Ok(skipped(
                "no sdist in dist/: the test suite ships in the sdist",
            ));
        };
        let dist = self
            .distribution()
            .cloned()
            .unwrap_or_else(|| sdist.clone());
        let work = self.work("tests");
        let archive = self.io(&sdist.path);
        let (root, finished) = env::extract(
            &self.children,
            &self.python,
            &archive,
            &work.join("src"),
            log,
            deadline,
        )?;
        let Some(root) = root else {
            return Ok(timed_out_or(
                finished.timed_out,
                "extracting the sdist",
                spec,
                "cannot extract the sdist",
            ));
        };
        let venv = match self.venv("tests", spec, log, deadline)? {
            Ok(venv) => venv,
            Err(output) => return Ok(output),
        };
        let target = format!("{}[test,tests,testing]", self.io(&dist.path).display());
        let finished = log.run(
            &mut self.pip_install(&venv, &[target, "pytest".to_string()]),
            None,
            deadline,
        )?;
        if !finished.success() {
            return Ok(timed_out_or(
                finished.timed_out,
                "installing the test environment",
                spec,
                "cannot install the package with its test extras and pytest from the IO disk",
            ));
        }
        let junit = work.join("junit.xml");
        let capture = work.join("pytest.txt");
        let mut command = self.children.command(venv.python(), Some(&venv.root));
        command
            .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "--junitxml"])
            .arg(&junit)
            .current_dir(&root);
        let phase = crate::behaviour::Phase::Tests;
        let finished = self.run_traced(phase, &command, Some(&capture), log, deadline)?;
        if finished.timed_out {
            return Ok(TaskOutput::timed_out("the test suite", spec, None));
        }
        let output = std::fs::read_to_string(&capture).unwrap_or_default();
        let counts = std::fs::read_to_string(&junit)
            .ok()
            .and_then(|xml| parse::junit_counts(&xml))
            .or_else(|| parse::summary_counts(&output));
        let mut metrics = counts.unwrap_or_else(|| crate::results::TestsMetrics {
            passed: 0,
            failed: 0,
            errors: 0,
            skipped: 0,
            source: "none".to_string(),
            exit_code: None,
        });
        metrics.exit_code = finished.exit_code;
        let line = format!(
            "{} passed, {} failed, {} errors, {} skipped",
            metrics.passed, metrics.failed, metrics.errors, metrics.skipped
        );
        let status = match finished.exit_code {
            Some(0) => TaskStatus::Passed,
            Some(1) => TaskStatus::Failed,
            Some(2) if metrics.errors > 0 => TaskStatus::Failed,
            Some(5) => TaskStatus::Skipped,
            _ => TaskStatus::Error,
        };
        let message = match status {
            TaskStatus::Skipped => "pytest collected no tests".to_string(),
            TaskStatus::Error => format!("pytest exited with {:?}: {line}", finished.exit_code),
            _ => line,
        };
        Ok(TaskOutput::with(
            status,
            message,
            Some(TaskMetrics::Tests(metrics)),
        ))
    }

    pub(super) fn quality(
        &mut self,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<TaskOutput> {
        let Some(source) = self.sdist().or_else(|| self.distribution()).cloned() else {
            return Ok(skipped("no distribution in dist/"));
        };
        let archive = self.io(&source.path);
        let (root, finished) = env::extract(
            &self.children,
            &self.python,
            &archive,
            &self.work("quality").join("src"),
            log,
            deadline,
        )?;
        let Some(root) = root else {
            return Ok(timed_out_or(
                finished.timed_out,
                "extracting the sources",
                spec,
                "cannot extract the sources",
            ));
        };
        let (files, lines) = env::python_sources(&root);
        if files.is_empty() {
            return Ok(skipped("the distribution has no Python sources"));
        }
        let venv = match self.venv("quality", spec, log, deadline)? {
            Ok(venv) => venv,
            Err(output) => return Ok(output),
        };
        let tools = ["pycodestyle".to_string(), "pyflakes".to_string()];
        let finished = log.run(&mut self.pip_install(&venv, &tools), None, deadline)?;
        if !finished.success() {
            return Ok(timed_out_or(
                finished.timed_out,
                "installing pycodestyle and pyflakes",
                spec,
                "cannot install pycodestyle and pyflakes from tools/",
            ));
        }
        let mut outputs = Vec::new();
        for tool in ["pycodestyle", "pyflakes"] {
            let capture = self.work("quality").join(format!("{tool}.txt"));
            let mut command = self.children.command(venv.python(), Some(&venv.root));
            command.args(["-m", tool]).arg(&root).current_dir(&root);
            let finished = log.run(&mut command, Some(&capture), deadline)?;
            if finished.timed_out {
                return Ok(TaskOutput::timed_out(tool, spec, None));
            }
            if !matches!(finished.exit_code, Some(0 | 1)) {
                return Ok(TaskOutput::error(format!(
                    "{tool} exited with {:?}",
                    finished.exit_code
                )));
            }
            outputs.push(std::fs::read_to_string(&capture).unwrap_or_default());
        }
        let pycodestyle = parse::pycodestyle_counts(&outputs[0]);
        let pyflakes = parse::pyflakes_counts(&outputs[1]);
        let score = parse::quality_score(pycodestyle.total, pyflakes.total, lines);
        let message = format!(
            "{} pycodestyle and {} pyflakes finding(s) in {} file(s), {lines} line(s); score {score}",
            pycodestyle.total,
            pyflakes.total,
            files.len()
        );
        let status = if pycodestyle.total + pyflakes.total == 0 {
            TaskStatus::Passed
        } else {
            TaskStatus::Failed
        };
        let metrics = QualityMetrics {
            files: files.len() as u64,
            lines,
            pycodestyle,
            pyflakes,
            score,
        };
        Ok(TaskOutput::with(
            status,
            message,
            Some(TaskMetrics::Quality(metrics)),
        ))
    }
}

fn skipped(message: &str) -> TaskOutput {
    TaskOutput::with(TaskStatus::Skipped, message.to_string(), None)
}

fn timed_out_or(timed_out: bool, step: &str, spec: &TaskSpec, error: &str) -> TaskOutput {
    if timed_out {
        TaskOutput::timed_out(step, spec, None)
    } else {
        TaskOutput::error(format!("{error} (see the log)"))
    }
}
