//! The install, import and behaviour tasks, and what all tasks share.
//!
//! Each task is a thin sequence of child processes (venv, pip, python, strace) whose
//! output is judged by the pure code in `parse`, `snapshot` and `behaviour`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::env::{self, ChildEnvironment, Venv};
use super::parse;
use super::process::{Deadline, Finished, TaskLog};
use super::snapshot;
use super::AgentOptions;
use crate::behaviour::{Observations, Phase, TraceContext, Verdict};
use crate::job::{GuestJob, InputFile, InputRole};
use crate::layout;
use crate::recipe::{TaskKind, TaskSpec};
use crate::results::{
    ImportMetrics, InstallMetrics, ModuleImport, TaskMetrics, TaskStatus, MAX_LISTED,
};

/// The system calls the behaviour task traces.
pub const TRACED_SYSCALLS: &str = "execve,execveat,open,openat,openat2,creat,rename,renameat,\
renameat2,link,linkat,symlink,symlinkat,mkdir,mkdirat,unlink,unlinkat,truncate,chdir,fchdir,\
clone,clone3,fork,vfork,connect,sendto,sendmsg,sendmmsg";

/// Most bytes of a trace read for analysis or copied into the results.
const MAX_TRACE_BYTES: u64 = 256 << 20;
const MAX_TRACE_COPY_BYTES: usize = 4 << 20;

const IMPORT_ONE: &str = "import importlib, sys; importlib.import_module(sys.argv[1])";
const IMPORT_ALL: &str = "import importlib, sys\nfor name in sys.argv[1:]:\n    try:\n        importlib.import_module(name)\n    except BaseException as error:\n        print(name, repr(error))\n";

/// What a task reports before the agent adds timing and the log.
pub struct TaskOutput {
    /// How it ended.
    pub status: TaskStatus,
    /// One line for humans.
    pub message: String,
    /// What it measured.
    pub metrics: Option<TaskMetrics>,
    /// Why the platform, not the package, made it fail (see `results::TaskResult`).
    pub platform_fault: Option<String>,
}

impl TaskOutput {
    pub(super) fn with(
        status: TaskStatus,
        message: impl Into<String>,
        metrics: Option<TaskMetrics>,
    ) -> Self {
        TaskOutput {
            status,
            message: message.into(),
            metrics,
            platform_fault: None,
        }
    }

    /// The task could not be run.
    pub fn error(message: impl Into<String>) -> Self {
        TaskOutput::with(TaskStatus::Error, message, None)
    }

    pub(super) fn skipped(message: impl Into<String>) -> Self {
        TaskOutput::with(TaskStatus::Skipped, message, None)
    }

    /// The task failed on an instruction the guest CPU lacks (`traps`, as the kernel
    /// logged them): an error with a platform fault naming the missing CPU features,
    /// keeping what the task measured.
    pub(super) fn on_unsupported_cpu(self, traps: &[String]) -> Self {
        let what = format!("{} (was: {})", traps.join(", "), self.message);
        let fault = match crate::cpu::current() {
            Some(cpu) => cpu.illegal_instruction(&what),
            None => format!("{what} died of SIGILL: the guest CPU lacks an instruction"),
        };
        TaskOutput {
            status: TaskStatus::Error,
            message: fault.clone(),
            metrics: self.metrics,
            platform_fault: Some(fault),
        }
    }

    pub(super) fn timed_out(step: &str, spec: &TaskSpec, metrics: Option<TaskMetrics>) -> Self {
        TaskOutput::with(
            TaskStatus::TimedOut,
            format!("the deadline of {} s passed during {step}", spec.timeout_s),
            metrics,
        )
    }
}

/// An environment the install task left for later tasks.
pub(super) struct Installed {
    pub venv: Venv,
    pub dist_info: Option<PathBuf>,
}

/// State shared by the tasks of one run.
pub(super) struct TaskContext<'a> {
    pub options: &'a AgentOptions,
    pub job: &'a GuestJob,
    pub python: PathBuf,
    pub children: ChildEnvironment,
    pub template: Option<PathBuf>,
    pub installed: Option<Installed>,
    pub install_failed: bool,
}

impl<'a> TaskContext<'a> {
    pub fn new(options: &'a AgentOptions, job: &'a GuestJob, python: PathBuf) -> Self {
        let template = options
            .venv_template
            .clone()
            .or_else(|| job.venv_template.as_ref().map(PathBuf::from));
        TaskContext {
            options,
            job,
            python,
            children: ChildEnvironment {
                home: options.home.clone(),
                tmp: options.work_dir.join("tmp"),
            },
            template,
            installed: None,
            install_failed: false,
        }
    }

    /// Runs one task with its log at `log_path`.
    pub fn run_task(&mut self, spec: &TaskSpec, log_path: &Path) -> TaskOutput {
        if spec.kind == TaskKind::Metadata {
            return TaskOutput::skipped("computed on the host, which fills in this entry");
        }
        let mut log = match TaskLog::create(log_path) {
            Ok(log) => log,
            Err(error) => {
                return TaskOutput::error(format!("cannot write {}: {error}", log_path.display()))
            }
        };
        if let Err(error) = env::fresh_dir(&self.children.tmp) {
            return TaskOutput::error(format!("cannot prepare the temp dir: {error}"));
        }
        let deadline = Deadline::after_s(spec.timeout_s);
        let mut kernel = super::traps::KernelLog::from_now();
        let outcome = match spec.kind {
            TaskKind::Install => self.install(spec, &mut log, deadline),
            TaskKind::Import => self.import(spec, &mut log, deadline),
            TaskKind::Behaviour => self.behaviour(spec, &mut log, deadline),
            TaskKind::Tests => self.tests(spec, &mut log, deadline),
            TaskKind::Quality => self.quality(spec, &mut log, deadline),
            TaskKind::Metadata => unreachable!("handled above"),
        };
        let mut output =
            outcome.unwrap_or_else(|error| TaskOutput::error(format!("agent I/O error: {error}")));
        let traps = kernel.invalid_opcode_traps();
        if output.status != TaskStatus::Passed && !traps.is_empty() {
            output = output.on_unsupported_cpu(&traps);
        }
        log.note(&format!("{:?}: {}", output.status, output.message));
        output
    }

    pub fn work(&self, name: &str) -> PathBuf {
        self.options.work_dir.join(name)
    }

    fn io(&self, path: &str) -> PathBuf {
        self.options.io_dir.join(path)
    }

    /// The distribution to install: the wheel when there is one, else the sdist.
    pub fn distribution(&self) -> Option<&InputFile> {
        self.job
            .inputs_with(InputRole::Wheel)
            .next()
            .or_else(|| self.job.inputs_with(InputRole::Sdist).next())
    }

    pub fn sdist(&self) -> Option<&InputFile> {
        self.job.inputs_with(InputRole::Sdist).next()
    }

    /// A fresh venv for a task under `work/<name>/env`; Err carries the task's output.
    pub fn venv(
        &self,
        name: &str,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<Result<Venv, TaskOutput>> {
        let dest = self.work(name).join("env");
        let (venv, finished) = env::make_venv(
            &self.children,
            self.template.as_deref(),
            &self.python,
            &dest,
            log,
            deadline,
        )?;
        Ok(if finished.timed_out {
            Err(TaskOutput::timed_out("creating the virtualenv", spec, None))
        } else if !finished.success() {
            Err(TaskOutput::error(
                "could not create a virtualenv (see the log)",
            ))
        } else {
            Ok(venv)
        })
    }

    /// `python -m pip install --no-index --find-links <IO dirs> <targets>`.
    pub fn pip_install(&self, venv: &Venv, targets: &[String]) -> Command {
        let mut command = self.children.command(venv.python(), Some(&venv.root));
        command.args(["-m", "pip", "install", "--no-index"]);
        for dir in layout::FIND_LINKS_DIRS {
            let path = self.io(dir);
            if path.is_dir() {
                command.arg("--find-links").arg(path);
            }
        }
        command.args(targets).current_dir(&self.options.work_dir);
        command
    }

    /// The `.dist-info` of the project under test in a venv.
    pub fn dist_info(&self, venv: &Venv) -> Option<PathBuf> {
        let site = venv.site_packages()?;
        let mut wanted = vec![parse::canonical_name(&self.job.project_name)];
        if let Some(name) = self
            .distribution()
            .and_then(|d| d.path.rsplit('/').next())
            .and_then(parse::distribution_file_project)
        {
            wanted.push(name);
        }
        std::fs::read_dir(site)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse::dist_info_project)
                    .is_some_and(|project| wanted.contains(&project))
            })
    }

    fn install(
        &mut self,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<TaskOutput> {
        self.install_failed = true;
        let Some(dist) = self.distribution().cloned() else {
            return Ok(TaskOutput::error("job.json lists no distribution in dist/"));
        };
        let venv = match self.venv("install", spec, log, deadline)? {
            Ok(venv) => venv,
            Err(output) => return Ok(output),
        };
        let roots = snapshot::roots_or_default(&self.options.snapshot_roots);
        let mut excluded = vec![self.options.work_dir.clone(), self.options.io_dir.clone()];
        excluded.extend(self.template.clone());
        log.note(&format!(
            "snapshot roots: {roots:?}, excluded: {excluded:?}"
        ));
        let before = snapshot::take(&roots, &excluded);
        let finished = log.run(
            &mut self.pip_install(&venv, &[self.io(&dist.path).display().to_string()]),
            None,
            deadline,
        )?;
        let after = snapshot::take(&roots, &excluded);
        let weird = snapshot::changes(&before, &after);
        let dist_info = self.dist_info(&venv);
        let installed: Vec<String> = dist_info
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("RECORD")).ok())
            .map(|record| parse::record_paths(&record))
            .unwrap_or_default();
        let metrics = InstallMetrics {
            installed_from: dist.path.clone(),
            pip_exit_code: finished.exit_code,
            installed_file_count: installed.len() as u64,
            installed_files: installed.into_iter().take(MAX_LISTED).collect(),
            weird_place_count: weird.len() as u64,
            weird_places: weird.into_iter().take(MAX_LISTED).collect(),
        };
        let weird_note = match metrics.weird_place_count {
            0 => String::new(),
            n => format!("; {n} file(s) written outside the environment"),
        };
        let metrics_out = Some(TaskMetrics::Install(metrics));
        if finished.timed_out {
            return Ok(TaskOutput::timed_out("pip install", spec, metrics_out));
        }
        if !finished.success() {
            return Ok(TaskOutput::with(
                TaskStatus::Failed,
                format!(
                    "pip install exited with {:?}{weird_note}",
                    finished.exit_code
                ),
                metrics_out,
            ));
        }
        self.install_failed = false;
        self.installed = Some(Installed { venv, dist_info });
        Ok(TaskOutput::with(
            TaskStatus::Passed,
            format!("installed {}{weird_note}", dist.path),
            metrics_out,
        ))
    }

    fn import(
        &mut self,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<TaskOutput> {
        let Some(installed) = &self.installed else {
            return Ok(TaskOutput::skipped("install did not pass"));
        };
        let modules = modules_of(installed.dist_info.as_deref());
        if modules.is_empty() {
            return Ok(TaskOutput::skipped(
                "the distribution installs no top-level module",
            ));
        }
        let cwd = self.work("import");
        env::fresh_dir(&cwd)?;
        let mut results = Vec::new();
        for module in &modules {
            let capture = cwd.join("output.txt");
            let mut command = self
                .children
                .command(installed.venv.python(), Some(&installed.venv.root));
            command.args(["-c", IMPORT_ONE, module]).current_dir(&cwd);
            let finished = log.run(&mut command, Some(&capture), deadline)?;
            if finished.timed_out {
                let metrics = TaskMetrics::Import(ImportMetrics { modules: results });
                return Ok(TaskOutput::timed_out(
                    &format!("import {module}"),
                    spec,
                    Some(metrics),
                ));
            }
            let output = std::fs::read_to_string(&capture).unwrap_or_default();
            results.push(ModuleImport {
                module: module.clone(),
                ok: finished.success(),
                error: (!finished.success()).then(|| last_line(&output)),
            });
        }
        let failed: Vec<&str> = results
            .iter()
            .filter(|m| !m.ok)
            .map(|m| m.module.as_str())
            .collect();
        let (status, message) = if failed.is_empty() {
            (
                TaskStatus::Passed,
                format!("imported {}", modules.join(", ")),
            )
        } else {
            (
                TaskStatus::Failed,
                format!("cannot import {}", failed.join(", ")),
            )
        };
        Ok(TaskOutput::with(
            status,
            message,
            Some(TaskMetrics::Import(ImportMetrics { modules: results })),
        ))
    }

    fn strace(&self, trace: &Path, program: &Path, venv: &Venv) -> Command {
        let mut command = self
            .children
            .command(&self.options.strace, Some(&venv.root));
        command
            .args(["-f", "-tt", "-y", "-s", "256", "-e"])
            .arg(format!("trace={TRACED_SYSCALLS}"))
            .arg("-o")
            .arg(trace)
            .arg("--")
            .arg(program);
        command
    }

    fn behaviour(
        &mut self,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<TaskOutput> {
        let Some(dist) = self.distribution().cloned() else {
            return Ok(TaskOutput::error("job.json lists no distribution in dist/"));
        };
        let venv = match self.venv("behaviour", spec, log, deadline)? {
            Ok(venv) => venv,
            Err(output) => return Ok(output),
        };
        let cwd = self.work("behaviour").join("cwd");
        env::fresh_dir(&cwd)?;
        let install_trace = self.work("behaviour").join("install.trace");
        let import_trace = self.work("behaviour").join("import.trace");
        let pip = self.pip_install(&venv, &[self.io(&dist.path).display().to_string()]);
        let mut command = self.strace(&install_trace, &venv.python(), &venv);
        command.args(pip.get_args()).current_dir(&cwd);
        let install = match log.run(&mut command, None, deadline) {
            Ok(finished) => finished,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TaskOutput::error(format!(
                    "cannot run {}: {error}",
                    self.options.strace.display()
                )))
            }
            Err(error) => return Err(error),
        };
        let mut import = Finished {
            exit_code: None,
            timed_out: false,
        };
        let modules = modules_of(self.dist_info(&venv).as_deref());
        if install.success() && !modules.is_empty() {
            let mut command = self.strace(&import_trace, &venv.python(), &venv);
            command
                .args(["-c", IMPORT_ALL])
                .args(&modules)
                .current_dir(&cwd);
            import = log.run(&mut command, None, deadline)?;
        }
        let context = TraceContext {
            home: self.options.home.display().to_string(),
            environment_roots: vec![self.options.work_dir.display().to_string()],
            initial_cwd: cwd.display().to_string(),
        };
        let mut observations = Observations::default();
        for (path, phase) in [
            (&install_trace, Phase::Install),
            (&import_trace, Phase::Import),
        ] {
            let text = read_capped(path, MAX_TRACE_BYTES);
            observations.read_trace(&text, phase, &context);
            let copy = layout::behaviour_trace(if phase == Phase::Install {
                "install"
            } else {
                "import"
            });
            if !text.is_empty() {
                let cut = text.len().min(MAX_TRACE_COPY_BYTES);
                let cut = (0..=cut)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                std::fs::write(
                    layout::results_dir(&self.options.io_dir).join(copy),
                    &text[..cut],
                )?;
            }
        }
        let mut report = observations.report();
        report.install_exit_code = install.exit_code;
        report.import_exit_code = import.exit_code;
        let verdict = report.verdict;
        let summary = match report.reasons.len() {
            0 => "clean: no network, no sensitive files, no persistence, no writes outside the environment".to_string(),
            n => format!(
                "{}: {n} reason(s), first: {}",
                match verdict {
                    Verdict::Malicious => "malicious",
                    Verdict::Suspicious => "suspicious",
                    Verdict::Clean => "clean",
                },
                report.reasons[0].detail
            ),
        };
        let metrics = Some(TaskMetrics::Behaviour(report));
        if install.timed_out || import.timed_out {
            let step = if install.timed_out {
                "the traced install"
            } else {
                "the traced import"
            };
            return Ok(TaskOutput::timed_out(step, spec, metrics));
        }
        let status = if verdict == Verdict::Clean {
            TaskStatus::Passed
        } else {
            TaskStatus::Failed
        };
        Ok(TaskOutput::with(status, summary, metrics))
    }
}

/// The top-level modules recorded in a `.dist-info`.
pub fn modules_of(dist_info: Option<&Path>) -> Vec<String> {
    let Some(dist_info) = dist_info else {
        return Vec::new();
    };
    let top_level = std::fs::read_to_string(dist_info.join("top_level.txt")).ok();
    let record = std::fs::read_to_string(dist_info.join("RECORD")).unwrap_or_default();
    parse::top_level_modules(top_level.as_deref(), &record)
}

/// The last non-empty line of a program's output, at most 1000 characters.
pub fn last_line(output: &str) -> String {
    let line = output
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim();
    line.chars().take(1000).collect()
}

fn read_capped(path: &Path, cap: u64) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(cap).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
