//! The guest's CPU as packages see it: its model, its flags and the x86-64
//! microarchitecture level they add up to.
//!
//! Wheels are built for a baseline instruction set (numpy 2.x needs x86-64-v2 and uses
//! more when present). Under emulation QEMU offers only what its CPU model names, and a
//! wheel that meets an instruction the guest lacks dies with SIGILL, which once made
//! every numpy user look broken. The worker now asks for the most capable model the
//! accelerator offers; this module records what the guest really got, so a results
//! dict says which CPU it ran on and a SIGILL is reported as the platform's fault,
//! naming the features the guest lacks, never as the package's.

use serde::{Deserialize, Serialize};

/// The flags (as `/proc/cpuinfo` names them) each x86-64 level adds to the one below,
/// from the psABI: v1 is the AMD64 baseline.
pub const LEVELS: [(u8, &[&str]); 4] = [
    (
        1,
        &[
            "cmov", "cx8", "fpu", "fxsr", "mmx", "syscall", "sse", "sse2",
        ],
    ),
    (
        2,
        &[
            "cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
        ],
    ),
    (
        3,
        &[
            "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
        ],
    ),
    (
        4,
        &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
    ),
];

/// What the guest's CPU offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuInfo {
    /// `model name` of the first processor.
    pub model: String,
    /// The highest x86-64 level whose flags are all present (0: not even the baseline).
    pub x86_64_level: u8,
    /// Flags the next level needs and this CPU lacks (empty at v4).
    pub missing_for_next_level: Vec<String>,
    /// Every flag of the first processor, sorted.
    pub flags: Vec<String>,
}

/// Reads `/proc/cpuinfo` text (pure).
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let first = text.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let mut flags: Vec<String> = field("flags")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    flags.sort();
    flags.dedup();
    let (x86_64_level, missing_for_next_level) = level_of(&flags);
    CpuInfo {
        model: field("model name").unwrap_or_else(|| "unknown".to_owned()),
        x86_64_level,
        missing_for_next_level,
        flags,
    }
}

/// The highest level all of whose flags (and those of the levels below) are in
/// `flags`, and what the next level lacks.
pub fn level_of(flags: &[String]) -> (u8, Vec<String>) {
    let has = |flag: &str| flags.iter().any(|f| f == flag);
    let mut level = 0;
    for (number, needed) in LEVELS {
        let missing: Vec<String> = needed
            .iter()
            .filter(|f| !has(f))
            .map(|f| (*f).to_owned())
            .collect();
        if !missing.is_empty() {
            return (level, missing);
        }
        level = number;
    }
    (level, Vec::new())
}

/// This machine's CPU, or `None` where `/proc/cpuinfo` cannot be read.
pub fn current() -> Option<CpuInfo> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .map(|text| parse_cpuinfo(&text))
}

impl CpuInfo {
    /// One line for a task message: why an illegal instruction is the platform's fault.
    pub fn illegal_instruction(&self, what: &str) -> String {
        let lacking = if self.missing_for_next_level.is_empty() {
            String::new()
        } else {
            format!(
                "; it lacks {} of x86-64-v{}",
                self.missing_for_next_level.join(", "),
                self.x86_64_level + 1
            )
        };
        format!(
            "{what} died of SIGILL (an instruction this guest CPU does not have): the farm's \
             platform fault, not the package's. Guest CPU: {} (x86-64-v{}){lacking}",
            self.model, self.x86_64_level
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU64: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 syscall nx lm rep_good nopl cpuid extd_apicid tsc_known_freq pni cx16 x2apic hypervisor lahf_lm cmp_legacy 3dnowprefetch vmmcall\n\nprocessor\t: 1\nflags\t\t: fpu\n";

    #[test]
    fn qemu64_is_below_v2_and_says_what_it_lacks() {
        let cpu = parse_cpuinfo(QEMU64);
        assert_eq!(cpu.model, "QEMU Virtual CPU version 2.5+");
        assert_eq!(cpu.x86_64_level, 1);
        assert_eq!(
            cpu.missing_for_next_level,
            ["popcnt", "sse4_1", "sse4_2", "ssse3"]
        );
        assert!(cpu.flags.contains(&"pni".to_owned()));
        let message = cpu.illegal_instruction("import numpy");
        assert!(
            message.contains("popcnt, sse4_1, sse4_2, ssse3 of x86-64-v2"),
            "{message}"
        );
    }

    #[test]
    fn levels_need_every_lower_level() {
        let flags =
            |list: &str| -> Vec<String> { list.split_whitespace().map(str::to_owned).collect() };
        let all: Vec<&str> = LEVELS.iter().flat_map(|(_, f)| f.iter().copied()).collect();
        assert_eq!(level_of(&flags(&all.join(" "))), (4, vec![]));
        // v3 flags without v2's popcnt stay at v1.
        let without_popcnt: Vec<&str> = all.iter().copied().filter(|f| *f != "popcnt").collect();
        assert_eq!(level_of(&flags(&without_popcnt.join(" "))).0, 1);
        assert_eq!(level_of(&[]).0, 0);
        assert_eq!(parse_cpuinfo("").model, "unknown");
    }
}
