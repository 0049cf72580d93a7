//! The behaviour monitor: from an strace log of `pip install` and `import` to a list of
//! what the package did and a verdict with its reasons.
//!
//! This is what a user of PyTI most wants to know about a package they have not read:
//! does installing or importing it reach for the network, read credentials, start a
//! shell, or plant something that survives a reboot. Everything here is pure (text in,
//! report out) so every rule is tested with literal strace lines; the agent only
//! produces the logs. pip's own activity (its Python subprocesses, the build backend in
//! its isolated environment, compilers) is expected and never a reason by itself.

pub mod classify;
pub mod strace;
pub mod tamper;
mod verdict;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use classify::{PersistenceKind, ProgramKind, SensitiveKind};
use strace::{SocketAddress, Syscall};

/// The monitor's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing noteworthy.
    Clean,
    /// Something a package may do for a legitimate reason but usually does not.
    Suspicious,
    /// Something no package install or import has a reason to do.
    Malicious,
}

/// Which traced step an observation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `pip install`, the sdist's build backend included.
    Install,
    /// Importing the top-level modules.
    Import,
    /// Running each console script with `--help`.
    ConsoleScript,
    /// The project's own test suite.
    Tests,
}

impl Phase {
    /// The stable name (`install`, `console_script`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Install => "install",
            Phase::Import => "import",
            Phase::ConsoleScript => "console_script",
            Phase::Tests => "tests",
        }
    }
}

/// What the monitor needs to know about the traced run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The `HOME` the traced processes got.
    pub home: String,
    /// Where writes are expected: the environment, the work and temp dirs.
    pub environment_roots: Vec<String>,
    /// The working directory the traced command started in.
    pub initial_cwd: String,
    /// The decoy credentials planted for this run: any read of one, and any later use
    /// of its value, is exfiltration.
    pub decoys: Vec<Decoy>,
}

/// A planted credential, unique to one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoy {
    /// What it poses as (`ssh key`, `AWS_SECRET_ACCESS_KEY`, ...).
    pub label: String,
    /// The file it is in, when it is a file.
    pub path: Option<String>,
    /// Its secret: unique, at least 16 characters, compared case-insensitively.
    pub value: String,
}

/// A decoy read, or its value seen leaving in a name, a connection, a file name or a
/// process argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exfiltration {
    /// When.
    pub phase: Phase,
    /// Which decoy.
    pub decoy: String,
    /// How: the system call.
    pub syscall: String,
    /// What exactly (the file read, the name looked up, the argument).
    pub detail: String,
}

/// A connection or datagram to an IP address (DNS excluded, see [`DnsLookup`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttempt {
    /// When.
    pub phase: Phase,
    /// `connect`, `sendto`, `sendmsg`, `sendmmsg`.
    pub syscall: String,
    /// `inet` or `inet6`.
    pub family: String,
    /// Destination address.
    pub address: String,
    /// Destination port.
    pub port: u16,
    /// `ok` or the errno name.
    pub result: String,
}

/// A name lookup: traffic to port 53, with the queried name when the payload shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsLookup {
    /// When.
    pub phase: Phase,
    /// The resolver addressed, `address:port`.
    pub server: String,
    /// The name asked for.
    pub name: Option<String>,
}

/// A program executed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRecord {
    /// When.
    pub phase: Phase,
    /// The executable's path.
    pub path: String,
    /// Its arguments.
    pub argv: Vec<String>,
    /// What kind of program it is.
    pub kind: ProgramKind,
}

/// An access to a sensitive file (a failed attempt counts too).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitiveRead {
    /// When.
    pub phase: Phase,
    /// The file.
    pub path: String,
    /// What it holds.
    pub kind: SensitiveKind,
    /// `ok` or the errno name.
    pub result: String,
}

/// A write or program that sets up persistence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceAttempt {
    /// When.
    pub phase: Phase,
    /// The file written, or the program run.
    pub path: String,
    /// Which mechanism.
    pub kind: PersistenceKind,
    /// The system call (`openat`, `rename`, ...) or `execve`.
    pub syscall: String,
    /// `ok` or the errno name.
    pub result: String,
}

/// A file created, changed, moved or removed outside the environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteOutside {
    /// When.
    pub phase: Phase,
    /// The file.
    pub path: String,
    /// The system call.
    pub syscall: String,
    /// `ok` or the errno name.
    pub result: String,
}

/// The rule behind a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Opened a credential, key, history or browser file.
    SensitiveFileRead,
    /// Wrote a persistence place or ran a persistence tool.
    Persistence,
    /// Tried to reach an IP address.
    NetworkAttempt,
    /// Tried to resolve a name.
    DnsLookup,
    /// Started a shell.
    ShellSpawned,
    /// Ran a network program (curl, nc, ...).
    NetworkTool,
    /// Wrote outside the environment.
    WriteOutsideEnvironment,
    /// Read a planted decoy credential or used its value.
    Exfiltration,
}

/// One reason for the verdict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// How bad.
    pub severity: Verdict,
    /// Which rule.
    pub rule: Rule,
    /// What exactly, in one line.
    pub detail: String,
}

/// Everything the monitor found, and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviourReport {
    /// The worst severity among the reasons; `clean` without reasons.
    pub verdict: Verdict,
    /// Why, worst first.
    pub reasons: Vec<Reason>,
    /// Attempts to reach an IP address.
    pub network: Vec<NetworkAttempt>,
    /// Name lookups.
    pub dns: Vec<DnsLookup>,
    /// Unix sockets connected to (not a reason: local services such as nscd).
    pub unix_sockets: Vec<String>,
    /// Programs executed, pip's own included.
    pub processes: Vec<ProcessRecord>,
    /// Sensitive files accessed.
    pub sensitive_reads: Vec<SensitiveRead>,
    /// Persistence attempts.
    pub persistence: Vec<PersistenceAttempt>,
    /// Writes outside the environment (persistence writes included).
    pub writes_outside: Vec<WriteOutside>,
    /// Decoy credentials read or their values used (absent in old results).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exfiltration: Vec<Exfiltration>,
    /// Exit code of the traced `pip install` (None when not run or killed).
    pub install_exit_code: Option<i32>,
    /// Exit code of the traced import (None when not run or killed).
    pub import_exit_code: Option<i32>,
    /// Trace lines read.
    pub trace_lines: u64,
    /// Lines that looked like calls but did not parse.
    pub unparsed_lines: u64,
    /// True when a list was cut at the listing cap.
    pub truncated: bool,
}

/// What the trace showed so far; feed it traces, then ask for the [`BehaviourReport`].
#[derive(Debug, Default)]
pub struct Observations {
    network: BTreeSet<NetworkAttempt>,
    dns: BTreeSet<DnsLookup>,
    unix_sockets: BTreeSet<String>,
    processes: Vec<ProcessRecord>,
    sensitive_reads: BTreeSet<SensitiveRead>,
    persistence: BTreeSet<PersistenceAttempt>,
    writes_outside: BTreeSet<WriteOutside>,
    exfiltration: BTreeSet<Exfiltration>,
    cwd: HashMap<u32, String>,
    sockets: HashMap<String, SocketAddress>,
    trace_lines: u64,
    unparsed_lines: u64,
}

/// The name asked for in a DNS query (UDP, or TCP with its two-byte length prefix).
pub fn dns_query_name(payload: &[u8]) -> Option<String> {
    [12usize, 14]
        .into_iter()
        .find_map(|offset| labels_at(payload, offset))
}

fn labels_at(payload: &[u8], mut offset: usize) -> Option<String> {
    let mut labels = Vec::new();
    loop {
        let length = usize::from(*payload.get(offset)?);
        if length == 0 {
            break;
        }
        if length > 63 {
            return None;
        }
        let label = payload.get(offset + 1..offset + 1 + length)?;
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).into_owned());
        offset += 1 + length;
    }
    let name = labels.join(".");
    (!name.is_empty() && name.len() <= 253).then_some(name)
}

impl Observations {
    /// Reads a whole strace log of one phase.
    pub fn read_trace(&mut self, trace: &str, phase: Phase, context: &TraceContext) {
        let mut joiner = strace::Joiner::default();
        for line in trace.lines() {
            self.trace_lines += 1;
            if let Some(call) = joiner.push(line) {
                self.observe(&call, phase, context);
            }
        }
        self.unparsed_lines += joiner.unparsed;
    }

    fn cwd_of(&self, pid: u32, context: &TraceContext) -> String {
        self.cwd
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| context.initial_cwd.clone())
    }

    /// The absolute path a path argument names, from the `-y` result, the directory
    /// descriptor, or the process's working directory.
    fn resolve(
        &self,
        call: &Syscall,
        dirfd: Option<&str>,
        path: &str,
        context: &TraceContext,
    ) -> String {
        let base = match dirfd.map(strace::fd_path) {
            Some((_, Some(dir))) => dir.to_string(),
            _ => self.cwd_of(call.pid, context),
        };
        classify::normalise(path, &base)
    }

    /// Takes one call into account.
    pub fn observe(&mut self, call: &Syscall, phase: Phase, context: &TraceContext) {
        if let Some(first) = call.args.first() {
            if let ("AT_FDCWD", Some(cwd)) = strace::fd_path(first) {
                self.cwd.insert(call.pid, cwd.to_string());
            }
        }
        self.look_for_decoys(call, phase, context);
        let arg = |index: usize| call.args.get(index).map(String::as_str);
        let text = |index: usize| arg(index).and_then(strace::decode_text);
        match call.name.as_str() {
            "execve" | "execveat" => {
                let (path_at, argv_at) = if call.name == "execve" {
                    (0, 1)
                } else {
                    (1, 2)
                };
                let (Some(path), Some(argv)) = (text(path_at), arg(argv_at)) else {
                    return;
                };
                if call.succeeded() {
                    self.record_process(phase, path, strace::decode_array(argv), call);
                }
            }
            "open" | "creat" | "openat" | "openat2" => {
                let (dirfd, path_at, flags_at) = match call.name.as_str() {
                    "open" | "creat" => (None, 0, 1),
                    _ => (arg(0), 1, 2),
                };
                let Some(raw) = text(path_at) else { return };
                let path = match strace::fd_path(&call.result) {
                    (_, Some(resolved)) if call.succeeded() && resolved.starts_with('/') => {
                        resolved.to_string()
                    }
                    _ => self.resolve(call, dirfd, &raw, context),
                };
                let flags = arg(flags_at).unwrap_or("");
                let writes = call.name == "creat"
                    || ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                        .iter()
                        .any(|flag| flags.contains(flag));
                if let Some(kind) = classify::sensitive_kind(&path, &context.home) {
                    if !writes || !path_ends_with(&path, "authorized_keys") {
                        self.sensitive_reads.insert(SensitiveRead {
                            phase,
                            path: path.clone(),
                            kind,
                            result: call.result_name(),
                        });
                    }
                }
                if writes {
                    self.record_write(phase, path, call, context);
                }
            }
            "rename" | "link" | "symlink" => self.write_at(phase, call, None, 1, context),
            "renameat" | "renameat2" | "linkat" => self.write_at(phase, call, arg(2), 3, context),
            "symlinkat" => self.write_at(phase, call, arg(1), 2, context),
            "mkdir" | "unlink" | "truncate" => self.write_at(phase, call, None, 0, context),
            "mkdirat" | "unlinkat" => self.write_at(phase, call, arg(0), 1, context),
            "chdir" if call.succeeded() => {
                if let Some(path) = text(0) {
                    let cwd = self.resolve(call, None, &path, context);
                    self.cwd.insert(call.pid, cwd);
                }
            }
            "fchdir" if call.succeeded() => {
                if let Some((_, Some(dir))) = arg(0).map(strace::fd_path) {
                    self.cwd.insert(call.pid, dir.to_string());
                }
            }
            "clone" | "clone3" | "fork" | "vfork" if call.succeeded() => {
                if let Ok(child) = call.result.split_whitespace().next().unwrap_or("").parse() {
                    let cwd = self.cwd_of(call.pid, context);
                    self.cwd.insert(child, cwd);
                }
            }
            "connect" => {
                let Some(address) = arg(1).and_then(strace::parse_sockaddr) else {
                    return;
                };
                if let Some(socket) = arg(0).and_then(|fd| strace::fd_path(fd).1) {
                    self.sockets.insert(socket.to_string(), address.clone());
                }
                self.record_traffic(phase, call, &address, &[]);
            }
            "sendto" | "sendmsg" | "sendmmsg" => {
                let message = arg(1).unwrap_or("");
                let explicit = match call.name.as_str() {
                    "sendto" => arg(4).and_then(strace::parse_sockaddr),
                    _ => message
                        .find("msg_name={")
                        .and_then(|at| strace::parse_sockaddr(&message[at..])),
                };
                let connected = arg(0)
                    .and_then(|fd| strace::fd_path(fd).1)
                    .and_then(|socket| self.sockets.get(socket))
                    .cloned();
                let Some(address) = explicit.or(connected) else {
                    return;
                };
                let payloads = if call.name == "sendto" {
                    strace::decode_string(message).into_iter().collect()
                } else {
                    strace::iov_payloads(message)
                };
                self.record_traffic(phase, call, &address, &payloads);
            }
            _ => {}
        }
    }

    /// A decoy file opened, or a decoy value anywhere in a call's arguments (a DNS
    /// query's name, a sent payload, a path, a process argument).
    fn look_for_decoys(&mut self, call: &Syscall, phase: Phase, context: &TraceContext) {
        if context.decoys.is_empty() {
            return;
        }
        let opened = match call.name.as_str() {
            "open" | "creat" => call.args.first(),
            "openat" | "openat2" => call.args.get(1),
            _ => None,
        }
        .and_then(|a| strace::decode_text(a));
        let arguments = call.args.join(", ").to_lowercase();
        let payloads: Vec<Vec<u8>> = match call.name.as_str() {
            "sendto" => call
                .args
                .get(1)
                .and_then(|a| strace::decode_string(a))
                .into_iter()
                .collect(),
            "sendmsg" | "sendmmsg" => call
                .args
                .get(1)
                .map(|m| strace::iov_payloads(m))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let names: Vec<String> = payloads.iter().filter_map(|p| dns_query_name(p)).collect();
        for decoy in &context.decoys {
            let read = opened.is_some() && opened.as_deref() == decoy.path.as_deref();
            let value = decoy.value.to_lowercase();
            let looked_up = names.iter().find(|n| n.to_lowercase().contains(&value));
            let detail = if read {
                format!(
                    "opened {} ({})",
                    decoy.path.as_deref().unwrap_or(""),
                    call.result_name()
                )
            } else if let Some(name) = looked_up {
                format!("its value in the DNS query for {name}")
            } else if let Some(at) = arguments.find(&value) {
                let from = (0..=at.saturating_sub(40))
                    .rev()
                    .find(|i| arguments.is_char_boundary(*i))
                    .unwrap_or(0);
                let to = (at + value.len()..=(at + value.len() + 40).min(arguments.len()))
                    .rev()
                    .find(|i| arguments.is_char_boundary(*i))
                    .unwrap_or(arguments.len());
                format!("its value in {}", &arguments[from..to])
            } else {
                continue;
            };
            self.exfiltration.insert(Exfiltration {
                phase,
                decoy: decoy.label.clone(),
                syscall: call.name.clone(),
                detail,
            });
        }
    }

    fn write_at(
        &mut self,
        phase: Phase,
        call: &Syscall,
        dirfd: Option<&str>,
        path_at: usize,
        context: &TraceContext,
    ) {
        let Some(raw) = call.args.get(path_at).and_then(|a| strace::decode_text(a)) else {
            return;
        };
        let errno = call.result_name();
        let nothing_happened = (call.name.starts_with("mkdir") && errno == "EEXIST")
            || (call.name.starts_with("unlink") && errno == "ENOENT");
        if nothing_happened {
            return;
        }
        let path = self.resolve(call, dirfd, &raw, context);
        self.record_write(phase, path, call, context);
    }

    fn record_write(&mut self, phase: Phase, path: String, call: &Syscall, context: &TraceContext) {
        if classify::is_pseudo_path(&path)
            || context
                .environment_roots
                .iter()
                .any(|root| classify::is_within(&path, root))
        {
            return;
        }
        let result = call.result_name();
        if let Some(kind) = classify::persistence_kind(&path, &context.home, true) {
            self.persistence.insert(PersistenceAttempt {
                phase,
                path: path.clone(),
                kind,
                syscall: call.name.clone(),
                result: result.clone(),
            });
        }
        self.writes_outside.insert(WriteOutside {
            phase,
            path,
            syscall: call.name.clone(),
            result,
        });
    }

    fn record_process(&mut self, phase: Phase, path: String, argv: Vec<String>, call: &Syscall) {
        let kind = classify::program_kind(&path);
        if kind == ProgramKind::PersistenceTool {
            let name = path.rsplit('/').next().unwrap_or("");
            let persistence = if ["crontab", "at", "batch"].contains(&name) {
                PersistenceKind::Cron
            } else {
                PersistenceKind::Service
            };
            self.persistence.insert(PersistenceAttempt {
                phase,
                path: path.clone(),
                kind: persistence,
                syscall: call.name.clone(),
                result: call.result_name(),
            });
        }
        let record = ProcessRecord {
            phase,
            path,
            argv,
            kind,
        };
        if !self.processes.contains(&record) {
            self.processes.push(record);
        }
    }

    fn record_traffic(
        &mut self,
        phase: Phase,
        call: &Syscall,
        address: &SocketAddress,
        payloads: &[Vec<u8>],
    ) {
        match address {
            SocketAddress::Inet {
                family,
                address,
                port,
            } => {
                if *port == 53 {
                    let server = format!("{address}:{port}");
                    let names: Vec<String> =
                        payloads.iter().filter_map(|p| dns_query_name(p)).collect();
                    if names.is_empty() {
                        self.dns.insert(DnsLookup {
                            phase,
                            server: server.clone(),
                            name: None,
                        });
                    }
                    for name in names {
                        self.dns.insert(DnsLookup {
                            phase,
                            server: server.clone(),
                            name: Some(name),
                        });
                    }
                } else {
                    self.network.insert(NetworkAttempt {
                        phase,
                        syscall: call.name.clone(),
                        family: family.to_string(),
                        address: address.clone(),
                        port: *port,
                        result: call.result_name(),
                    });
                }
            }
            SocketAddress::Unix(path) => {
                self.unix_sockets.insert(path.clone());
            }
            SocketAddress::Other => {}
        }
    }
}

fn path_ends_with(path: &str, name: &str) -> bool {
    path.rsplit('/').next() == Some(name)
}

#[cfg(test)]
mod tests;
