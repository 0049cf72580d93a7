//! Fresh Python environments, the environment variables every child gets, and
//! extracting sources: the shared plumbing of the tasks.
//!
//! Each task gets its own virtualenv, copied from the image's ready template when there
//! is one (a `cp -a` is much faster than `python -m venv` with ensurepip under TCG), so
//! no task sees what another installed. Children get a cleared, fixed environment so
//! that a run does not depend on how the agent itself was started.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{Deadline, Finished, TaskLog};

/// Recreates `dir` empty.
pub fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::fs::create_dir_all(dir)
}

/// `platform.python_version()` of an interpreter.
pub fn python_version(python: &Path) -> Option<String> {
    let output = Command::new(python)
        .args(["-c", "import platform; print(platform.python_version())"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !version.is_empty()).then_some(version)
}

/// The fixed environment of every child process.
#[derive(Debug, Clone)]
pub struct ChildEnvironment {
    /// `HOME`.
    pub home: PathBuf,
    /// `TMPDIR`, inside the work directory.
    pub tmp: PathBuf,
    /// True when children run as the package user in the sandbox (in a VM).
    pub sandboxed: bool,
}

impl ChildEnvironment {
    /// A command for `program` with a cleared environment: `PATH` starting at
    /// `venv/bin` when given, `HOME`, `TMPDIR`, a UTF-8 locale, and pip told to use no
    /// cache, no configuration file, no prompts and no version check.
    pub fn command(&self, program: impl Into<OsString>, venv: Option<&Path>) -> Command {
        let mut path = String::new();
        if let Some(venv) = venv {
            path.push_str(&venv.join("bin").display().to_string());
            path.push(':');
        }
        path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let mut command = Command::new(program.into());
        command
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("TMPDIR", &self.tmp)
            .env("LANG", "C.UTF-8")
            .env("PIP_NO_CACHE_DIR", "1")
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PIP_NO_INPUT", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PYTHONUNBUFFERED", "1");
        if let Some(venv) = venv {
            command.env("VIRTUAL_ENV", venv);
        }
        if self.sandboxed {
            if let Some(sandbox) = super::sandbox::active() {
                sandbox.confine(&mut command);
                command.env("USER", &sandbox.identity.user);
                command.env("LOGNAME", &sandbox.identity.user);
                command.envs(sandbox.decoy_environment());
            }
        }
        command
    }

    /// A command of the agent's own (trusted code, root in a VM) with the same fixed
    /// environment but outside the sandbox.
    pub fn agent_command(&self, program: impl Into<OsString>) -> Command {
        let quiet = ChildEnvironment {
            sandboxed: false,
            ..self.clone()
        };
        quiet.command(program, None)
    }

    /// Creates `dir` (if missing) and hands it to the package user when sandboxed.
    pub fn package_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        self.own(dir)
    }

    /// Hands `path` to the package user when sandboxed.
    pub fn own(&self, path: &Path) -> std::io::Result<()> {
        match (self.sandboxed, super::sandbox::active()) {
            (true, Some(sandbox)) => sandbox.own(path),
            _ => Ok(()),
        }
    }

    /// Hands the tree under `path` to the package user when sandboxed.
    pub fn own_tree(&self, path: &Path) -> std::io::Result<()> {
        self.own(path)?;
        if !self.sandboxed {
            return Ok(());
        }
        for entry in std::fs::read_dir(path)?.flatten() {
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.own_tree(&entry.path())?;
            } else if !kind.is_symlink() {
                self.own(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// A virtualenv made for one task.
#[derive(Debug, Clone)]
pub struct Venv {
    /// Its root.
    pub root: PathBuf,
}

impl Venv {
    /// Its interpreter.
    pub fn python(&self) -> PathBuf {
        self.root.join("bin").join("python")
    }

    /// Its `lib/pythonX.Y/site-packages`, if it exists.
    pub fn site_packages(&self) -> Option<PathBuf> {
        let lib = self.root.join("lib");
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(&lib)
            .ok()?
            .flatten()
            .map(|entry| entry.path().join("site-packages"))
            .filter(|path| path.is_dir())
            .collect();
        candidates.sort();
        candidates.pop()
    }
}

/// Makes a fresh virtualenv at `dest`: a copy of `template` when given, else
/// `python -m venv`.
pub fn make_venv(
    children: &ChildEnvironment,
    template: Option<&Path>,
    python: &Path,
    dest: &Path,
    log: &mut TaskLog,
    deadline: Deadline,
) -> std::io::Result<(Venv, Finished)> {
    let _ = std::fs::remove_dir_all(dest);
    if let Some(parent) = dest.parent() {
        children.package_dir(parent)?;
    }
    let mut command = match template {
        Some(template) => {
            let mut command = children.command("cp", None);
            command.arg("-a").arg(template).arg(dest);
            command
        }
        None => {
            let mut command = children.command(python, None);
            command.args(["-m", "venv"]).arg(dest);
            command
        }
    };
    let finished = log.run(&mut command, None, deadline)?;
    Ok((
        Venv {
            root: dest.to_path_buf(),
        },
        finished,
    ))
}

/// Extracts an sdist (`.tar.gz` or `.zip`) or a wheel into `dest` with the guest's
/// Python, refusing absolute paths, `..`, links and devices, and returns the project
/// root: the archive's single top-level directory, or `dest` itself.
pub fn extract(
    children: &ChildEnvironment,
    python: &Path,
    archive: &Path,
    dest: &Path,
    log: &mut TaskLog,
    deadline: Deadline,
) -> std::io::Result<(Option<PathBuf>, Finished)> {
    const SCRIPT: &str = r#"
import os, sys, tarfile, zipfile
archive, dest = sys.argv[1], sys.argv[2]
def safe(name):
    parts = name.replace("\\", "/").split("/")
    return not name.startswith("/") and ".." not in parts
if archive.endswith((".zip", ".whl")):
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if safe(info.filename):
                z.extract(info, dest)
else:
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            if (member.isfile() or member.isdir()) and safe(member.name):
                member.mode = 0o755 if member.isdir() else 0o644
                t.extract(member, dest, set_attrs=False)
"#;
    fresh_dir(dest)?;
    if let Some(parent) = dest.parent() {
        children.package_dir(parent)?;
    }
    // The agent's own script, reading the archive where only the agent may: the
    // package's files are handed to the package user afterwards.
    let mut command = children.agent_command(python);
    command.args(["-c", SCRIPT]).arg(archive).arg(dest);
    let finished = log.run(&mut command, None, deadline)?;
    if !finished.success() {
        return Ok((None, finished));
    }
    children.own_tree(dest)?;
    let entries: Vec<PathBuf> = std::fs::read_dir(dest)?
        .flatten()
        .map(|entry| entry.path())
        .collect();
    let root = match entries.as_slice() {
        [single] if single.is_dir() && !archive.to_string_lossy().ends_with(".whl") => {
            single.clone()
        }
        _ => dest.to_path_buf(),
    };
    Ok((Some(root), finished))
}

/// Python files under `dir` (hidden directories, `build`, `.eggs`, `__pycache__` and
/// metadata directories skipped) and their total number of lines.
pub fn python_sources(dir: &Path) -> (Vec<PathBuf>, u64) {
    let mut files = Vec::new();
    let mut lines = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skipped = name.starts_with('.')
                    || ["build", "__pycache__", "node_modules"].contains(&name.as_str())
                    || name.ends_with(".egg-info")
                    || name.ends_with(".dist-info");
                if !skipped {
                    stack.push(path);
                }
            } else if kind.is_file() && name.ends_with(".py") {
                if let Ok(bytes) = std::fs::read(&path) {
                    lines += bytes.iter().filter(|b| **b == b'\n').count() as u64;
                }
                files.push(path);
            }
        }
    }
    files.sort();
    (files, lines)
}
