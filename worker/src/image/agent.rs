//! Finding the `pyti-guest` agent binary and making sure it can run in the guest.
//!
//! The guest's libc is not the host's, so a dynamically linked agent would die at exec
//! inside the VM with nothing but "not found" on the console. It is refused here, at
//! build time, with the command that builds a static one.

use std::path::{Path, PathBuf};

use super::ImageError;

/// Environment variable naming the agent binary.
pub const AGENT_ENV: &str = "PYTI_GUEST_AGENT";

/// The command that builds a suitable agent.
pub const STATIC_BUILD_HINT: &str = "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p pyti-guest --target x86_64-unknown-linux-gnu";

/// The agent path: `explicit` if given, else `$PYTI_GUEST_AGENT`, else `pyti-guest` next
/// to the running executable. Only existence is checked here.
pub fn locate_agent(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let from_env = std::env::var_os(AGENT_ENV).map(PathBuf::from);
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("pyti-guest")));
    let candidate = explicit
        .map(Path::to_path_buf)
        .or(from_env)
        .or(beside_exe.filter(|p| p.is_file()));
    match candidate {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => Err(ImageError::Agent {
            path: Some(path),
            reason: format!("no such file; build it with: {STATIC_BUILD_HINT}"),
        }),
        None => Err(ImageError::Agent {
            path: None,
            reason: format!(
                "no agent given: pass --agent PATH, set {AGENT_ENV}, or put pyti-guest next to this program; build it with: {STATIC_BUILD_HINT}"
            ),
        }),
    }
}

/// How an ELF file is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linking {
    /// No program interpreter: runs on any x86-64 Linux kernel.
    Static,
    /// Needs the named dynamic loader.
    Dynamic(String),
}

/// Reads the linking of an x86-64 ELF executable from its bytes (only the headers).
pub fn elf_linking(bytes: &[u8]) -> Result<Linking, String> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| -> Option<u16> {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| -> Option<u64> {
        bytes.get(at..at + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let machine = u16_at(18).ok_or("truncated header")?;
    if machine != EM_X86_64 {
        return Err(format!("built for machine {machine}, not x86-64"));
    }
    let phoff = u64_at(32).ok_or("truncated header")? as usize;
    let phentsize = u16_at(54).ok_or("truncated header")? as usize;
    let phnum = u16_at(56).ok_or("truncated header")? as usize;
    if phentsize < 56 {
        return Err("program header entries too small".into());
    }
    for index in 0..phnum {
        let at = phoff
            .checked_add(index.checked_mul(phentsize).ok_or("header overflow")?)
            .ok_or("header overflow")?;
        let kind = u32_at(at).ok_or("truncated program headers")?;
        if kind == PT_INTERP {
            let offset = u64_at(at + 8).ok_or("truncated program headers")? as usize;
            let size = u64_at(at + 32).ok_or("truncated program headers")? as usize;
            let raw = bytes
                .get(offset..offset.saturating_add(size))
                .ok_or("interpreter path outside the file")?;
            let name = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_owned();
            return Ok(Linking::Dynamic(name));
        }
    }
    Ok(Linking::Static)
}

/// Checks that the file at `path` is a static x86-64 executable.
pub fn check_static_agent(path: &Path) -> Result<(), ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })?;
    match elf_linking(&bytes) {
        Ok(Linking::Static) => Ok(()),
        Ok(Linking::Dynamic(loader)) => Err(ImageError::Agent {
            path: Some(path.to_owned()),
            reason: format!(
                "is dynamically linked (needs {loader}), which the guest cannot run; build a static one with: {STATIC_BUILD_HINT}"
            ),
        }),
        Err(reason) => Err(ImageError::Agent {
            path: Some(path.to_owned()),
            reason: format!("is not a usable agent binary: {reason}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with program headers, optionally with a PT_INTERP.
    fn elf(interp: Option<&str>, machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        let mut headers = vec![(1u32, 0u64, 0u64)]; // PT_LOAD
        let data_at = 64 + 56 * 2;
        if let Some(path) = interp {
            headers.push((3, data_at as u64, path.len() as u64 + 1));
        }
        b[56..58].copy_from_slice(&(headers.len() as u16).to_le_bytes());
        for (kind, offset, size) in headers {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend(h);
        }
        b.resize(data_at, 0);
        if let Some(path) = interp {
            b.extend(path.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn static_and_dynamic_are_told_apart() {
        assert_eq!(elf_linking(&elf(None, 62)), Ok(Linking::Static));
        assert_eq!(
            elf_linking(&elf(Some("/lib64/ld-linux-x86-64.so.2"), 62)),
            Ok(Linking::Dynamic("/lib64/ld-linux-x86-64.so.2".into()))
        );
    }

    #[test]
    fn garbage_and_other_machines_are_refused() {
        assert!(elf_linking(b"#!/bin/sh\necho hi\n").is_err());
        assert!(elf_linking(&[]).is_err());
        assert!(elf_linking(&elf(None, 183)).unwrap_err().contains("183"));
        let mut truncated = elf(Some("/lib/ld.so"), 62);
        truncated.truncate(100);
        assert!(elf_linking(&truncated).is_err());
    }

    #[test]
    fn the_hosts_own_ls_is_dynamic_and_refused_with_the_build_hint() {
        let err = check_static_agent(Path::new("/bin/ls"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(err.contains("crt-static"), "{err}");
    }

    #[test]
    fn missing_explicit_agent_names_the_path() {
        let err = locate_agent(Some(Path::new("/nonexistent/pyti-guest")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/pyti-guest"), "{err}");
        assert!(err.contains("cargo build"), "{err}");
    }
}
