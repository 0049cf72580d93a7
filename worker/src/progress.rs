//! What a job run reports while it goes: the stages of the pipeline on the host and,
//! followed from the VM's serial console, each task as the guest starts and ends it.
//!
//! `pyti-vm-run` prints these for a person; the worker daemon logs them. They travel on
//! an unbounded channel so a slow reader never slows a VM down.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A stage of the pipeline of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Waiting for a ready VM slot.
    WaitingForSlot,
    /// Resolving the dependency closure and downloading it (or taking it from the cache).
    Download,
    /// Writing `job.json` and the distribution files to the IO disk.
    IoDisk,
    /// From VM start until the guest agent starts.
    Boot,
    /// The guest agent running the recipe, until the VM powers off.
    Tasks,
    /// Reading the results off the IO disk.
    Collect,
    /// Removing the VM and discarding its overlay.
    Rollback,
}

impl Stage {
    /// The name shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForSlot => "waiting for a VM",
            Self::Download => "download",
            Self::IoDisk => "IO disk",
            Self::Boot => "boot",
            Self::Tasks => "tasks",
            Self::Collect => "collect",
            Self::Rollback => "rollback",
        }
    }
}

/// One thing that happened to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A stage began; `detail` says what it works on.
    StageStarted {
        job_id: String,
        stage: Stage,
        detail: String,
    },
    /// A stage ended after `elapsed`.
    StageFinished {
        job_id: String,
        stage: Stage,
        elapsed: Duration,
        detail: String,
    },
    /// The guest started a task.
    TaskStarted { job_id: String, task: String },
    /// The guest ended a task with `status` after `seconds`.
    TaskFinished {
        job_id: String,
        task: String,
        status: String,
        seconds: f64,
    },
}

/// Where progress goes; `None` drops it.
pub type ProgressSender = Option<mpsc::UnboundedSender<Progress>>;

/// Sends `event` if anyone listens.
pub fn emit(sender: &ProgressSender, event: Progress) {
    if let Some(sender) = sender {
        let _ = sender.send(event);
    }
}

/// A guest console line turned into an event, if it is one of the agent's progress
/// lines (`pyti-guest: task install started`, `pyti-guest: task install passed 4.2s`).
pub fn parse_console_line(job_id: &str, line: &str) -> Option<Progress> {
    let rest = line.trim_end().split_once("pyti-guest: task ")?.1;
    let mut words = rest.split_whitespace();
    let task = words.next()?.to_owned();
    match (words.next()?, words.next()) {
        ("started", None) => Some(Progress::TaskStarted {
            job_id: job_id.to_owned(),
            task,
        }),
        (status, Some(seconds)) => Some(Progress::TaskFinished {
            job_id: job_id.to_owned(),
            task,
            status: status.to_owned(),
            seconds: seconds.strip_suffix('s')?.parse().ok()?,
        }),
        _ => None,
    }
}

/// True for the init's line saying the agent starts: the end of the boot stage.
pub fn is_agent_start(line: &str) -> bool {
    line.contains("pyti-init: starting agent")
}

/// Follows the console log at `path` until `stop`, sending task events, and calls
/// `on_agent_start` once when the agent starts.
pub async fn follow_console(
    path: &Path,
    job_id: &str,
    sender: ProgressSender,
    stop: CancellationToken,
    mut on_agent_start: impl FnMut(),
) {
    let mut offset = 0u64;
    let mut pending = String::new();
    let mut agent_started = false;
    loop {
        let stopping = stop.is_cancelled();
        if let Ok(mut file) = tokio::fs::File::open(path).await {
            use tokio::io::AsyncSeekExt;
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                let mut bytes = Vec::new();
                if let Ok(read) = file.read_to_end(&mut bytes).await {
                    offset += read as u64;
                    pending.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
        }
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if !agent_started && is_agent_start(&line) {
                agent_started = true;
                on_agent_start();
            }
            if let Some(event) = parse_console_line(job_id, &line) {
                emit(&sender, event);
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_become_task_events() {
        assert_eq!(
            parse_console_line("j", "pyti-guest: task install started\r\n"),
            Some(Progress::TaskStarted {
                job_id: "j".into(),
                task: "install".into()
            })
        );
        assert_eq!(
            parse_console_line("j", "[   7.1] pyti-guest: task tests timed_out 20.0s"),
            Some(Progress::TaskFinished {
                job_id: "j".into(),
                task: "tests".into(),
                status: "timed_out".into(),
                seconds: 20.0
            })
        );
        assert_eq!(
            parse_console_line("j", "pyti-guest: task tests passed soon"),
            None
        );
        assert_eq!(parse_console_line("j", "pyti-init: starting agent"), None);
        assert_eq!(parse_console_line("j", "Collecting rarfile"), None);
        assert!(is_agent_start("pyti-init: starting agent\n"));
    }

    #[tokio::test]
    async fn following_a_growing_console_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let mut follower = tokio::task::JoinSet::new();
        {
            let (path, stop) = (path.clone(), stop.clone());
            follower.spawn(async move {
                let mut started = 0;
                follow_console(&path, "j", Some(sender), stop, || started += 1).await;
                started
            });
        }
        tokio::fs::write(
            &path,
            "booting\npyti-init: starting agent\npyti-guest: task inst",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut file,
            b"all started\npyti-guest: task install passed 3.5s\n",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        assert_eq!(follower.join_next().await.unwrap().unwrap(), 1);
        let first = receiver.recv().await.unwrap();
        assert!(matches!(first, Progress::TaskStarted { ref task, .. } if task == "install"));
        let second = receiver.recv().await.unwrap();
        assert!(
            matches!(second, Progress::TaskFinished { ref status, seconds, .. } if status == "passed" && seconds == 3.5)
        );
    }
}
