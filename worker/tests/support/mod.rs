//! The IO disk tests' job tree: the layout of a real job with long names, nested
//! directories, binary and empty files, the same bytes on every run.

use std::fs;
use std::path::Path;

use pyti_testkit::rng::Rng;

/// Long wheel names like the ones a dependency closure holds.
pub const WHEEL_NAMES: &[&str] = &[
    "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "charset_normalizer-3.3.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "typing_extensions-4.12.2-py3-none-any.whl",
    "pytest-8.3.3-py3-none-any.whl",
    "a.whl",
];

/// Writes the IO disk layout with long names, nested directories, binary and empty files.
pub fn write_job_tree(root: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    fs::create_dir_all(root.join("dist")).unwrap();
    fs::create_dir_all(root.join("wheels")).unwrap();
    fs::create_dir_all(root.join("tools/pytest/nested/deeper/still deeper")).unwrap();
    fs::write(
        root.join("job.json"),
        br#"{"project_name": "rarfile", "project_version": "4.2"}"#,
    )
    .unwrap();
    fs::write(root.join("dist/rarfile-4.2.tar.gz"), rng.bytes(300_001)).unwrap();
    for (index, name) in WHEEL_NAMES.iter().enumerate() {
        let length = 1000 + index * 77_777 + rng.below(5000) as usize;
        fs::write(root.join("wheels").join(name), rng.bytes(length)).unwrap();
    }
    fs::write(
        root.join("tools/pytest/nested/deeper/still deeper/Résumé ü ✓.txt"),
        "unicode\n",
    )
    .unwrap();
    fs::write(root.join("tools/pytest/empty"), b"").unwrap();
    fs::write(
        root.join("tools/pytest/exactly-one-cluster.bin"),
        rng.bytes(4096),
    )
    .unwrap();
}
