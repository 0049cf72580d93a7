//! Invalid-opcode traps the guest kernel saw while a task ran.
//!
//! A task that fails because the guest CPU lacks an instruction is the platform's
//! fault, not the package's. The agent's own view (a child killed by SIGILL) is not
//! proof: package code can send itself SIGILL, or print what a crash looks like, to
//! turn its failure into the farm's. The kernel's record is: with
//! `debug.exception-trace` on (the default), every unhandled invalid-opcode fault logs
//! `traps: NAME[PID] trap invalid opcode ip:… in LIB[…]`, and only the kernel writes
//! that line (package code runs unprivileged and cannot write to the kernel log).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// The kernel log from the moment it was opened.
pub struct KernelLog {
    file: Option<File>,
}

impl KernelLog {
    /// Starts following `/dev/kmsg` at its end (nothing is followed where it cannot be
    /// read, e.g. on a host without the privilege).
    pub fn from_now() -> KernelLog {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .and_then(|mut file| file.seek(SeekFrom::End(0)).map(|_| file))
            .ok();
        KernelLog { file }
    }

    /// Invalid-opcode traps logged since the last call, as `NAME[PID] in LIB`.
    pub fn invalid_opcode_traps(&mut self) -> Vec<String> {
        let Some(file) = self.file.as_mut() else {
            return Vec::new();
        };
        let mut traps = Vec::new();
        // Each read returns one record; EAGAIN at the end, EPIPE when records were
        // overwritten before they were read (the next read goes on).
        let mut record = vec![0u8; 8192];
        for _ in 0..100_000 {
            match file.read(&mut record) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&record[..n]);
                    traps.extend(invalid_opcode_trap(&text));
                }
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
                Err(_) => break,
            }
        }
        traps
    }
}

/// `NAME[PID] in LIB` for a kernel record of an invalid-opcode trap (pure).
pub fn invalid_opcode_trap(record: &str) -> Option<String> {
    let message = record.split_once(';').map_or(record, |(_, m)| m);
    let rest = message.trim_start().strip_prefix("traps: ")?;
    let (process, rest) = rest.split_once(" trap invalid opcode")?;
    let library = rest
        .split_once(" in ")
        .map(|(_, lib)| lib.split('[').next().unwrap_or(lib).trim())
        .filter(|lib| !lib.is_empty());
    Some(match library {
        Some(library) => format!("{process} in {library}"),
        None => process.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_trap_records_are_read_and_others_ignored() {
        assert_eq!(
            invalid_opcode_trap(
                "6,1234,5224275871,-;traps: python3[29404] trap invalid opcode ip:7f12 sp:7fff error:0 in _multiarray_umath.cpython-311-x86_64-linux-gnu.so[7f00+5000]\n"
            )
            .as_deref(),
            Some("python3[29404] in _multiarray_umath.cpython-311-x86_64-linux-gnu.so")
        );
        assert_eq!(
            invalid_opcode_trap("traps: ud2[1] trap invalid opcode ip:1 sp:2 error:0").as_deref(),
            Some("ud2[1]")
        );
        assert_eq!(
            invalid_opcode_trap("6,1,1,-;traps: a[1] general protection fault ip:1"),
            None
        );
        assert_eq!(
            invalid_opcode_trap("6,1,1,-;python3: traps: x[1] trap invalid opcode"),
            None
        );
    }
}

/// `NAME[PID] at ADDR` for each invalid-opcode SIGILL the kernel raised in a traced
/// process (pure). A traced process's trap never reaches the kernel log (the tracer
/// decides about the signal), so the trace is where it shows; a SIGILL some process sent
/// (`si_code=SI_USER`, `SI_TKILL`) is not a trap and is left out.
pub fn traced_sigill_traps(trace: &str) -> Vec<String> {
    let mut programs: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    let mut joiner = crate::behaviour::strace::Joiner::default();
    let mut traps = Vec::new();
    for line in trace.lines() {
        if let Some(rest) = line.split_once("--- SIGILL {si_signo=SIGILL, si_code=ILL_") {
            let pid: u32 = line
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let address = rest
                .1
                .split("si_addr=")
                .nth(1)
                .and_then(|a| a.split(['}', ',']).next())
                .unwrap_or("?");
            let name = programs.get(&pid).map_or("?", String::as_str);
            traps.push(format!("{name}[{pid}] at {address}"));
            continue;
        }
        if let Some(call) = joiner.push(line) {
            if call.name == "execve" && call.succeeded() {
                if let Some(path) = call
                    .args
                    .first()
                    .and_then(|a| crate::behaviour::strace::decode_text(a))
                {
                    let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
                    programs.insert(call.pid, name);
                }
            }
        }
    }
    traps
}

#[cfg(test)]
mod traced_tests {
    use super::*;

    #[test]
    fn traps_are_read_from_a_trace_and_self_sent_sigills_are_not_traps() {
        let trace = "9 10:00:00.000000 execve(\"/w/env/bin/python\", [\"python\", \"-c\"], 0x7ffd /* 9 vars */) = 0\n\
9 10:00:01.000000 --- SIGILL {si_signo=SIGILL, si_code=ILL_ILLOPN, si_addr=0x7f3a10} ---\n\
9 10:00:01.000100 +++ killed by SIGILL (core dumped) +++\n\
8 10:00:02.000000 --- SIGILL {si_signo=SIGILL, si_code=SI_USER, si_pid=8, si_uid=0} ---\n";
        assert_eq!(traced_sigill_traps(trace), ["python[9] at 0x7f3a10"]);
    }
}
