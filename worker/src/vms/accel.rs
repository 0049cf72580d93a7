//! KVM or TCG: which accelerator a QEMU guest gets.
//!
//! `/dev/kvm` alone proves nothing: on nested or restricted hosts the node exists (and may
//! even open) while KVM guests hang forever at boot. So `auto` picks KVM only when every
//! one of these holds, and TCG otherwise:
//! 1. `/proc/cpuinfo` lists `vmx` or `svm` (the CPU, or the nesting hypervisor, exposes it);
//! 2. `/dev/kvm` opens read-write and `KVM_GET_API_VERSION` answers 12;
//! 3. a one-instruction guest (`hlt` at the reset vector) created with `KVM_CREATE_VM`
//!    actually runs and exits with `KVM_EXIT_HLT` within two seconds;
//! 4. libvirt's capabilities for the connection offer `<domain type='kvm'>`.
//!
//! Steps 1–3 are host facts, probed once per process and cached; step 4 belongs to the
//! connection. The choice is overridable (`kvm` / `tcg`) for hosts that know better.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceleratorChoice {
    /// KVM when the host really runs KVM guests, TCG otherwise.
    #[default]
    Auto,
    /// Always KVM (trust the operator).
    Kvm,
    /// Always TCG emulation.
    Tcg,
}

impl FromStr for AcceleratorChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" | "qemu" => Ok(Self::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: expected auto, kvm or tcg"
            )),
        }
    }
}

/// The accelerator a guest actually gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// What the host told us about KVM (steps 1–3 of the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKvm {
    /// `/proc/cpuinfo` has `vmx` or `svm`.
    pub cpu_has_virtualization: bool,
    /// `/dev/kvm` usable and a `hlt` guest ran; the error says which step failed.
    pub probe: Result<(), String>,
}

/// The accelerator for `choice`, with the reason (for the log).
pub fn decide(
    choice: AcceleratorChoice,
    host: &HostKvm,
    libvirt_offers_kvm: bool,
) -> (Accelerator, String) {
    match choice {
        AcceleratorChoice::Kvm => (Accelerator::Kvm, "forced by configuration".to_owned()),
        AcceleratorChoice::Tcg => (Accelerator::Tcg, "forced by configuration".to_owned()),
        AcceleratorChoice::Auto => {
            if !host.cpu_has_virtualization {
                return (
                    Accelerator::Tcg,
                    "/proc/cpuinfo has no vmx/svm flag".to_owned(),
                );
            }
            if let Err(reason) = &host.probe {
                return (Accelerator::Tcg, format!("KVM probe failed: {reason}"));
            }
            if !libvirt_offers_kvm {
                return (
                    Accelerator::Tcg,
                    "libvirt capabilities offer no kvm domain type".to_owned(),
                );
            }
            (Accelerator::Kvm, "KVM probe guest ran".to_owned())
        }
    }
}

/// True when `/proc/cpuinfo` text lists the `vmx` (Intel) or `svm` (AMD) flag.
pub fn cpuinfo_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .filter_map(|line| line.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// True when libvirt capabilities XML offers a `kvm` domain type for some guest.
pub fn capabilities_offer_kvm(capabilities_xml: &str) -> bool {
    capabilities_xml.contains("<domain type='kvm'")
        || capabilities_xml.contains("<domain type=\"kvm\"")
}

/// The host's KVM facts, probed on first use and cached for the life of the process.
pub fn host_kvm() -> &'static HostKvm {
    static HOST: OnceLock<HostKvm> = OnceLock::new();
    HOST.get_or_init(|| {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_has_virtualization = cpuinfo_has_virtualization(&cpuinfo);
        // Without the flag the probe is skipped: on such hosts KVM_RUN may never return.
        let probe = if cpu_has_virtualization {
            probe_kvm_guest(Duration::from_secs(2))
        } else {
            Err("skipped (no vmx/svm)".to_owned())
        };
        HostKvm {
            cpu_has_virtualization,
            probe,
        }
    })
}

/// Runs a guest whose only instruction is `hlt` and waits up to `timeout` for it to exit.
///
/// The guest runs on its own thread: a KVM_RUN that never returns leaves that thread
/// blocked (once per process, since the answer is cached), not the caller.
fn probe_kvm_guest(timeout: Duration) -> Result<(), String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = sender.send(kvm::run_hlt_guest());
        })
        .map_err(|e| format!("cannot start the probe thread: {e}"))?;
    match receiver.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the hlt guest did not exit within {} s (KVM guests hang on this host)",
            timeout.as_secs()
        )),
    }
}

mod kvm {
    //! Raw KVM ioctls for the probe guest (no crate needed for five calls).
    use std::ffi::CString;

    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
    const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
    const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
    const KVM_RUN: libc::c_ulong = 0xAE80;
    const KVM_EXIT_HLT: u32 = 5;
    /// The page holding the x86 reset vector (0xFFFF_FFF0).
    const RESET_PAGE: u64 = 0xFFFF_F000;

    #[repr(C)]
    struct UserspaceMemoryRegion {
        slot: u32,
        flags: u32,
        guest_phys_addr: u64,
        memory_size: u64,
        userspace_addr: u64,
    }

    struct Fd(libc::c_int);

    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: the descriptor is owned by this wrapper and closed once.
            unsafe { libc::close(self.0) };
        }
    }

    fn last_error(step: &str) -> String {
        format!("{step}: {}", std::io::Error::last_os_error())
    }

    pub(super) fn run_hlt_guest() -> Result<(), String> {
        let path = CString::new("/dev/kvm").map_err(|e| e.to_string())?;
        // SAFETY: plain syscalls on descriptors and mappings owned by this function.
        unsafe {
            let raw = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if raw < 0 {
                return Err(last_error("open /dev/kvm"));
            }
            let kvm = Fd(raw);
            let version = libc::ioctl(kvm.0, KVM_GET_API_VERSION, 0);
            if version != 12 {
                return Err(format!("KVM_GET_API_VERSION returned {version}, not 12"));
            }
            let vm = libc::ioctl(kvm.0, KVM_CREATE_VM, 0);
            if vm < 0 {
                return Err(last_error("KVM_CREATE_VM"));
            }
            let vm = Fd(vm);
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if page == libc::MAP_FAILED {
                return Err(last_error("mmap guest page"));
            }
            *(page as *mut u8).add(0xFF0) = 0xF4; // hlt
            let region = UserspaceMemoryRegion {
                slot: 0,
                flags: 0,
                guest_phys_addr: RESET_PAGE,
                memory_size: 4096,
                userspace_addr: page as u64,
            };
            let result = (|| {
                if libc::ioctl(vm.0, KVM_SET_USER_MEMORY_REGION, &region) < 0 {
                    return Err(last_error("KVM_SET_USER_MEMORY_REGION"));
                }
                let vcpu = libc::ioctl(vm.0, KVM_CREATE_VCPU, 0);
                if vcpu < 0 {
                    return Err(last_error("KVM_CREATE_VCPU"));
                }
                let vcpu = Fd(vcpu);
                let size = libc::ioctl(kvm.0, KVM_GET_VCPU_MMAP_SIZE, 0);
                if size <= 0 {
                    return Err(last_error("KVM_GET_VCPU_MMAP_SIZE"));
                }
                let run = libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    vcpu.0,
                    0,
                );
                if run == libc::MAP_FAILED {
                    return Err(last_error("mmap kvm_run"));
                }
                let ran = libc::ioctl(vcpu.0, KVM_RUN, 0);
                let exit_reason = *(run as *const u32).add(2);
                libc::munmap(run, size as usize);
                if ran < 0 {
                    return Err(last_error("KVM_RUN"));
                }
                if exit_reason != KVM_EXIT_HLT {
                    return Err(format!(
                        "KVM_RUN exited with reason {exit_reason}, expected hlt ({KVM_EXIT_HLT})"
                    ));
                }
                Ok(())
            })();
            libc::munmap(page, 4096);
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpu: bool, probe: Result<(), String>) -> HostKvm {
        HostKvm {
            cpu_has_virtualization: cpu,
            probe,
        }
    }

    #[test]
    fn auto_needs_every_proof() {
        let good = host(true, Ok(()));
        assert_eq!(
            decide(AcceleratorChoice::Auto, &good, true).0,
            Accelerator::Kvm
        );
        assert_eq!(
            decide(AcceleratorChoice::Auto, &good, false).0,
            Accelerator::Tcg
        );
        let no_flag = host(false, Ok(()));
        let (accel, reason) = decide(AcceleratorChoice::Auto, &no_flag, true);
        assert_eq!(accel, Accelerator::Tcg);
        assert!(reason.contains("vmx/svm"));
        let hangs = host(true, Err("the hlt guest did not exit".into()));
        let (accel, reason) = decide(AcceleratorChoice::Auto, &hangs, true);
        assert_eq!(accel, Accelerator::Tcg);
        assert!(reason.contains("did not exit"));
    }

    #[test]
    fn overrides_win() {
        let bad = host(false, Err("no".into()));
        assert_eq!(
            decide(AcceleratorChoice::Kvm, &bad, false).0,
            Accelerator::Kvm
        );
        let good = host(true, Ok(()));
        assert_eq!(
            decide(AcceleratorChoice::Tcg, &good, true).0,
            Accelerator::Tcg
        );
    }

    #[test]
    fn choice_parses() {
        assert_eq!("auto".parse(), Ok(AcceleratorChoice::Auto));
        assert_eq!("KVM".parse(), Ok(AcceleratorChoice::Kvm));
        assert_eq!("tcg".parse(), Ok(AcceleratorChoice::Tcg));
        assert_eq!("qemu".parse(), Ok(AcceleratorChoice::Tcg));
        assert!("hvf"
            .parse::<AcceleratorChoice>()
            .unwrap_err()
            .contains("hvf"));
    }

    #[test]
    fn cpuinfo_flags() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse\n";
        let amd = "flags\t\t: fpu svm lm\n";
        let none = "flags\t\t: fpu vme de pse sse hypervisor\nmodel name\t: vmx inside name\n";
        assert!(cpuinfo_has_virtualization(intel));
        assert!(cpuinfo_has_virtualization(amd));
        assert!(!cpuinfo_has_virtualization(none));
        assert!(!cpuinfo_has_virtualization(""));
    }

    #[test]
    fn capabilities_parsing() {
        let caps =
            "<guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>";
        assert!(capabilities_offer_kvm(caps));
        assert!(!capabilities_offer_kvm(
            "<guest><arch><domain type='qemu'/></arch></guest>"
        ));
    }

    #[test]
    fn this_host_is_probed_without_hanging() {
        // Whatever the answer, asking must return (the probe has its own timeout).
        let host = host_kvm();
        if !host.cpu_has_virtualization {
            assert!(host.probe.is_err());
        }
    }
}
