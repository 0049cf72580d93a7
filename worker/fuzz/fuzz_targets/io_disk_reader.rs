//! Fuzzes `bodies::io_disk_reader` (see bodies.rs): the reader of guest-written IO disks must
//! return within its caps, never panic and never hang. The FAT library's own panics
//! are caught by the reader by design, so only they are let through.

#![no_main]

#[allow(dead_code, reason = "each target uses one body of the shared file")]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(
    init: {
        let abort_on_panic = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|location| location.file().contains("fatfs")) {
                abort_on_panic(info);
            }
        }));
    },
    |data: &[u8]| bodies::io_disk_reader(data)
);
