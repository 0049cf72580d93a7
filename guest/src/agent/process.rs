//! Child processes with a deadline and their output in the task's log.
//!
//! A package's build or test suite can hang, fork helpers, or ignore SIGTERM. Each
//! command therefore runs in its own process group, and when the task's deadline
//! passes the whole group gets SIGKILL, so the next task starts with nothing left over.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The moment a task must be finished by.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline `seconds` from now.
    pub fn after_s(seconds: u64) -> Deadline {
        Deadline {
            at: Instant::now() + Duration::from_secs(seconds),
        }
    }

    /// True once the deadline has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Its exit code; None when a signal ended it.
    pub exit_code: Option<i32>,
    /// True when it was killed at the deadline.
    pub timed_out: bool,
}

impl Finished {
    /// Exited with 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// A task's log file; every command appends its command line and output.
pub struct TaskLog {
    file: File,
}

impl TaskLog {
    /// Creates (truncates) the log at `path`.
    pub fn create(path: &Path) -> std::io::Result<TaskLog> {
        Ok(TaskLog {
            file: File::create(path)?,
        })
    }

    /// Appends a line of the agent's own.
    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.file, "# {text}");
    }

    /// Appends raw bytes.
    pub fn append(&mut self, bytes: &[u8]) {
        let _ = self.file.write_all(bytes);
    }

    /// Runs `command` until it exits or `deadline` passes, stdout and stderr into the
    /// log (into `capture` instead when given, for output the agent parses; it is
    /// copied into the log afterwards).
    pub fn run(
        &mut self,
        command: &mut Command,
        capture: Option<&Path>,
        deadline: Deadline,
    ) -> std::io::Result<Finished> {
        let mut line = format!("$ {}", command.get_program().to_string_lossy());
        for arg in command.get_args() {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        let _ = writeln!(self.file, "{line}");
        let _ = self.file.flush();
        let stdout = match capture {
            Some(path) => File::create(path)?,
            None => self.file.try_clone()?,
        };
        let stderr = stdout.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let finished = run_until(command, deadline)?;
        if let Some(path) = capture {
            if let Ok(bytes) = std::fs::read(path) {
                self.append(&bytes);
            }
        }
        let _ = writeln!(
            self.file,
            "# exit code {:?}{}",
            finished.exit_code,
            if finished.timed_out {
                " (killed at the deadline)"
            } else {
                ""
            }
        );
        Ok(finished)
    }
}

/// Spawns a command already set up with its own process group and waits for it,
/// killing the group at the deadline; stragglers left in the group after the leader
/// exits are killed too.
pub fn run_until(command: &mut Command, deadline: Deadline) -> std::io::Result<Finished> {
    let mut child = command.spawn()?;
    let group = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if deadline.passed() {
            timed_out = true;
            kill_group(group);
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill_group(group);
    // Processes that left the group (setsid) are still in the package's cgroup.
    if let Some(sandbox) = super::sandbox::active() {
        sandbox.kill_all();
    }
    Ok(Finished {
        exit_code: if timed_out {
            None
        } else {
            status.code().or_else(|| status.signal().map(|s| 128 + s))
        },
        timed_out,
    })
}

fn kill_group(group: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_to_the_log_and_exit_codes_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TaskLog::create(&dir.path().join("t.log")).unwrap();
        let finished = log
            .run(
                Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
                None,
                Deadline::after_s(30),
            )
            .unwrap();
        assert_eq!(
            finished,
            Finished {
                exit_code: Some(3),
                timed_out: false
            }
        );
        let text = std::fs::read_to_string(dir.path().join("t.log")).unwrap();
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
        assert!(text.contains("# exit code Some(3)"), "{text}");
    }

    #[test]
    fn the_whole_group_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-survived");
        let mut log = TaskLog::create(&dir.path().join("t.log")).unwrap();
        let script = format!("(sleep 3; touch {}) & sleep 600", marker.display());
        let finished = log
            .run(
                Command::new("sh").args(["-c", &script]),
                None,
                Deadline::after_s(1),
            )
            .unwrap();
        assert!(finished.timed_out);
        assert_eq!(finished.exit_code, None);
        std::thread::sleep(Duration::from_secs(4));
        assert!(
            !marker.exists(),
            "a process of the group outlived the deadline"
        );
    }

    #[test]
    fn captured_output_is_kept_apart_and_copied_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let capture = dir.path().join("out.txt");
        let mut log = TaskLog::create(&dir.path().join("t.log")).unwrap();
        log.run(
            Command::new("sh").args(["-c", "echo parsed; echo noise >&2"]),
            Some(&capture),
            Deadline::after_s(30),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&capture).unwrap(),
            "parsed\nnoise\n"
        );
        let text = std::fs::read_to_string(dir.path().join("t.log")).unwrap();
        assert!(text.contains("parsed") && text.contains("noise"), "{text}");
    }
}
