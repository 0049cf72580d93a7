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
    ImportMetrics, InstallMetrics, ModuleImport, PackageFault, TaskMetrics, TaskStatus, MAX_LISTED,
};

/// The system calls the behaviour task traces.
pub const TRACED_SYSCALLS: &str = "execve,execveat,open,openat,openat2,creat,rename,renameat,\
renameat2,link,linkat,symlink,symlinkat,mkdir,mkdirat,unlink,unlinkat,truncate,chdir,fchdir,\
clone,clone3,fork,vfork,connect,sendto,sendmsg,sendmmsg,kill,tkill,tgkill,reboot";

/// Most console scripts run with `--help` per distribution.
const MAX_CONSOLE_SCRIPTS: usize = 20;

/// Most bytes of a trace read for analysis or copied into the results.
const MAX_TRACE_BYTES: u64 = 256 << 20;
const MAX_TRACE_COPY_BYTES: usize = 4 << 20;

/// Imports `argv[1]`; on failure writes the traceback's last line to `argv[2]` too (the
/// output goes to the task log, the trace keeps everything the import did).
const IMPORT_CAPTURED: &str = "import importlib, sys, traceback\ntry:\n    importlib.import_module(sys.argv[1])\nexcept BaseException as error:\n    traceback.print_exc()\n    open(sys.argv[2], 'w').write(''.join(traceback.format_exception_only(type(error), error)))\n    sys.exit(1)\n";
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
    /// How the package harmed the sandbox during the task, if it did.
    pub package_fault: Option<PackageFault>,
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
            package_fault: None,
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
            package_fault: self.package_fault,
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
    /// Where the inputs are read from: the IO disk on a host, the agent's world-readable
    /// copy in a VM (the IO disk itself is the agent's alone).
    pub inputs_root: PathBuf,
    /// The traces of the phases that ran package code so far, each kept once for the
    /// behaviour analysis (no phase runs twice to be traced).
    pub traces: Vec<PhaseTrace>,
    /// How many of them the behaviour task analysed (later phases, the test suite's,
    /// are added to its report at the end of the run).
    pub analysed: Option<usize>,
}

/// One traced run of package code.
pub(super) struct PhaseTrace {
    pub phase: Phase,
    pub path: PathBuf,
    pub cwd: PathBuf,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
}

impl<'a> TaskContext<'a> {
    pub fn new(
        options: &'a AgentOptions,
        job: &'a GuestJob,
        python: PathBuf,
        inputs_root: PathBuf,
    ) -> Self {
        let template = options
            .venv_template
            .clone()
            .or_else(|| job.venv_template.as_ref().map(PathBuf::from));
        let sandbox = super::sandbox::active();
        TaskContext {
            options,
            job,
            python,
            children: ChildEnvironment {
                home: sandbox.map_or_else(|| options.home.clone(), |s| s.identity.home()),
                tmp: options.work_dir.join("tmp"),
                sandboxed: sandbox.is_some(),
            },
            template,
            installed: None,
            install_failed: false,
            inputs_root,
            traces: Vec::new(),
            analysed: None,
        }
    }

    /// Runs `command` (package code in `venv`, from `cwd`) under strace with its trace
    /// kept for the behaviour analysis as `phase`; without strace, untraced.
    pub(super) fn run_traced(
        &mut self,
        phase: Phase,
        command: &Command,
        capture: Option<&Path>,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<Finished> {
        let cwd = command
            .get_current_dir()
            .map_or_else(|| self.options.work_dir.clone(), Path::to_path_buf);
        let path = self.agent_file(&format!("{}-{}.trace", phase.as_str(), self.traces.len()));
        let mut traced = self.strace(&path, command);
        let finished = log.run(&mut traced, capture, deadline).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot run {}: {error}", self.options.strace.display()),
            )
        })?;
        self.traces.push(PhaseTrace {
            phase,
            path,
            cwd,
            exit_code: finished.exit_code,
            timed_out: finished.timed_out,
        });
        Ok(finished)
    }

    /// Attacks on the sandbox in the traces of `phase` so far.
    fn tampering(&self, phase: Phase) -> Option<PackageFault> {
        let attempts: Vec<String> = self
            .traces
            .iter()
            .filter(|t| t.phase == phase)
            .flat_map(|t| {
                crate::behaviour::tamper::attempts(&read_capped(&t.path, MAX_TRACE_BYTES))
            })
            .collect();
        (!attempts.is_empty()).then(|| PackageFault {
            kind: crate::results::PackageFaultKind::Tampering,
            detail: format!(
                "{} attempt(s) on the sandbox during {}: {}",
                attempts.len(),
                phase.as_str(),
                attempts
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })
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
        let tmp = &self.children.tmp;
        if let Err(error) = env::fresh_dir(tmp).and_then(|()| self.children.own(tmp)) {
            return TaskOutput::error(format!("cannot prepare the temp dir: {error}"));
        }
        let sandbox = super::sandbox::active();
        let counters = sandbox.map(super::sandbox::Sandbox::counters);
        let deadline = Deadline::after_s(spec.timeout_s);
        let first_trace = self.traces.len();
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
        if let (Some(sandbox), Some(before)) = (sandbox, counters) {
            let dirs = [
                self.options.work_dir.as_path(),
                self.children.home.as_path(),
            ];
            if let Some(fault) = sandbox.exhaustion(before, &dirs) {
                log.note(&format!("resource exhaustion: {}", fault.detail));
                output.package_fault = output.package_fault.take().or(Some(fault));
            }
        }
        let mut traps = kernel.invalid_opcode_traps();
        if traps.is_empty() && output.status != TaskStatus::Passed {
            traps = self.traces[first_trace..]
                .iter()
                .flat_map(|t| {
                    super::traps::traced_sigill_traps(&read_capped(&t.path, MAX_TRACE_BYTES))
                })
                .collect();
        }
        if output.status != TaskStatus::Passed && !traps.is_empty() {
            output = output.on_unsupported_cpu(&traps);
        }
        log.note(&format!("{:?}: {}", output.status, output.message));
        output
    }

    /// `work/<name>`, created and writable by package code.
    pub fn work(&self, name: &str) -> PathBuf {
        let dir = self.options.work_dir.join(name);
        if let Err(error) = self.children.package_dir(&dir) {
            eprintln!("pyti-guest: cannot prepare {}: {error}", dir.display());
        }
        dir
    }

    /// A file of the agent's own in the work directory (traces): package code cannot
    /// replace it.
    pub fn agent_file(&self, name: &str) -> PathBuf {
        self.options.work_dir.join(name)
    }

    /// An input (`dist/...`, `wheels/`, `tools/`), where package code may read it.
    pub fn io(&self, path: &str) -> PathBuf {
        self.inputs_root.join(path)
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

    /// `python -m pip install --no-index --use-pep517 --find-links <IO dirs> <targets>`:
    /// a setup.py-only sdist is built into a wheel (with setuptools and wheel from the
    /// IO disk) rather than `setup.py install`ed, so it leaves a RECORD and
    /// `top_level.txt` like any wheel.
    pub fn pip_install(&self, venv: &Venv, targets: &[String]) -> Command {
        let mut command = self.children.command(venv.python(), Some(&venv.root));
        command.args(["-m", "pip", "install", "--no-index", "--use-pep517"]);
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
        let pip = self.pip_install(&venv, &[self.io(&dist.path).display().to_string()]);
        let finished = self.run_traced(Phase::Install, &pip, None, log, deadline)?;
        let tampering = self.tampering(Phase::Install);
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
        let mut output = if finished.timed_out {
            TaskOutput::timed_out("pip install", spec, metrics_out)
        } else if !finished.success() {
            TaskOutput::with(
                TaskStatus::Failed,
                format!(
                    "pip install exited with {:?}{weird_note}",
                    finished.exit_code
                ),
                metrics_out,
            )
        } else {
            self.install_failed = false;
            self.installed = Some(Installed { venv, dist_info });
            TaskOutput::with(
                TaskStatus::Passed,
                format!("installed {}{weird_note}", dist.path),
                metrics_out,
            )
        };
        output.package_fault = tampering;
        Ok(output)
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
        let modules = self.modules(installed);
        if modules.is_empty() {
            return Ok(TaskOutput::skipped(
                "the distribution installs no top-level module",
            ));
        }
        let cwd = self.work("import");
        env::fresh_dir(&cwd)?;
        self.children.own(&cwd)?;
        let mut results = Vec::new();
        let venv = installed.venv.clone();
        let scripts = installed
            .dist_info
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("entry_points.txt")).ok())
            .map(|text| parse::console_scripts(&text))
            .unwrap_or_default();
        for module in &modules {
            let capture = cwd.join("output.txt");
            let mut command = self.children.command(venv.python(), Some(&venv.root));
            command
                .args(["-c", IMPORT_CAPTURED, module])
                .arg(&capture)
                .current_dir(&cwd);
            let _ = std::fs::remove_file(&capture);
            let finished = self.run_traced(Phase::Import, &command, None, log, deadline)?;
            if finished.timed_out {
                let metrics = TaskMetrics::Import(ImportMetrics {
                    modules: results,
                    console_scripts: Vec::new(),
                });
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
        let mut console_scripts = Vec::new();
        for name in scripts.iter().take(MAX_CONSOLE_SCRIPTS) {
            let mut command = self
                .children
                .command(venv.root.join("bin").join(name), Some(&venv.root));
            command.arg("--help").current_dir(&cwd);
            let phase = Phase::ConsoleScript;
            let finished = self.run_traced(phase, &command, None, log, deadline)?;
            console_scripts.push(crate::results::ConsoleScriptRun {
                name: name.clone(),
                exit_code: finished.exit_code,
            });
            if finished.timed_out {
                let metrics = TaskMetrics::Import(ImportMetrics {
                    modules: results,
                    console_scripts,
                });
                let step = format!("console script {name} --help");
                return Ok(TaskOutput::timed_out(&step, spec, Some(metrics)));
            }
        }
        let failed: Vec<&str> = results
            .iter()
            .filter(|m| !m.ok)
            .map(|m| m.module.as_str())
            .collect();
        let ran_scripts = match console_scripts.len() {
            0 => String::new(),
            n => format!("; ran {n} console script(s) with --help"),
        };
        let (status, message) = if failed.is_empty() {
            (
                TaskStatus::Passed,
                format!("imported {}{ran_scripts}", modules.join(", ")),
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
            Some(TaskMetrics::Import(ImportMetrics {
                modules: results,
                console_scripts,
            })),
        ))
    }

    /// `command` (a child command, package code) under strace writing to `trace`:
    /// same program, arguments, environment and directory.
    fn strace(&self, trace: &Path, command: &Command) -> Command {
        let mut traced = Command::new(&self.options.strace);
        traced.env_clear();
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                traced.env(key, value);
            }
        }
        if let Some(cwd) = command.get_current_dir() {
            traced.current_dir(cwd);
        }
        // strace stays root (its trace out of the package's reach) in the package's
        // cgroup, and runs the package as the package user.
        if let Some(sandbox) = super::sandbox::active().filter(|_| self.children.sandboxed) {
            sandbox.contain_tracer(&mut traced);
            traced.arg("-u").arg(&sandbox.identity.user);
        }
        traced
            .args(["-f", "-tt", "-y", "-s", "256", "-e"])
            .arg(format!("trace={TRACED_SYSCALLS}"))
            .arg("-o")
            .arg(trace)
            .arg("--")
            .arg(command.get_program())
            .args(command.get_args());
        traced
    }

    fn behaviour(
        &mut self,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<TaskOutput> {
        let first_trace = self.traces.len();
        if !self.traces.iter().any(|t| t.phase == Phase::Install) {
            // No install task before this one (the `behaviour` recipe): install and
            // import here, traced. Otherwise their traces are analysed as they are:
            // no phase runs twice.
            if let Some(output) = self.install_and_import_traced(spec, log, deadline)? {
                return Ok(output);
            }
        }
        let (report, summary) = self.analyse()?;
        self.analysed = Some(self.traces.len());
        log.note(&format!("analysed {} trace(s)", self.traces.len()));
        let verdict = report.verdict;
        let metrics = Some(TaskMetrics::Behaviour(report));
        if let Some(late) = self.traces[first_trace..].iter().find(|t| t.timed_out) {
            let step = format!("the traced {}", late.phase.as_str());
            return Ok(TaskOutput::timed_out(&step, spec, metrics));
        }
        let status = if verdict == Verdict::Clean {
            TaskStatus::Passed
        } else {
            TaskStatus::Failed
        };
        Ok(TaskOutput::with(status, summary, metrics))
    }

    /// The behaviour recipe's own traced install and import; `Some` when it cannot run.
    fn install_and_import_traced(
        &mut self,
        spec: &TaskSpec,
        log: &mut TaskLog,
        deadline: Deadline,
    ) -> std::io::Result<Option<TaskOutput>> {
        let Some(dist) = self.distribution().cloned() else {
            return Ok(Some(TaskOutput::error(
                "job.json lists no distribution in dist/",
            )));
        };
        let venv = match self.venv("behaviour", spec, log, deadline)? {
            Ok(venv) => venv,
            Err(output) => return Ok(Some(output)),
        };
        let cwd = self.work("behaviour").join("cwd");
        env::fresh_dir(&cwd)?;
        self.children.own(&cwd)?;
        let mut pip = self.pip_install(&venv, &[self.io(&dist.path).display().to_string()]);
        pip.current_dir(&cwd);
        let install = self.run_traced(Phase::Install, &pip, None, log, deadline)?;
        let modules = modules_of(self.dist_info(&venv).as_deref());
        if install.success() && !modules.is_empty() {
            let mut command = self.children.command(venv.python(), Some(&venv.root));
            command
                .args(["-c", IMPORT_ALL])
                .args(&modules)
                .current_dir(&cwd);
            self.run_traced(Phase::Import, &command, None, log, deadline)?;
        }
        Ok(None)
    }

    /// The behaviour report of every trace so far, and its one-line summary; the
    /// traces are kept in the results, one file per phase.
    pub fn analyse(&self) -> std::io::Result<(crate::behaviour::BehaviourReport, String)> {
        let mut observations = Observations::default();
        let mut copies: Vec<(Phase, String)> = Vec::new();
        for trace in &self.traces {
            let context = TraceContext {
                home: self.children.home.display().to_string(),
                environment_roots: vec![self.options.work_dir.display().to_string()],
                initial_cwd: trace.cwd.display().to_string(),
                decoys: super::sandbox::active()
                    .filter(|_| self.children.sandboxed)
                    .map(|s| s.decoys.clone())
                    .unwrap_or_default(),
            };
            let text = read_capped(&trace.path, MAX_TRACE_BYTES);
            observations.read_trace(&text, trace.phase, &context);
            match copies.iter_mut().find(|(p, _)| *p == trace.phase) {
                Some((_, kept)) if kept.len() < MAX_TRACE_COPY_BYTES => kept.push_str(&text),
                Some(_) => {}
                None => copies.push((trace.phase, text)),
            }
        }
        for (phase, text) in copies.iter().filter(|(_, t)| !t.is_empty()) {
            let cut = text.len().min(MAX_TRACE_COPY_BYTES);
            let cut = (0..=cut)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            std::fs::write(
                layout::results_dir(&self.options.io_dir)
                    .join(layout::behaviour_trace(phase.as_str())),
                &text[..cut],
            )?;
        }
        let mut report = observations.report();
        let exit = |phase: Phase| {
            self.traces
                .iter()
                .rev()
                .find(|t| t.phase == phase)
                .and_then(|t| t.exit_code)
        };
        report.install_exit_code = exit(Phase::Install);
        report.import_exit_code = exit(Phase::Import);
        let summary = match report.reasons.len() {
            0 => "clean: no network, no sensitive files, no persistence, no writes outside the environment".to_string(),
            n => format!(
                "{}: {n} reason(s), first: {}",
                match report.verdict {
                    Verdict::Malicious => "malicious",
                    Verdict::Suspicious => "suspicious",
                    Verdict::Clean => "clean",
                },
                report.reasons[0].detail
            ),
        };
        Ok((report, summary))
    }

    /// The top-level modules of what was installed.
    fn modules(&self, installed: &Installed) -> Vec<String> {
        modules_of(installed.dist_info.as_deref())
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
