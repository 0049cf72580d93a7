//! What a user waits for: `pyti-vm-run` on a real PyPI distribution, split by stage,
//! next to the same package's `pip install` into a fresh virtualenv on the host,
//! measured in the same run.
//!
//! `cargo bench -p pyti-worker --bench vm_run [-- NAME==VERSION [RECIPE]]` (default
//! rarfile==4.2 with the full recipe). Needs root and libvirtd, like pyti-vm-run; uses
//! the debug or release pyti-vm-run next to this benchmark and `$PYTI_TEST_ROOT`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let target = args
        .first()
        .cloned()
        .unwrap_or_else(|| "rarfile==4.2".to_owned());
    let recipe = args.get(1).cloned().unwrap_or_else(|| "recipe".to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let root = std::env::var_os("PYTI_TEST_ROOT")
        .map_or_else(|| PathBuf::from("/var/tmp/pyti-test-root"), PathBuf::from);
    let agent = workspace.join("target/x86_64-unknown-linux-gnu/release/pyti-guest");
    let vm_run = [
        workspace.join("target/release/pyti-vm-run"),
        workspace.join("target/debug/pyti-vm-run"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("build pyti-vm-run first (scripts/build-release)");

    // Baseline: pip into a fresh venv on the host, from PyPI, no cache.
    let scratch = std::env::temp_dir().join(format!("pyti-bench-venv-{}", std::process::id()));
    let started = Instant::now();
    run(Command::new("python3").args(["-m", "venv"]).arg(&scratch));
    let venv_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    run(Command::new(scratch.join("bin/pip"))
        .args(["install", "--quiet", "--no-cache-dir", &target])
        .env_remove("PIP_FIND_LINKS"));
    let pip_s = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&scratch);

    let started = Instant::now();
    let out = Command::new(&vm_run)
        .env("PYTI_SLAVE_ROOT", &root)
        .arg("--agent")
        .arg(&agent)
        .args([target.as_str(), "--recipe", recipe.as_str()])
        .output()
        .expect("pyti-vm-run runs");
    let total_s = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{target}, recipe {recipe}: pyti-vm-run exit {:?}",
        out.status.code()
    );
    println!("{:<34} {:>9} {:>14}", "stage", "seconds", "x pip install");
    for line in stderr.lines() {
        // "[rarfile==4.2] boot done in 3.4s: agent started"
        if let Some((stage, rest)) = line
            .split_once("] ")
            .and_then(|(_, r)| r.split_once(" done in "))
        {
            let seconds: f64 = rest
                .split('s')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            println!("{stage:<34} {seconds:>9.1} {:>14.2}", seconds / pip_s);
        }
        if let Some(task) = line
            .split_once("]   task ")
            .map(|(_, r)| r)
            .filter(|r| r.contains(" in "))
        {
            let (name, rest) = task.split_once(' ').unwrap_or((task, ""));
            let seconds: f64 = rest
                .rsplit(" in ")
                .next()
                .and_then(|s| s.trim_end_matches('s').parse().ok())
                .unwrap_or(0.0);
            println!(
                "{:<34} {seconds:>9.1} {:>14.2}",
                format!("  task {name}"),
                seconds / pip_s
            );
        }
    }
    println!(
        "{:<34} {total_s:>9.1} {:>14.2}",
        "pyti-vm-run wall time",
        total_s / pip_s
    );
    println!(
        "{:<34} {pip_s:>9.1} {:>14.2}",
        "baseline: pip install on the host", 1.0
    );
    println!(
        "{:<34} {venv_s:>9.1} {:>14.2}",
        "(python3 -m venv on the host)",
        venv_s / pip_s
    );
}

fn run(command: &mut Command) {
    let status = command.status().expect("command runs");
    assert!(status.success(), "{command:?} failed");
}
