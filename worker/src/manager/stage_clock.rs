//! Times the stages of one job, reports them as progress and keeps what they took.

use std::time::{Duration, Instant};

use crate::progress::{emit, Progress, ProgressSender, Stage};

/// The clock of one job's stages.
pub(super) struct StageClock {
    job_id: String,
    progress: ProgressSender,
    current: Option<(Stage, Instant)>,
    timings: Vec<(Stage, Duration)>,
}

impl StageClock {
    /// A clock for `job_id` reporting to `progress`.
    pub(super) fn new(job_id: &str, progress: ProgressSender) -> Self {
        Self {
            job_id: job_id.to_owned(),
            progress,
            current: None,
            timings: Vec::new(),
        }
    }

    /// Where progress goes (the console follower reports there too).
    pub(super) fn progress(&self) -> &ProgressSender {
        &self.progress
    }

    /// Starts `stage`; `detail` says what it works on.
    pub(super) fn start(&mut self, stage: Stage, detail: &str) {
        self.current = Some((stage, Instant::now()));
        emit(
            &self.progress,
            Progress::StageStarted {
                job_id: self.job_id.clone(),
                stage,
                detail: detail.to_owned(),
            },
        );
    }

    /// Ends the stage started last, keeping its time.
    pub(super) fn finish(&mut self, detail: &str) {
        let Some((stage, started)) = self.current.take() else {
            return;
        };
        self.finish_with(stage, started.elapsed(), detail);
    }

    /// Ends `stage` after `elapsed` (measured by the caller), keeping its time.
    pub(super) fn finish_with(&mut self, stage: Stage, elapsed: Duration, detail: &str) {
        self.current = None;
        self.record(stage, elapsed);
        emit(
            &self.progress,
            Progress::StageFinished {
                job_id: self.job_id.clone(),
                stage,
                elapsed,
                detail: detail.to_owned(),
            },
        );
    }

    /// Keeps the time of a stage whose end was reported elsewhere.
    pub(super) fn record(&mut self, stage: Stage, elapsed: Duration) {
        self.timings.push((stage, elapsed));
    }

    /// Every stage's time, in order.
    pub(super) fn into_timings(self) -> Vec<(Stage, Duration)> {
        self.timings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_reported_and_kept_in_order() {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut clock = StageClock::new("j", Some(sender));
        clock.start(Stage::Download, "x==1");
        clock.finish("2 files");
        clock.record(Stage::Boot, Duration::from_secs(3));
        clock.finish_with(Stage::Tasks, Duration::from_secs(4), "VM powered off");
        clock.finish("no stage open: nothing happens");
        let stages: Vec<Stage> = clock.into_timings().iter().map(|(s, _)| *s).collect();
        assert_eq!(stages, [Stage::Download, Stage::Boot, Stage::Tasks]);
        let mut events = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            events.push(event);
        }
        assert_eq!(events.len(), 3);
        assert!(matches!(
            &events[0],
            Progress::StageStarted { stage: Stage::Download, detail, .. } if detail == "x==1"
        ));
        assert!(matches!(
            &events[2],
            Progress::StageFinished { stage: Stage::Tasks, elapsed, .. } if elapsed.as_secs() == 4
        ));
    }
}
