//! The IO disk's layout: every name and size the host and the guest agree on.
//!
//! The host writes the disk (`diskhandler`, the downloader's file roles, the job run),
//! the guest's init script and agent read and write it, and the host reads it back.
//! When each of them spelled `"results.json"` or `"wheels"` for itself, a rename on one
//! side would have passed every test of that side; so the names live here, in the crate
//! both sides are built from, and everything else refers to them.
//!
//! ```text
//! job.json               host  the job (`job::GuestJob`)
//! dist/                  host  the distribution under test (a wheel and/or an sdist)
//! wheels/                host  its dependency closure
//! tools/                 host  tools the recipe runs (pytest, pycodestyle, ...)
//! results/               guest
//!   results.json         guest the results dict (`results::Results`)
//!   agent-error.json     init  why the agent left no results.json
//!   selftest.json        init  what an image self-test found
//!   logs/<task>.log      guest one log per task
//! ```
//!
//! The guest's init script (`pyti-init.sh`, baked into the image) spells the same paths;
//! a test of the worker's image module checks that it still does.

use std::path::{Path, PathBuf};

/// Volume label of every IO disk.
pub const VOLUME_LABEL: &str = "PYTIIO";

/// The job description at the root of the disk.
pub const JOB_FILE: &str = "job.json";
/// The distribution under test.
pub const DIST_DIR: &str = "dist";
/// The dependency closure, as wheels (or sdists the guest builds).
pub const WHEELS_DIR: &str = "wheels";
/// Tools the recipe runs (pytest, pycodestyle, ...).
pub const TOOLS_DIR: &str = "tools";
/// The directories that hold inputs, in the order they are described in `job.json`.
pub const INPUT_DIRS: [&str; 3] = [DIST_DIR, WHEELS_DIR, TOOLS_DIR];
/// The directories pip finds distributions in, in the order it is given them.
pub const FIND_LINKS_DIRS: [&str; 3] = [WHEELS_DIR, TOOLS_DIR, DIST_DIR];

/// Where the guest writes results and logs.
pub const RESULTS_DIR: &str = "results";
/// The results dict, inside [`RESULTS_DIR`].
pub const RESULTS_FILE: &str = "results.json";
/// The init's record of an agent that ended without results, inside [`RESULTS_DIR`].
pub const AGENT_ERROR_FILE: &str = "agent-error.json";
/// The init's self-test record, inside [`RESULTS_DIR`].
pub const SELFTEST_FILE: &str = "selftest.json";
/// Task logs, inside [`RESULTS_DIR`].
pub const LOGS_DIR: &str = "logs";

/// Free space left on a new IO disk for the guest's results and logs.
pub const RESULTS_SPACE_BYTES: u64 = 256 << 20;

/// `results/<name>`, the path of a results file relative to the disk's root (as the
/// image reader and the init script name it).
pub fn in_results(name: &str) -> String {
    format!("{RESULTS_DIR}/{name}")
}

/// The results directory under an IO root (the mounted disk, or a host directory).
pub fn results_dir(io_root: &Path) -> PathBuf {
    io_root.join(RESULTS_DIR)
}

/// The log of a task, relative to [`RESULTS_DIR`] (`logs/install.log`): what a task
/// result's `log` field holds.
pub fn task_log(task: &str) -> String {
    format!("{LOGS_DIR}/{task}.log")
}

/// The kept syscall trace of one phase of the behaviour task, relative to
/// [`RESULTS_DIR`] (`logs/behaviour-install.strace`).
pub fn behaviour_trace(phase: &str) -> String {
    format!("{LOGS_DIR}/behaviour-{phase}.strace")
}

/// The guest's serial console, as the host keeps it beside a run's results.
pub const CONSOLE_LOG: &str = "console.log";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        assert_eq!(in_results(RESULTS_FILE), "results/results.json");
        assert_eq!(in_results(AGENT_ERROR_FILE), "results/agent-error.json");
        assert_eq!(in_results(SELFTEST_FILE), "results/selftest.json");
        assert_eq!(task_log("install"), "logs/install.log");
        assert_eq!(behaviour_trace("import"), "logs/behaviour-import.strace");
        assert_eq!(INPUT_DIRS, ["dist", "wheels", "tools"]);
        assert_eq!(
            results_dir(Path::new("/io")).join(RESULTS_FILE),
            Path::new("/io/results/results.json")
        );
    }
}
