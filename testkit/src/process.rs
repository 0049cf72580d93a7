//! Running the tools tests lean on (python3, mtools, virsh, pip, qemu-img) with one
//! way of failing: the command and its stderr in the panic message.

use std::process::{Command, Output};

/// Runs `command` to its end and returns what it printed; panics naming `what`, the
/// command and its stderr when it cannot run or does not succeed.
pub fn run_ok(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {command:?} does not run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {command:?} ({})\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
