//! IO disk throughput: building a disk from a staging directory and reading it back,
//! against a plain recursive copy of the same files between two host directories measured
//! in the same run (the baseline: what the host file system does without FAT in between).
//!
//! Run: `cargo bench -p pyti-worker --bench diskhandler` (optional argument: MiB of
//! wheel-like files, default 50).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use pyti_worker::diskhandler::{
    build_io_disk, convert_image, read_results, ImageFormat, ReadLimits,
};

const MIB: u64 = 1024 * 1024;
const ROUNDS: usize = 3;

/// Incompressible bytes (xorshift), like the compressed content of wheels.
fn noise(length: usize, seed: &mut u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        bytes.extend_from_slice(&seed.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// A staging tree of about `total` bytes: wheels of 20 KiB to 4 MiB with long names, an sdist,
/// a job file.
fn write_staging(root: &Path, total: u64) -> u64 {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    fs::create_dir_all(root.join("wheels")).unwrap();
    fs::create_dir_all(root.join("dist")).unwrap();
    fs::write(root.join("job.json"), br#"{"project_name": "rarfile"}"#).unwrap();
    fs::write(
        root.join("dist/rarfile-4.2.tar.gz"),
        noise(150_000, &mut seed),
    )
    .unwrap();
    let mut written = 150_000 + 27;
    let mut index = 0;
    while written < total {
        let size = (20 * 1024 + (seed % (4 * MIB)) as usize).min((total - written) as usize);
        let name = format!("package_number_{index}-1.{index}.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl");
        fs::write(root.join("wheels").join(name), noise(size, &mut seed)).unwrap();
        written += size as u64;
        index += 1;
    }
    written
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Best of [`ROUNDS`] runs of `work`, each after `prepare` (untimed).
fn best(mut prepare: impl FnMut(), mut work: impl FnMut()) -> Duration {
    (0..ROUNDS)
        .map(|_| {
            prepare();
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn rate(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / MIB as f64 / time.as_secs_f64()
}

fn main() {
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|argument| argument.parse().ok())
        .unwrap_or(50);
    let work = tempfile::tempdir().unwrap();
    let staging = work.path().join("staging");
    let bytes = write_staging(&staging, mib * MIB);
    let copy = work.path().join("copy");
    let image = work.path().join("io.img");
    let back = work.path().join("back");
    let remove = |path: &Path| {
        let _ = fs::remove_dir_all(path);
        let _ = fs::remove_file(path);
    };

    let baseline = best(|| remove(&copy), || copy_tree(&staging, &copy));
    let build = best(
        || remove(&image),
        || {
            build_io_disk(&staging, &image, None).unwrap();
        },
    );
    let read = best(
        || remove(&back),
        || {
            read_results(&image, "/", &back, &ReadLimits::default()).unwrap();
        },
    );
    let vdi = work.path().join("io.vdi");
    let convert = best(
        || remove(&vdi),
        || convert_image(&image, ImageFormat::Raw, &vdi, ImageFormat::Vdi).unwrap(),
    );
    let image_mib = fs::metadata(&image).unwrap().len() as f64 / MIB as f64;

    println!(
        "IO disk throughput, {:.1} MiB of wheel-like files, best of {ROUNDS}:",
        bytes as f64 / MIB as f64
    );
    println!(
        "  baseline recursive copy   {:8.1} MiB/s  {:7.3} s  1.00x",
        rate(bytes, baseline),
        baseline.as_secs_f64()
    );
    for (label, time) in [
        ("build IO disk (raw FAT)", build),
        ("read IO disk back", read),
    ] {
        println!(
            "  {label:<25} {:8.1} MiB/s  {:7.3} s  {:.2}x of baseline",
            rate(bytes, time),
            time.as_secs_f64(),
            rate(bytes, time) / rate(bytes, baseline)
        );
    }
    println!(
        "  qemu-img raw -> vdi       {:8.1} MiB/s  {:7.3} s  (image {image_mib:.0} MiB incl. 256 MiB free)",
        rate(bytes, convert),
        convert.as_secs_f64()
    );
}
