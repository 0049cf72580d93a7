//! `pyti-guest`: the agent binary. `pyti-guest run --io DIR` runs the job on an IO disk
//! (or any directory) and writes `DIR/results/`; `pyti-guest recipes [--dir DIR]` lists
//! the recipes it knows.

use std::path::PathBuf;
use std::process::ExitCode;

use pyti_guest::agent::{run_and_write, AgentOptions};
use pyti_guest::recipe::RecipeBook;

const USAGE: &str = "usage:
  pyti-guest run --io DIR [--work DIR] [--venv-template PATH] [--python PATH]
                 [--home DIR] [--snapshot-root DIR]... [--strace PATH]
                 [--outside-vm yes]
  (run refuses to run package code outside a PyTI VM unless given --outside-vm yes:
   there it runs as the caller, unsandboxed; trusted fixtures only)
  pyti-guest recipes [--dir DIR]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("recipes") => recipes(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Reads `--flag value` pairs; repeated flags keep every value.
fn flags(args: &[String], known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        if !known.contains(&flag.as_str()) {
            return Err(format!("unknown argument {flag:?}"));
        }
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        pairs.push((flag.clone(), value.clone()));
    }
    Ok(pairs)
}

fn run(args: &[String]) -> ExitCode {
    let known = [
        "--io",
        "--work",
        "--venv-template",
        "--python",
        "--home",
        "--snapshot-root",
        "--strace",
        "--outside-vm",
    ];
    let pairs = match flags(args, &known) {
        Ok(pairs) => pairs,
        Err(error) => {
            eprintln!("pyti-guest run: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Some(io) = pairs.iter().find(|(f, _)| f == "--io").map(|(_, v)| v) else {
        eprintln!("pyti-guest run: --io DIR is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let outside = pairs.iter().any(|(f, v)| f == "--outside-vm" && v == "yes");
    let in_vm = in_pyti_vm();
    if !in_vm && !outside {
        eprintln!(
            "pyti-guest run: this is not a PyTI VM (no pyti-init on the kernel command line): \
             package code would run unsandboxed as {}; pass --outside-vm yes for trusted \
             fixtures only",
            std::env::var("USER").unwrap_or_else(|_| "this user".into())
        );
        return ExitCode::from(2);
    }
    let mut options = AgentOptions::for_io_dir(&PathBuf::from(io));
    options.sandbox = in_vm && !outside;
    for (flag, value) in &pairs {
        let path = PathBuf::from(value);
        match flag.as_str() {
            "--work" => options.work_dir = path,
            "--venv-template" => options.venv_template = Some(path),
            "--python" => options.python = Some(path),
            "--home" => options.home = path,
            "--snapshot-root" => options.snapshot_roots.push(path),
            "--strace" => options.strace = path,
            _ => {}
        }
    }
    match run_and_write(&options) {
        Ok(results) => {
            println!(
                "pyti-guest: {} ({})",
                serde_json::to_string(&results.outcome).unwrap_or_default(),
                results.outcome_detail
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "pyti-guest: cannot write {}/results/results.json: {error}",
                options.io_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// True in a VM booted by PyTI: its init is `pyti-init`, PID 1 of the guest image.
fn in_pyti_vm() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|line| {
        line.split_whitespace()
            .any(|word| word.starts_with("init=") && word.ends_with("/pyti-init"))
    })
}

fn recipes(args: &[String]) -> ExitCode {
    let book = match flags(args, &["--dir"]) {
        Ok(pairs) => match pairs.last() {
            Some((_, dir)) => RecipeBook::with_overrides(&PathBuf::from(dir)),
            None => Ok(RecipeBook::embedded()),
        },
        Err(error) => {
            eprintln!("pyti-guest recipes: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match book {
        Ok(book) => {
            for identifier in book.identifiers() {
                let recipe = book.get(&identifier).expect("listed identifiers exist");
                let tasks: Vec<String> = recipe
                    .tasks
                    .iter()
                    .map(|t| format!("{}({}s)", t.kind, t.timeout_s))
                    .collect();
                println!("{identifier}: {}", tasks.join(" "));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("pyti-guest recipes: {error}");
            ExitCode::FAILURE
        }
    }
}
