//! From observations to a verdict: the rules that say how bad each finding is.
//!
//! Kept apart from the trace reading so the severity of every rule is visible in one
//! place: credentials and persistence are malicious (no install has a reason for
//! them); network, name lookups, shells and stray writes are suspicious.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{BehaviourReport, DnsLookup, Observations, Phase, ProgramKind, Reason, Rule, Verdict};
use crate::results::MAX_LISTED;

impl Observations {
    /// The report with its verdict; `install_exit_code`/`import_exit_code` are filled by
    /// the caller.
    pub fn report(self) -> BehaviourReport {
        let named: BTreeSet<(Phase, String)> = self
            .dns
            .iter()
            .filter(|lookup| lookup.name.is_some())
            .map(|lookup| (lookup.phase, lookup.server.clone()))
            .collect();
        let dns: Vec<DnsLookup> = self
            .dns
            .into_iter()
            .filter(|l| l.name.is_some() || !named.contains(&(l.phase, l.server.clone())))
            .collect();
        let mut reasons = BTreeSet::new();
        let mut reason = |severity, rule, detail: String| {
            reasons.insert(Reason {
                severity,
                rule,
                detail,
            });
        };
        for read in &self.sensitive_reads {
            reason(
                Verdict::Malicious,
                Rule::SensitiveFileRead,
                format!(
                    "opened {} ({}, {}) during {}",
                    read.path,
                    stable_name(&read.kind),
                    read.result,
                    read.phase.as_str()
                ),
            );
        }
        for theft in &self.exfiltration {
            reason(
                Verdict::Malicious,
                Rule::Exfiltration,
                format!(
                    "exfiltration of the decoy {}: {} {} during {}",
                    theft.decoy,
                    theft.syscall,
                    theft.detail,
                    theft.phase.as_str()
                ),
            );
        }
        for attempt in &self.persistence {
            reason(
                Verdict::Malicious,
                Rule::Persistence,
                format!(
                    "{} {} ({}, {}) during {}",
                    attempt.syscall,
                    attempt.path,
                    stable_name(&attempt.kind),
                    attempt.result,
                    attempt.phase.as_str()
                ),
            );
        }
        for attempt in &self.network {
            reason(
                Verdict::Suspicious,
                Rule::NetworkAttempt,
                format!(
                    "{} to {}:{} ({}) during {}",
                    attempt.syscall,
                    attempt.address,
                    attempt.port,
                    attempt.result,
                    attempt.phase.as_str()
                ),
            );
        }
        for lookup in &dns {
            reason(
                Verdict::Suspicious,
                Rule::DnsLookup,
                format!(
                    "looked up {} via {} during {}",
                    lookup.name.as_deref().unwrap_or("a name"),
                    lookup.server,
                    lookup.phase.as_str()
                ),
            );
        }
        for process in &self.processes {
            let rule = match process.kind {
                ProgramKind::Shell => Rule::ShellSpawned,
                ProgramKind::NetworkTool => Rule::NetworkTool,
                _ => continue,
            };
            reason(
                Verdict::Suspicious,
                rule,
                format!("ran {:?} during {}", process.argv, process.phase.as_str()),
            );
        }
        let persistence_paths: BTreeSet<&str> =
            self.persistence.iter().map(|p| p.path.as_str()).collect();
        for write in &self.writes_outside {
            if !persistence_paths.contains(write.path.as_str()) {
                reason(
                    Verdict::Suspicious,
                    Rule::WriteOutsideEnvironment,
                    format!(
                        "{} {} ({}) during {}",
                        write.syscall,
                        write.path,
                        write.result,
                        write.phase.as_str()
                    ),
                );
            }
        }
        let mut reasons: Vec<Reason> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.cmp(b)));
        let verdict = reasons.first().map_or(Verdict::Clean, |r| r.severity);
        let mut truncated = false;
        let t = &mut truncated;
        BehaviourReport {
            verdict,
            reasons: cap(reasons, t),
            network: cap(self.network.into_iter().collect(), t),
            dns: cap(dns, t),
            unix_sockets: cap(self.unix_sockets.into_iter().collect(), t),
            processes: cap(self.processes, t),
            sensitive_reads: cap(self.sensitive_reads.into_iter().collect(), t),
            persistence: cap(self.persistence.into_iter().collect(), t),
            writes_outside: cap(self.writes_outside.into_iter().collect(), t),
            exfiltration: cap(self.exfiltration.into_iter().collect(), t),
            install_exit_code: None,
            import_exit_code: None,
            trace_lines: self.trace_lines,
            unparsed_lines: self.unparsed_lines,
            truncated,
        }
    }
}

/// The serialised (snake_case) name of a unit enum value.
fn stable_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn cap<T>(mut list: Vec<T>, truncated: &mut bool) -> Vec<T> {
    if list.len() > MAX_LISTED {
        list.truncate(MAX_LISTED);
        *truncated = true;
    }
    list
}
