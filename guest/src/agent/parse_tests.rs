use super::*;

#[test]
fn modules_from_top_level_txt_win_when_present() {
    assert_eq!(
        top_level_modules(Some("rarfile\n\n_speedups\nbad name\n"), "x.py,,\n"),
        vec!["_speedups", "rarfile"]
    );
}

#[test]
fn modules_from_record() {
    let record = "\
pyti_clean/__init__.py,sha256=abc,10
pyti_clean/sub/mod.py,sha256=abc,10
pyti_clean-1.0.dist-info/METADATA,sha256=abc,10
pyti_clean-1.0.dist-info/RECORD,,
single.py,sha256=x,1
_native.cpython-311-x86_64-linux-gnu.so,sha256=x,1
nspkg/part/__init__.py,sha256=x,1
__pycache__/single.cpython-311.pyc,,
../../../bin/pyti-clean,sha256=x,1
pyti_clean-1.0.data/scripts/x,sha256=x,1
distutils-precedence.pth,sha256=x,1
\"quoted, name/__init__.py\",sha256=x,1
\"odd\"\"mod.py\",sha256=x,1
";
    assert_eq!(
        top_level_modules(None, record),
        vec!["_native", "nspkg", "pyti_clean", "single"]
    );
    assert_eq!(top_level_modules(Some("\n"), "a.py,,\n"), vec!["a"]);
    assert!(top_level_modules(None, "").is_empty());
}

#[test]
fn record_paths_handle_quotes() {
    assert_eq!(
        record_paths("a/b.py,sha256=x,1\r\n\"c,d.py\",,\n\"e\"\"f\",,\n\"unterminated\n"),
        vec!["a/b.py", "c,d.py", "e\"f"]
    );
}

#[test]
fn project_names() {
    assert_eq!(canonical_name("Pyti_Clean.Pkg"), "pyti-clean-pkg");
    assert_eq!(canonical_name("a--b"), "a-b");
    assert_eq!(
        dist_info_project("pyti_clean-1.0.dist-info").as_deref(),
        Some("pyti-clean")
    );
    assert_eq!(dist_info_project("pyti_clean-1.0"), None);
    assert_eq!(
        distribution_file_project("pyti_clean-1.0-py3-none-any.whl").as_deref(),
        Some("pyti-clean")
    );
    assert_eq!(
        distribution_file_project("pyti-clean-1.0.tar.gz").as_deref(),
        Some("pyti-clean")
    );
    assert_eq!(distribution_file_project("x.txt"), None);
}

#[test]
fn junit_counts_from_pytest_xml() {
    let xml = r#"<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="0.048" hostname="vm"><testcase classname="a" name="t" time="0.0" /></testsuite></testsuites>"#;
    let metrics = junit_counts(xml).unwrap();
    assert_eq!(
        (
            metrics.passed,
            metrics.failed,
            metrics.errors,
            metrics.skipped
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(metrics.source, "junit");
    assert_eq!(junit_counts("<testsuites></testsuites>"), None);
    assert_eq!(junit_counts("").map(|m| m.passed), None);
}

#[test]
fn summary_counts_from_pytest_output() {
    let output =
        "....\nFAILED test_a.py::test_bad - assert 0\n1 failed, 1 passed, 1 skipped in 0.04s\n";
    let metrics = summary_counts(output).unwrap();
    assert_eq!(
        (
            metrics.passed,
            metrics.failed,
            metrics.errors,
            metrics.skipped
        ),
        (1, 1, 0, 1)
    );
    let verbose = "===== 3 passed, 2 xfailed, 1 xpassed, 2 errors in 1.20s =====\n";
    let metrics = summary_counts(verbose).unwrap();
    assert_eq!(
        (
            metrics.passed,
            metrics.failed,
            metrics.errors,
            metrics.skipped
        ),
        (4, 0, 2, 2)
    );
    assert_eq!(summary_counts("no summary here\n"), None);
}

#[test]
fn pycodestyle_output_counted_by_code() {
    let output = "\
qsrc/bad.py:2:2: E225 missing whitespace around operator
qsrc/bad.py:3:1: E302 expected 2 blank lines, found 0
qsrc/bad.py:3:7: E201 whitespace after '('
qsrc/bad.py:6:13: W291 trailing whitespace
qsrc/c:d.py:7:1: E302 expected 2 blank lines, found 1
not a finding
";
    let counts = pycodestyle_counts(output);
    assert_eq!(counts.total, 5);
    assert_eq!(
        counts.by_code,
        [("E201", 1), ("E225", 1), ("E302", 2), ("W291", 1)]
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect()
    );
}

#[test]
fn pyflakes_output_counted_by_code() {
    let output = "\
qsrc/bad.py:1:1: 'os' imported but unused
qsrc/bad.py:4:12: undefined name 'undefined_thing'
qsrc/bad.py:5:7: f-string is missing placeholders
qsrc/bad.py:9:5: local variable 'x' is assigned to but never used
qsrc/syn.py:1:12: invalid syntax
def broken(:
           ^
qsrc/other.py:3: something new
";
    let counts = pyflakes_counts(output);
    assert_eq!(counts.total, 6);
    assert_eq!(
        counts.by_code,
        [
            ("E999", 1),
            ("F", 1),
            ("F401", 1),
            ("F541", 1),
            ("F821", 1),
            ("F841", 1)
        ]
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .collect()
    );
}

#[test]
fn scores() {
    assert_eq!(quality_score(0, 0, 100), 10.0);
    assert_eq!(quality_score(5, 0, 100), 9.5);
    assert_eq!(quality_score(5, 1, 100), 9.0);
    assert_eq!(quality_score(500, 0, 100), 0.0);
    assert_eq!(quality_score(1, 0, 3), 6.67);
    assert_eq!(quality_score(3, 3, 0), 10.0);
}
