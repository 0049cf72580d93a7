//! Which paths and programs matter: sensitive files, persistence places, expected
//! processes of a pip install.
//!
//! These lists are the behaviour monitor's knowledge of what a credential thief or an
//! implant touches, kept apart from the trace parsing so they can be read and extended
//! in one place. Home-relative entries apply to the job's `HOME`, to `/root` and to
//! every `/home/<user>`.

use serde::{Deserialize, Serialize};

/// Kinds of sensitive file a package has no business reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveKind {
    /// `~/.ssh/*`, host private keys.
    SshKey,
    /// `~/.aws`, `~/.config/gcloud`, `~/.azure`, `~/.kube/config`, `~/.docker/config.json`.
    CloudCredentials,
    /// `.netrc`, `.pypirc`, `.git-credentials`, `.npmrc`, `.gnupg`, `gh` tokens.
    Credentials,
    /// Shell and REPL history files.
    ShellHistory,
    /// `/etc/shadow`, `/etc/gshadow`, `/etc/sudoers`.
    SystemSecrets,
    /// Firefox, Chrome, Chromium, Brave profiles.
    BrowserProfile,
}

/// Kinds of persistence a write can set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceKind {
    /// cron tables and directories, `crontab`.
    Cron,
    /// Shell start-up files (user and system).
    ShellRc,
    /// systemd units, SysV init scripts, `rc.local`, `systemctl`.
    Service,
    /// XDG autostart entries.
    Autostart,
    /// `~/.ssh/authorized_keys`.
    AuthorizedKeys,
    /// `/etc/ld.so.preload`.
    Preload,
    /// `.pth`, `sitecustomize.py`, `usercustomize.py` outside the environment.
    PythonStartup,
}

const HOME_SENSITIVE: &[(&str, SensitiveKind)] = &[
    (".ssh", SensitiveKind::SshKey),
    (".aws", SensitiveKind::CloudCredentials),
    (".config/gcloud", SensitiveKind::CloudCredentials),
    (".azure", SensitiveKind::CloudCredentials),
    (".kube/config", SensitiveKind::CloudCredentials),
    (".docker/config.json", SensitiveKind::CloudCredentials),
    (".netrc", SensitiveKind::Credentials),
    (".pypirc", SensitiveKind::Credentials),
    (".git-credentials", SensitiveKind::Credentials),
    (".npmrc", SensitiveKind::Credentials),
    (".gnupg", SensitiveKind::Credentials),
    (".config/gh", SensitiveKind::Credentials),
    (".bash_history", SensitiveKind::ShellHistory),
    (".zsh_history", SensitiveKind::ShellHistory),
    (".sh_history", SensitiveKind::ShellHistory),
    (".history", SensitiveKind::ShellHistory),
    (".python_history", SensitiveKind::ShellHistory),
    (".mysql_history", SensitiveKind::ShellHistory),
    (".psql_history", SensitiveKind::ShellHistory),
    (".mozilla", SensitiveKind::BrowserProfile),
    (".config/google-chrome", SensitiveKind::BrowserProfile),
    (".config/chromium", SensitiveKind::BrowserProfile),
    (".config/BraveSoftware", SensitiveKind::BrowserProfile),
];

const SYSTEM_SENSITIVE: &[(&str, SensitiveKind)] = &[
    ("/etc/shadow", SensitiveKind::SystemSecrets),
    ("/etc/shadow-", SensitiveKind::SystemSecrets),
    ("/etc/gshadow", SensitiveKind::SystemSecrets),
    ("/etc/gshadow-", SensitiveKind::SystemSecrets),
    ("/etc/sudoers", SensitiveKind::SystemSecrets),
    ("/etc/sudoers.d", SensitiveKind::SystemSecrets),
];

const HOME_PERSISTENCE: &[(&str, PersistenceKind)] = &[
    (".ssh/authorized_keys", PersistenceKind::AuthorizedKeys),
    (".ssh/authorized_keys2", PersistenceKind::AuthorizedKeys),
    (".bashrc", PersistenceKind::ShellRc),
    (".bash_profile", PersistenceKind::ShellRc),
    (".bash_login", PersistenceKind::ShellRc),
    (".bash_logout", PersistenceKind::ShellRc),
    (".profile", PersistenceKind::ShellRc),
    (".zshrc", PersistenceKind::ShellRc),
    (".zprofile", PersistenceKind::ShellRc),
    (".zshenv", PersistenceKind::ShellRc),
    (".config/fish/config.fish", PersistenceKind::ShellRc),
    (".config/systemd", PersistenceKind::Service),
    (".local/share/systemd", PersistenceKind::Service),
    (".config/autostart", PersistenceKind::Autostart),
];

const SYSTEM_PERSISTENCE: &[(&str, PersistenceKind)] = &[
    ("/etc/crontab", PersistenceKind::Cron),
    ("/etc/anacrontab", PersistenceKind::Cron),
    ("/etc/cron.d", PersistenceKind::Cron),
    ("/etc/cron.hourly", PersistenceKind::Cron),
    ("/etc/cron.daily", PersistenceKind::Cron),
    ("/etc/cron.weekly", PersistenceKind::Cron),
    ("/etc/cron.monthly", PersistenceKind::Cron),
    ("/var/spool/cron", PersistenceKind::Cron),
    ("/etc/profile", PersistenceKind::ShellRc),
    ("/etc/profile.d", PersistenceKind::ShellRc),
    ("/etc/bash.bashrc", PersistenceKind::ShellRc),
    ("/etc/environment", PersistenceKind::ShellRc),
    ("/etc/zsh", PersistenceKind::ShellRc),
    ("/etc/systemd", PersistenceKind::Service),
    ("/lib/systemd/system", PersistenceKind::Service),
    ("/usr/lib/systemd/system", PersistenceKind::Service),
    ("/etc/init.d", PersistenceKind::Service),
    ("/etc/rc.local", PersistenceKind::Service),
    ("/etc/xdg/autostart", PersistenceKind::Autostart),
    ("/etc/ld.so.preload", PersistenceKind::Preload),
];

/// True when `path` is `prefix` or lies below it.
pub fn is_within(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.starts_with('/');
    }
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The part of `path` below a home directory (the job's `home`, `/root`, `/home/<user>`).
pub fn below_home<'a>(path: &'a str, home: &str) -> Option<&'a str> {
    let strip = |prefix: &str| -> Option<&'a str> {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return None;
        }
        path.strip_prefix(prefix)?.strip_prefix('/')
    };
    if let Some(rest) = strip(home).or_else(|| strip("/root")) {
        return Some(rest);
    }
    let rest = path.strip_prefix("/home/")?;
    let (_user, below) = rest.split_once('/')?;
    Some(below)
}

/// Which kind of sensitive file `path` is, if any (any access counts as an attempt).
pub fn sensitive_kind(path: &str, home: &str) -> Option<SensitiveKind> {
    if let Some(rest) = below_home(path, home) {
        if let Some((_, kind)) = HOME_SENSITIVE.iter().find(|(p, _)| is_within(rest, p)) {
            return Some(*kind);
        }
    }
    if let Some(key) = path.strip_prefix("/etc/ssh/ssh_host_") {
        if key.ends_with("_key") {
            return Some(SensitiveKind::SshKey);
        }
    }
    SYSTEM_SENSITIVE
        .iter()
        .find(|(p, _)| is_within(path, p))
        .map(|(_, kind)| *kind)
}

/// Which kind of persistence a write to `path` sets up, if any. `.pth` and
/// `sitecustomize`/`usercustomize` files count only when the caller already knows the
/// write is outside the environment.
pub fn persistence_kind(
    path: &str,
    home: &str,
    outside_environment: bool,
) -> Option<PersistenceKind> {
    if let Some(rest) = below_home(path, home) {
        if let Some((_, kind)) = HOME_PERSISTENCE.iter().find(|(p, _)| is_within(rest, p)) {
            return Some(*kind);
        }
    }
    if let Some((_, kind)) = SYSTEM_PERSISTENCE.iter().find(|(p, _)| is_within(path, p)) {
        return Some(*kind);
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    let startup =
        name.ends_with(".pth") || name == "sitecustomize.py" || name == "usercustomize.py";
    (outside_environment && startup).then_some(PersistenceKind::PythonStartup)
}

/// Paths whose writes are never file-system changes worth reporting: devices, procfs,
/// sysfs, and pseudo files.
pub fn is_pseudo_path(path: &str) -> bool {
    ["/dev", "/proc", "/sys", "/run/user"]
        .iter()
        .any(|prefix| is_within(path, prefix))
        || !path.starts_with('/')
}

/// What kind of program an executed file is, from its base name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramKind {
    /// Part of a normal install or import: Python, compilers, linkers, `uname`, `git`.
    Expected,
    /// A command shell.
    Shell,
    /// A program whose job is to talk to the network.
    NetworkTool,
    /// A program that installs persistence (`crontab`, `systemctl`).
    PersistenceTool,
    /// Anything else: listed, not by itself a reason.
    Other,
}

/// Classifies an executed program by the base name of its path. `lsb_release` is
/// expected because pip runs it (through `distro`) to describe the platform.
pub fn program_kind(path: &str) -> ProgramKind {
    let name = path.rsplit('/').next().unwrap_or(path);
    let is_python = name
        .strip_prefix("python")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'));
    let compiler = [
        "cc",
        "c++",
        "gcc",
        "g++",
        "cpp",
        "ld",
        "ld.bfd",
        "ld.gold",
        "as",
        "ar",
        "ranlib",
        "strip",
        "collect2",
        "cc1",
        "cc1plus",
        "lto-wrapper",
        "clang",
        "clang++",
        "gfortran",
        "rustc",
        "cargo",
    ];
    let build = [
        "make",
        "cmake",
        "ninja",
        "pkg-config",
        "git",
        "uname",
        "ldconfig",
        "lsb_release",
    ];
    if is_python
        || compiler.contains(&name)
        || build.contains(&name)
        || name.starts_with("ldconfig")
        || name.starts_with("x86_64-linux-gnu-")
        || name.starts_with("aarch64-linux-gnu-")
    {
        return ProgramKind::Expected;
    }
    if [
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox",
    ]
    .contains(&name)
    {
        return ProgramKind::Shell;
    }
    if [
        "curl",
        "wget",
        "nc",
        "ncat",
        "netcat",
        "nc.openbsd",
        "nc.traditional",
        "socat",
        "ssh",
        "scp",
        "sftp",
        "telnet",
        "ftp",
        "rsync",
        "dig",
        "nslookup",
        "host",
    ]
    .contains(&name)
    {
        return ProgramKind::NetworkTool;
    }
    if [
        "crontab",
        "systemctl",
        "at",
        "batch",
        "update-rc.d",
        "launchctl",
    ]
    .contains(&name)
    {
        return ProgramKind::PersistenceTool;
    }
    ProgramKind::Other
}

/// Normalises an absolute path lexically (`.`, `..`, doubled slashes); relative paths
/// are joined to `base` first.
pub fn normalise(path: &str, base: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), path)
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: &str = "/tmp/job/home";

    #[test]
    fn sensitive_files_in_every_home() {
        let cases = [
            ("/tmp/job/home/.ssh/id_rsa", Some(SensitiveKind::SshKey)),
            ("/tmp/job/home/.ssh", Some(SensitiveKind::SshKey)),
            ("/root/.ssh/id_ed25519", Some(SensitiveKind::SshKey)),
            ("/home/alice/.ssh/known_hosts", Some(SensitiveKind::SshKey)),
            ("/etc/ssh/ssh_host_rsa_key", Some(SensitiveKind::SshKey)),
            ("/etc/ssh/ssh_host_rsa_key.pub", None),
            ("/etc/ssh/sshd_config", None),
            (
                "/root/.aws/credentials",
                Some(SensitiveKind::CloudCredentials),
            ),
            (
                "/root/.config/gcloud/credentials.db",
                Some(SensitiveKind::CloudCredentials),
            ),
            (
                "/root/.azure/accessTokens.json",
                Some(SensitiveKind::CloudCredentials),
            ),
            ("/root/.kube/config", Some(SensitiveKind::CloudCredentials)),
            ("/root/.netrc", Some(SensitiveKind::Credentials)),
            ("/root/.pypirc", Some(SensitiveKind::Credentials)),
            ("/root/.git-credentials", Some(SensitiveKind::Credentials)),
            (
                "/root/.gnupg/private-keys-v1.d/x.key",
                Some(SensitiveKind::Credentials),
            ),
            ("/root/.bash_history", Some(SensitiveKind::ShellHistory)),
            ("/home/bob/.zsh_history", Some(SensitiveKind::ShellHistory)),
            ("/etc/shadow", Some(SensitiveKind::SystemSecrets)),
            ("/etc/gshadow", Some(SensitiveKind::SystemSecrets)),
            ("/etc/sudoers.d/admins", Some(SensitiveKind::SystemSecrets)),
            (
                "/root/.mozilla/firefox/x.default/logins.json",
                Some(SensitiveKind::BrowserProfile),
            ),
            (
                "/root/.config/google-chrome/Default/Cookies",
                Some(SensitiveKind::BrowserProfile),
            ),
            (
                "/root/.config/chromium/Default/Login Data",
                Some(SensitiveKind::BrowserProfile),
            ),
            ("/etc/passwd", None),
            ("/etc/shadowfax", None),
            ("/root/.sshd", None),
            ("/root/.bashrc", None),
            ("/root/.config/pip/pip.conf", None),
            ("/home/alice", None),
            ("/srv/.ssh/id_rsa", None),
        ];
        for (path, expected) in cases {
            assert_eq!(sensitive_kind(path, HOME), expected, "{path}");
        }
    }

    #[test]
    fn persistence_places() {
        let cases = [
            ("/etc/cron.d/pyti", false, Some(PersistenceKind::Cron)),
            ("/etc/crontab", false, Some(PersistenceKind::Cron)),
            ("/etc/cron.daily/x", false, Some(PersistenceKind::Cron)),
            (
                "/var/spool/cron/crontabs/root",
                false,
                Some(PersistenceKind::Cron),
            ),
            (
                "/tmp/job/home/.bashrc",
                false,
                Some(PersistenceKind::ShellRc),
            ),
            ("/root/.profile", false, Some(PersistenceKind::ShellRc)),
            ("/etc/profile.d/x.sh", false, Some(PersistenceKind::ShellRc)),
            ("/etc/bash.bashrc", false, Some(PersistenceKind::ShellRc)),
            (
                "/etc/systemd/system/x.service",
                false,
                Some(PersistenceKind::Service),
            ),
            (
                "/root/.config/systemd/user/x.service",
                false,
                Some(PersistenceKind::Service),
            ),
            ("/etc/init.d/x", false, Some(PersistenceKind::Service)),
            (
                "/root/.config/autostart/x.desktop",
                false,
                Some(PersistenceKind::Autostart),
            ),
            (
                "/etc/xdg/autostart/x.desktop",
                false,
                Some(PersistenceKind::Autostart),
            ),
            (
                "/root/.ssh/authorized_keys",
                false,
                Some(PersistenceKind::AuthorizedKeys),
            ),
            ("/etc/ld.so.preload", false, Some(PersistenceKind::Preload)),
            (
                "/usr/lib/python3/dist-packages/evil.pth",
                true,
                Some(PersistenceKind::PythonStartup),
            ),
            (
                "/usr/lib/python3.11/sitecustomize.py",
                true,
                Some(PersistenceKind::PythonStartup),
            ),
            ("/w/venv/lib/python3.11/site-packages/x.pth", false, None),
            ("/etc/cron.dx", false, None),
            ("/etc/hosts", false, None),
            ("/root/.cache/x", false, None),
        ];
        for (path, outside, expected) in cases {
            assert_eq!(persistence_kind(path, HOME, outside), expected, "{path}");
        }
    }

    #[test]
    fn programs() {
        let cases = [
            ("/usr/bin/python3", ProgramKind::Expected),
            ("/w/venv/bin/python", ProgramKind::Expected),
            ("/usr/bin/python3.11", ProgramKind::Expected),
            ("/usr/bin/x86_64-linux-gnu-gcc-12", ProgramKind::Expected),
            ("/sbin/ldconfig.real", ProgramKind::Expected),
            ("/usr/bin/git", ProgramKind::Expected),
            ("/bin/sh", ProgramKind::Shell),
            ("/usr/bin/bash", ProgramKind::Shell),
            ("/usr/bin/curl", ProgramKind::NetworkTool),
            ("/bin/nc.openbsd", ProgramKind::NetworkTool),
            ("/usr/bin/crontab", ProgramKind::PersistenceTool),
            ("/usr/bin/systemctl", ProgramKind::PersistenceTool),
            ("/usr/bin/pythonista", ProgramKind::Other),
            ("/usr/bin/id", ProgramKind::Other),
        ];
        for (path, expected) in cases {
            assert_eq!(program_kind(path), expected, "{path}");
        }
    }

    #[test]
    fn normalises_paths() {
        assert_eq!(normalise("rel.txt", "/tmp/stx/sub"), "/tmp/stx/sub/rel.txt");
        assert_eq!(normalise("../x/./y", "/a/b"), "/a/x/y");
        assert_eq!(normalise("//etc//cron.d/../cron.d/x", "/"), "/etc/cron.d/x");
        assert_eq!(normalise("/../../etc", "/"), "/etc");
    }

    #[test]
    fn within_and_pseudo() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a/"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_pseudo_path("/dev/null"));
        assert!(is_pseudo_path("/proc/self/fd/3"));
        assert!(is_pseudo_path("relative"));
        assert!(!is_pseudo_path("/devices"));
    }
}
