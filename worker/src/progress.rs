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

/// What the agent said of itself on the console, as far as the host can check it: the
/// agent signs its progress lines with a MAC keyed by the run's nonce, which package
/// code cannot read, so an unsigned or badly signed progress line is a forgery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTrail {
    /// The run's nonce; `None` accepts unsigned lines (agents that predate signing).
    pub nonce: Option<String>,
    /// Signed lines seen so far (their sequence numbers run 1, 2, ...).
    pub signed: u64,
    /// The task the agent said it started and has not said it ended.
    pub running: Option<String>,
    /// Tasks the agent started (package code ran in each).
    pub started: Vec<String>,
    /// Progress lines that failed the check, first few kept.
    pub forged: Vec<String>,
    /// Number of forged lines.
    pub forged_count: u64,
}

impl AgentTrail {
    /// A trail for a run with `nonce`.
    pub fn new(nonce: Option<String>) -> Self {
        Self {
            nonce,
            ..Self::default()
        }
    }

    /// Checks one console line: the agent's progress text (`pyti-guest: task ...`,
    /// its signature removed) when the line is genuine, `None` otherwise (a forged
    /// progress line is counted).
    pub fn check(&mut self, line: &str) -> Option<String> {
        let line = line.trim_end();
        let at = line.find("pyti-guest: ")?;
        let body = &line[at + "pyti-guest: ".len()..];
        let Some(nonce) = &self.nonce else {
            return Some(format!("pyti-guest: {body}"));
        };
        let verified = body.rsplit_once(" ~").and_then(|(text, signature)| {
            let (seq, mac) = signature.split_once(':')?;
            let seq: u64 = seq.parse().ok()?;
            (seq == self.signed + 1 && pyti_guest::digest::progress_mac(nonce, seq, text) == mac)
                .then_some(text)
        });
        match verified {
            Some(text) => {
                self.signed += 1;
                let mut words = text.split_whitespace();
                if let (Some("task"), Some(task), Some(state)) =
                    (words.next(), words.next(), words.next())
                {
                    if state == "started" {
                        self.running = Some(task.to_owned());
                        self.started.push(task.to_owned());
                    } else if self.running.as_deref() == Some(task) {
                        self.running = None;
                    }
                }
                Some(format!("pyti-guest: {text}"))
            }
            None => {
                // The agent's own unsigned lines (its final summary) are not progress.
                if body.starts_with("task ") || body.contains(" ~") {
                    self.forged_count += 1;
                    if self.forged.len() < 3 {
                        self.forged
                            .push(neutralise(&body.chars().take(200).collect::<String>()));
                    }
                }
                None
            }
        }
    }

    /// True once package code ran (the agent started a task).
    pub fn package_code_ran(&self) -> bool {
        !self.started.is_empty()
    }
}

/// `text` with control characters (ANSI escapes among them) shown as `\u{..}`, safe to
/// print to a terminal.
pub fn neutralise(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Longest console line kept while waiting for its end; a guest printing without
/// newlines costs the host no more than this.
pub const MAX_CONSOLE_LINE: usize = 64 << 10;
/// Most console bytes read per poll.
const CONSOLE_READ_CHUNK: u64 = 1 << 20;

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
    trail: std::sync::Arc<std::sync::Mutex<AgentTrail>>,
    mut on_agent_start: impl FnMut(),
) {
    let mut offset = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut agent_started = false;
    loop {
        let stopping = stop.is_cancelled();
        let mut more = false;
        if let Ok(mut file) = tokio::fs::File::open(path).await {
            use tokio::io::AsyncSeekExt;
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                let mut bytes = Vec::new();
                if let Ok(read) = file.take(CONSOLE_READ_CHUNK).read_to_end(&mut bytes).await {
                    offset += read as u64;
                    more = read as u64 == CONSOLE_READ_CHUNK;
                    pending.extend_from_slice(&bytes);
                }
            }
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..=end]).into_owned();
            pending.drain(..=end);
            if !agent_started && is_agent_start(&line) {
                agent_started = true;
                on_agent_start();
            }
            let checked = trail.lock().map_or(None, |mut t| t.check(&line));
            if let Some(event) = checked.and_then(|l| parse_console_line(job_id, &l)) {
                emit(&sender, event);
            }
        }
        if pending.len() > MAX_CONSOLE_LINE {
            // No newline in sight: not a line anyone wrote for us.
            pending.clear();
        }
        if stopping && !more {
            return;
        }
        if more {
            continue;
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

    #[test]
    fn only_lines_signed_with_the_run_s_nonce_in_order_are_the_agent_s() {
        let mut signer = pyti_guest::agent::ProgressSigner::new(Some("n0nce".into()));
        let started = signer.line("task install started");
        let mut trail = AgentTrail::new(Some("n0nce".into()));
        assert_eq!(
            trail.check(&format!("[ 3.2] {started}\r\n")).as_deref(),
            Some("pyti-guest: task install started")
        );
        assert_eq!(trail.running.as_deref(), Some("install"));
        assert!(trail.package_code_ran());
        // A package printing what looks like progress, signed with a guess, or the
        // agent's next line replayed out of order: forgeries.
        assert_eq!(trail.check("pyti-guest: task install passed 1.0s"), None);
        assert_eq!(
            trail.check("pyti-guest: task install passed 1.0s ~2:0123456789abcdef"),
            None
        );
        assert_eq!(trail.check(&started), None);
        assert_eq!(trail.forged_count, 3);
        let passed = signer.line("task install passed 1.0s");
        assert!(trail.check(&passed).is_some());
        assert_eq!(trail.running, None);
        // The agent's unsigned final summary is neither progress nor a forgery.
        assert_eq!(
            trail.check("pyti-guest: \"passed\" (every task passed)"),
            None
        );
        assert_eq!(trail.forged_count, 3);
        let mut other_run = AgentTrail::new(Some("other".into()));
        assert_eq!(other_run.check(&started), None);
        assert_eq!(other_run.forged_count, 1);
    }

    #[test]
    fn escapes_are_neutralised() {
        assert_eq!(neutralise("a\u{1b}[2Jb\tc"), "a\\u{1b}[2Jb\tc");
    }

    #[tokio::test]
    async fn a_console_without_newlines_is_read_in_bounded_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut flood = vec![b'x'; 5 << 20];
        flood.extend_from_slice(b"\npyti-guest: task install started\n");
        tokio::fs::write(&path, &flood).await.unwrap();
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        stop.cancel();
        let trail = std::sync::Arc::new(std::sync::Mutex::new(AgentTrail::new(None)));
        follow_console(&path, "j", Some(sender), stop, trail, || {}).await;
        let event = receiver.recv().await.unwrap();
        assert!(matches!(event, Progress::TaskStarted { ref task, .. } if task == "install"));
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
                let trail = std::sync::Arc::new(std::sync::Mutex::new(AgentTrail::new(None)));
                follow_console(&path, "j", Some(sender), stop, trail, || started += 1).await;
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
