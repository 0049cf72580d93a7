//! Directory trees compared by content: what went onto a disk image must come back
//! byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

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
