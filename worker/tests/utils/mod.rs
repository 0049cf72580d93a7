//! Helpers shared by the IO disk tests: deterministic trees and tree comparison.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Small deterministic generator (xorshift64*), so every run sees the same bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    pub fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }
}

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

/// Every file (relative path → bytes) and directory (relative path → None) under `root`.
pub fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut found = BTreeMap::new();
    collect(root, root, &mut found);
    found
}

fn collect(root: &Path, dir: &Path, found: &mut BTreeMap<String, Option<Vec<u8>>>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let metadata = fs::symlink_metadata(&path).unwrap();
        if metadata.is_dir() {
            found.insert(relative, None);
            collect(root, &path, found);
        } else {
            found.insert(relative, Some(fs::read(&path).unwrap()));
        }
    }
}

/// Asserts that two trees hold the same names and bytes, naming the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let expected = snapshot(expected);
    let actual = snapshot(actual);
    let expected_names: Vec<_> = expected.keys().collect();
    let actual_names: Vec<_> = actual.keys().collect();
    assert_eq!(
        expected_names, actual_names,
        "the trees hold different names"
    );
    for (name, content) in &expected {
        assert!(content == &actual[name], "{name} differs");
    }
}
