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
