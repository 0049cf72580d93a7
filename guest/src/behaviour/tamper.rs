//! Attempts on the sandbox itself, read from a trace: the power switch, the IO disk
//! (results, the job and its nonce), the agent's cgroup, rebooting, signalling PID 1.
//! Denied attempts count: the package meant them, and the sandbox only held.

use super::strace::{self, Joiner};

/// Paths whose opening by package code is an attack on the sandbox, and why.
const TARGETS: [(&str, &str); 6] = [
    ("/proc/sysrq-trigger", "the power switch"),
    ("/io", "the IO disk (job, nonce, results)"),
    ("/dev/vdb", "the IO disk's device"),
    ("/sys/fs/cgroup", "the agent's cgroups"),
    ("/sys/power", "the power switch"),
    ("/dev/mem", "physical memory"),
];

/// The tampering attempts in `trace` (at most 20), each as one line for humans.
pub fn attempts(trace: &str) -> Vec<String> {
    let mut joiner = Joiner::default();
    let mut found = Vec::new();
    for line in trace.lines() {
        let Some(call) = joiner.push(line) else {
            continue;
        };
        let text = |i: usize| call.args.get(i).and_then(|a| strace::decode_text(a));
        let what = match call.name.as_str() {
            "open" | "creat" => text(0).and_then(|p| target(&p)),
            "openat" | "openat2" => text(1).and_then(|p| target(&p)),
            "reboot" => Some(("the machine".to_owned(), "the power switch")),
            "kill" | "tkill" | "tgkill" => {
                let pid = call.args.first().map(String::as_str).unwrap_or("");
                (pid == "1" || pid == "-1")
                    .then(|| (format!("PID {pid}"), "the init and the agent"))
            }
            _ => None,
        };
        if let Some((path, why)) = what {
            found.push(format!(
                "{} {path} ({why}; {})",
                call.name,
                call.result_name()
            ));
            if found.len() == 20 {
                break;
            }
        }
    }
    found
}

fn target(path: &str) -> Option<(String, &'static str)> {
    TARGETS.iter().find_map(|(prefix, why)| {
        let hit = path == *prefix || path.starts_with(&format!("{prefix}/"));
        hit.then(|| (path.to_owned(), *why))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_on_the_sandbox_are_found_denied_or_not() {
        let trace = r#"7 10:00:00.000000 openat(AT_FDCWD</w>, "/proc/sysrq-trigger", O_WRONLY|O_CREAT|O_TRUNC, 0666) = -1 EACCES (Permission denied)
7 10:00:00.000100 openat(AT_FDCWD</w>, "/io/results/results.json", O_WRONLY|O_CREAT|O_TRUNC, 0666) = -1 EACCES (Permission denied)
7 10:00:00.000200 openat(AT_FDCWD</w>, "/iox/fine", O_RDONLY) = -1 ENOENT (No such file or directory)
7 10:00:00.000300 kill(1, SIGKILL) = -1 EPERM (Operation not permitted)
7 10:00:00.000400 kill(8, SIGTERM) = 0
7 10:00:00.000500 reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_POWER_OFF, NULL) = -1 EPERM (Operation not permitted)
"#;
        let found = attempts(trace);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].contains("/proc/sysrq-trigger") && found[0].contains("EACCES"));
        assert!(found[1].contains("/io/results/results.json"));
        assert!(found[2].starts_with("kill PID 1"), "{}", found[2]);
        assert!(found[3].contains("reboot"));
        assert!(
            attempts("7 10:00:00.0 openat(AT_FDCWD, \"/etc/passwd\", O_RDONLY) = 3\n").is_empty()
        );
    }
}
