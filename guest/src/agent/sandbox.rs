//! Where package code runs in the VM: its own unprivileged user, its own cgroup.
//!
//! The package is the sandbox's adversary. As root it could write the results, power the
//! VM off or kill the agent; as its own uid it can do none of that (the IO disk is
//! mounted root-only, the power switch and the agent are root's). Its processes join a
//! cgroup the agent alone controls: `cgroup.kill` ends every one of them, `setsid`
//! children included, and the cgroup's counters tell a fork bomb or a memory hog apart
//! from an ordinary failure. The user, host name and machine-id look like an ordinary
//! machine's and change with every job, so code that checks for a sandbox sees none.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::behaviour::Decoy;
use crate::results::{PackageFault, PackageFaultKind};

/// The uid and gid package code runs as.
pub const PACKAGE_UID: u32 = 1000;
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP_NAME: &str = "pyti-package";
/// Most processes and threads package code may have at once: far above what pip or a
/// test suite uses, far below what starves the agent.
pub const PIDS_MAX: u32 = 512;
/// Free space below which a disk counts as filled by the package.
const FULL_DISK_BYTES: u64 = 16 << 20;

/// The plausible identity of one job's machine and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Login name.
    pub user: String,
    /// Full name in the GECOS field.
    pub full_name: String,
    /// Host name.
    pub hostname: String,
    /// `/etc/machine-id` (32 hex digits).
    pub machine_id: String,
}

const FIRST: [&str; 16] = [
    "alice", "ben", "carla", "daniel", "emma", "felix", "grace", "henrik", "irene", "jonas",
    "katrin", "lucas", "maria", "nikolai", "olga", "paul",
];
const LAST: [&str; 16] = [
    "berg", "costa", "dubois", "evans", "fischer", "garcia", "hansen", "ivanov", "jensen",
    "keller", "larsen", "meyer", "novak", "olsen", "petrov", "quinn",
];
const MACHINE: [&str; 8] = [
    "laptop",
    "desktop",
    "workstation",
    "thinkpad",
    "dev",
    "build",
    "xps",
    "home",
];

impl Identity {
    /// An identity drawn from `seed` (random bytes, at least 8).
    pub fn from_seed(seed: &[u8]) -> Identity {
        let byte = |i: usize| usize::from(seed.get(i).copied().unwrap_or(0));
        let first = FIRST[byte(0) % FIRST.len()];
        let last = LAST[byte(1) % LAST.len()];
        let machine = MACHINE[byte(2) % MACHINE.len()];
        let capital = |s: &str| {
            let mut chars = s.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_uppercase().collect::<String>() + chars.as_str()
            })
        };
        let machine_id: String = crate::digest::sha256_hex(seed)[..32].to_owned();
        Identity {
            user: first.to_owned(),
            full_name: format!("{} {}", capital(first), capital(last)),
            hostname: format!("{first}-{machine}-{:02}", byte(3) % 100),
            machine_id,
        }
    }

    /// The home directory.
    pub fn home(&self) -> PathBuf {
        Path::new("/home").join(&self.user)
    }
}

/// Random bytes from the kernel.
pub fn random_bytes(count: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; count];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The sandbox of a run in a VM.
#[derive(Debug)]
pub struct Sandbox {
    /// Who package code runs as and where.
    pub identity: Identity,
    /// The credentials planted in the home and the environment.
    pub decoys: Vec<Decoy>,
    cgroup: Option<PathBuf>,
}

static ACTIVE: OnceLock<Sandbox> = OnceLock::new();

/// The sandbox of this agent process, once [`Sandbox::install`] made one. One agent
/// process runs one job in one VM, so there is at most one.
pub fn active() -> Option<&'static Sandbox> {
    ACTIVE.get()
}

/// What the cgroup counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Times a fork failed at `pids.max`.
    pub pids_max: u64,
    /// Processes the OOM killer ended.
    pub oom_kills: u64,
}

impl Sandbox {
    /// Sets the machine up for package code (user, home, host name, machine-id, cgroup)
    /// and makes it the process's sandbox. Only ever in a throw-away VM: it edits
    /// `/etc/passwd` and the host name.
    pub fn install(identity: Identity) -> std::io::Result<&'static Sandbox> {
        set_identity(&identity)?;
        let decoys = plant_decoys(&identity, &random_bytes(64)?)?;
        let cgroup = match make_cgroup() {
            Ok(path) => Some(path),
            Err(error) => {
                eprintln!("pyti-guest: no cgroup for package code ({error}); process groups only");
                None
            }
        };
        // The OOM killer takes package processes, never the agent.
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        let _ = ACTIVE.set(Sandbox {
            identity,
            decoys,
            cgroup,
        });
        Ok(ACTIVE.get().expect("just set"))
    }

    /// Makes `command` run as the package user in the package cgroup, at low priority.
    pub fn confine(&self, command: &mut Command) {
        self.enter(command, true);
    }

    /// Puts `command` in the package cgroup but leaves it root: for strace, which then
    /// runs the package as the package user (`-u`) and writes where the package cannot.
    pub fn contain_tracer(&self, command: &mut Command) {
        self.enter(command, false);
    }

    fn enter(&self, command: &mut Command, drop_privileges: bool) {
        let procs = self
            .cgroup
            .as_ref()
            .and_then(|c| CString::new(c.join("cgroup.procs").as_os_str().as_encoded_bytes()).ok());
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (open, write, close, setpriority, setgroups,
        // setgid, setuid) on data prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                if drop_privileges {
                    let id = PACKAGE_UID;
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// The decoys that live in the environment: `(variable, value)`.
    pub fn decoy_environment(&self) -> impl Iterator<Item = (&str, &str)> {
        self.decoys
            .iter()
            .filter(|d| d.path.is_none())
            .map(|d| (d.label.as_str(), d.value.as_str()))
    }

    /// Hands `path` to the package user.
    pub fn own(&self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::chown(path, Some(PACKAGE_UID), Some(PACKAGE_UID))
    }

    /// Kills every package process (`setsid` ones too) and waits until they are gone.
    pub fn kill_all(&self) {
        let Some(cgroup) = &self.cgroup else {
            return;
        };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() || Instant::now() > until {
                return;
            }
            let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The cgroup's counters now.
    pub fn counters(&self) -> Counters {
        let Some(cgroup) = &self.cgroup else {
            return Counters::default();
        };
        let read = |file: &str, key: &str| {
            std::fs::read_to_string(cgroup.join(file))
                .ok()
                .and_then(|text| counter(&text, key))
                .unwrap_or(0)
        };
        Counters {
            pids_max: read("pids.events", "max"),
            oom_kills: read("memory.events", "oom_kill"),
        }
    }

    /// How the package exhausted the guest between `before` and now, if it did: the
    /// process limit, the OOM killer, or a disk under `dirs` left (nearly) full.
    pub fn exhaustion(&self, before: Counters, dirs: &[&Path]) -> Option<PackageFault> {
        let now = self.counters();
        let detail = if now.pids_max > before.pids_max {
            Some(format!(
                "package processes hit the limit of {PIDS_MAX} processes {} time(s) (a fork bomb)",
                now.pids_max - before.pids_max
            ))
        } else if now.oom_kills > before.oom_kills {
            Some(format!(
                "the OOM killer ended {} package process(es): memory exhausted",
                now.oom_kills - before.oom_kills
            ))
        } else {
            dirs.iter().find_map(|dir| {
                let free = free_bytes(dir)?;
                (free < FULL_DISK_BYTES).then(|| {
                    format!(
                        "the package filled the disk of {} ({} KiB left)",
                        dir.display(),
                        free >> 10
                    )
                })
            })
        };
        detail.map(|detail| PackageFault {
            kind: PackageFaultKind::Exhaustion,
            detail,
        })
    }
}

/// The value of `key` in a cgroup `*.events` file (`key value` lines).
pub fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Bytes an unprivileged user can still write on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct we own; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A token of `length` characters from `alphabet`, drawn from `seed` at `offset`.
fn token(seed: &[u8], offset: usize, length: usize, alphabet: &[u8]) -> String {
    let hashed = crate::digest::sha256_hex(&[seed, &offset.to_le_bytes()].concat());
    hashed
        .as_bytes()
        .chunks(2)
        .take(length)
        .map(|pair| {
            let n = usize::from(
                u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0),
            );
            char::from(alphabet[n % alphabet.len()])
        })
        .collect()
}

/// The decoys of a run with `identity`, their values drawn from `seed`, and the files
/// they live in (written by [`plant_decoys`]): `(decoy, file content)`.
pub fn decoys_for(identity: &Identity, seed: &[u8]) -> Vec<(Decoy, Option<String>)> {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const MIXED: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let home = identity.home().display().to_string();
    let user = &identity.user;
    let key_id = format!("AKIA{}", token(seed, 1, 16, UPPER));
    let secret = token(seed, 2, 40, MIXED);
    let ssh = token(seed, 3, 64, MIXED);
    let pypi = format!("pypi-{}", token(seed, 4, 48, MIXED));
    let netrc = token(seed, 5, 24, MIXED);
    let github = format!("ghp_{}", token(seed, 6, 36, MIXED));
    let file = |label: &str, path: &str, value: &str, content: String| {
        (
            Decoy {
                label: label.to_owned(),
                path: Some(format!("{home}/{path}")),
                value: value.to_owned(),
            },
            Some(content),
        )
    };
    let variable = |label: &str, value: &str| {
        (
            Decoy {
                label: label.to_owned(),
                path: None,
                value: value.to_owned(),
            },
            None,
        )
    };
    vec![
        file(
            "ssh key",
            ".ssh/id_rsa",
            &ssh,
            format!("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA{ssh}\n-----END OPENSSH PRIVATE KEY-----\n"),
        ),
        file(
            "aws credentials",
            ".aws/credentials",
            &key_id,
            format!("[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"),
        ),
        file(
            "pypirc",
            ".pypirc",
            &pypi,
            format!("[distutils]\nindex-servers = pypi\n\n[pypi]\nusername = __token__\npassword = {pypi}\n"),
        ),
        file(
            "netrc",
            ".netrc",
            &netrc,
            format!("machine git.example.invalid\nlogin {user}\npassword {netrc}\n"),
        ),
        variable("AWS_SECRET_ACCESS_KEY", &secret),
        variable("GITHUB_TOKEN", &github),
    ]
}

fn plant_decoys(identity: &Identity, seed: &[u8]) -> std::io::Result<Vec<Decoy>> {
    use std::os::unix::fs::PermissionsExt;
    let home = identity.home();
    let mut decoys = Vec::new();
    for (decoy, content) in decoys_for(identity, seed) {
        if let (Some(path), Some(content)) = (&decoy.path, content) {
            let path = PathBuf::from(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
                if dir != home {
                    std::os::unix::fs::chown(dir, Some(PACKAGE_UID), Some(PACKAGE_UID))?;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                }
            }
            std::fs::write(&path, content)?;
            std::os::unix::fs::chown(&path, Some(PACKAGE_UID), Some(PACKAGE_UID))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        decoys.push(decoy);
    }
    Ok(decoys)
}

fn set_identity(identity: &Identity) -> std::io::Result<()> {
    use std::io::Write;
    let home = identity.home();
    let append = |path: &str, line: String| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(file, "{line}")
    };
    let user = &identity.user;
    append(
        "/etc/passwd",
        format!(
            "{user}:x:{PACKAGE_UID}:{PACKAGE_UID}:{},,,:{}:/bin/bash",
            identity.full_name,
            home.display()
        ),
    )?;
    append("/etc/group", format!("{user}:x:{PACKAGE_UID}:"))?;
    std::fs::create_dir_all(&home)?;
    std::os::unix::fs::chown(&home, Some(PACKAGE_UID), Some(PACKAGE_UID))?;
    std::fs::write("/etc/hostname", format!("{}\n", identity.hostname))?;
    std::fs::write("/etc/machine-id", format!("{}\n", identity.machine_id))?;
    if let Ok(hosts) = std::fs::read_to_string("/etc/hosts") {
        let _ = std::fs::write(
            "/etc/hosts",
            hosts.replace("pyti-guest", &identity.hostname),
        );
    }
    let name = identity.hostname.as_bytes();
    // SAFETY: sethostname reads `name.len()` bytes from a live slice.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn make_cgroup() -> std::io::Result<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if !root.join("cgroup.controllers").exists() {
        let (source, target, kind) = (
            CString::new("cgroup2").expect("no NUL"),
            CString::new(CGROUP_ROOT).expect("no NUL"),
            CString::new("cgroup2").expect("no NUL"),
        );
        // SAFETY: plain mount(2) with valid C strings and no data.
        let mounted = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for controller in ["+pids", "+memory", "+cpu"] {
        let _ = std::fs::write(root.join("cgroup.subtree_control"), controller);
    }
    let cgroup = root.join(CGROUP_NAME);
    match std::fs::create_dir(&cgroup) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    std::fs::write(cgroup.join("pids.max"), PIDS_MAX.to_string())?;
    let _ = std::fs::write(cgroup.join("cpu.weight"), "10");
    if let Some(total) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total_kib(&m))
    {
        // Leave the agent room: the package's cgroup runs out before the machine does.
        let kib = total.saturating_sub(96 << 10).max(64 << 10);
        let _ = std::fs::write(cgroup.join("memory.max"), (kib << 10).to_string());
    }
    Ok(cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_plausible_and_differ_by_seed() {
        let a = Identity::from_seed(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let b = Identity::from_seed(&[9, 10, 11, 12, 13, 14, 15, 16]);
        assert_ne!(a, b);
        assert_eq!(a.machine_id.len(), 32);
        for identity in [&a, &b] {
            let lowered = identity.hostname.to_lowercase();
            for word in ["sandbox", "pyti", "guest", "vm", "test", "analysis"] {
                assert!(!lowered.contains(word), "{lowered}");
            }
            assert!(identity.user.chars().all(|c| c.is_ascii_lowercase()));
            assert_eq!(identity.home(), Path::new("/home").join(&identity.user));
        }
    }

    #[test]
    fn decoys_are_unique_per_run_and_plausible() {
        let identity = Identity::from_seed(&[7; 16]);
        let one = decoys_for(&identity, &[1; 64]);
        let other = decoys_for(&identity, &[2; 64]);
        assert_eq!(one.len(), 6);
        for ((a, content), (b, _)) in one.iter().zip(&other) {
            assert_eq!(a.label, b.label);
            assert_ne!(a.value, b.value, "{}", a.label);
            assert!(a.value.len() >= 16, "{a:?}");
            if let Some(content) = content {
                assert!(content.contains(&a.value), "{content}");
                assert!(a.path.as_deref().unwrap().starts_with("/home/"));
            }
        }
        assert!(one[1].0.value.starts_with("AKIA"));
    }

    #[test]
    fn cgroup_event_counters_are_read() {
        assert_eq!(counter("max 3\n", "max"), Some(3));
        assert_eq!(
            counter("low 0\nhigh 0\nmax 0\noom 1\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
        assert_eq!(counter("oom 1\n", "oom_kill"), None);
        assert_eq!(
            mem_total_kib("MemFree: 1 kB\nMemTotal:       2000 kB\n"),
            Some(2000)
        );
    }

    #[test]
    fn free_space_is_measured() {
        assert!(free_bytes(Path::new("/")).is_some_and(|b| b > 0));
        assert_eq!(free_bytes(Path::new("/no/such/dir")), None);
    }
}
