//! pypidownload against the real PyPI, for CPython 3.11 on Linux x86_64 (the default guest).
//!
//! These tests need HTTPS access to pypi.org and files.pythonhosted.org; the requests test
//! also runs the host's pip (python3 -m pip) to compare resolutions.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use pyti_testkit::process::run_ok;
use pyti_worker::pypidownload::{
    resolve_and_download, Cache, CheckStatus, Request, ResolvedSet, Role, TargetEnv,
};
use sha2::{Digest, Sha256};

fn names_and_versions(set: &ResolvedSet) -> BTreeSet<(String, String)> {
    std::iter::once(&set.distribution)
        .chain(set.dependencies.iter())
        .map(|file| (file.name.clone(), file.version.clone()))
        .collect()
}

fn assert_placed_and_verified(set: &ResolvedSet, dest: &Path) {
    for file in set.files() {
        let path = file.path.as_ref().expect("a destination was given");
        assert!(
            path.starts_with(dest.join(file.role.directory())),
            "{path:?}"
        );
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            file.sha256,
            "{}",
            file.filename
        );
        assert_eq!(bytes.len() as u64, file.size);
    }
}

/// pip's view of `requests==2.32.3` for the same target, as (name, version) pairs.
fn pip_resolution(requirement: &str) -> BTreeSet<(String, String)> {
    let target = tempfile::tempdir().unwrap();
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--report",
        "-",
        "--quiet",
    ])
    .args([
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_36_x86_64",
        "--only-binary=:all:",
    ])
    .arg("--target")
    .arg(target.path())
    .arg(requirement)
    .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    .env_remove("PIP_FIND_LINKS");
    let output = run_ok(&mut pip, "pip's resolution");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("pip prints a JSON report");
    report["install"]
        .as_array()
        .expect("the report lists installs")
        .iter()
        .map(|item| {
            let name = item["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .replace(['_', '.'], "-");
            (
                name,
                item["metadata"]["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_closure_matches_pip_and_replays_from_the_cache_offline() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let target = TargetEnv::default();
    let request = Request::new("requests==2.32.3");

    let first = resolve_and_download(&request, &target, &cache, Some(dest.path()))
        .await
        .unwrap();
    assert!(!first.offline);
    assert_eq!(
        first.distribution.filename,
        "requests-2.32.3-py3-none-any.whl"
    );
    assert_eq!(first.distribution.role, Role::Distribution);
    assert_eq!(
        first.sources.as_ref().unwrap().filename,
        "requests-2.32.3.tar.gz"
    );
    assert!(first.files().all(|file| !file.from_cache));
    let ours = names_and_versions(&first);
    let names: BTreeSet<&str> = ours.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "certifi",
            "charset-normalizer",
            "idna",
            "requests",
            "urllib3"
        ])
    );
    assert_eq!(ours, pip_resolution("requests==2.32.3"));
    // charset-normalizer ships compiled wheels: the cp311 manylinux one must be chosen.
    let charset = first
        .dependencies
        .iter()
        .find(|f| f.name == "charset-normalizer")
        .unwrap();
    assert!(
        charset.filename.contains("cp311-cp311-manylinux"),
        "{}",
        charset.filename
    );
    let tools: BTreeSet<&str> = first.tools.iter().map(|f| f.name.as_str()).collect();
    for tool in [
        "pytest",
        "pycodestyle",
        "pyflakes",
        "pluggy",
        "iniconfig",
        "setuptools",
    ] {
        assert!(tools.contains(tool), "{tool} missing from tools {tools:?}");
    }
    assert_placed_and_verified(&first, dest.path());
    assert_eq!(first.metadata.name, "requests");
    assert_eq!(first.metadata.python_requires.as_deref(), Some(">=3.8"));
    assert_eq!(first.metadata.yanked_check.status, CheckStatus::Pass);

    // The same request with the index unreachable: answered from the cache alone.
    let offline_dest = tempfile::tempdir().unwrap();
    let offline_request = request.clone().with_index("http://127.0.0.1:9/simple");
    let second = resolve_and_download(&offline_request, &target, &cache, Some(offline_dest.path()))
        .await
        .unwrap();
    assert!(second.offline);
    assert!(second.files().all(|file| file.from_cache));
    assert_eq!(names_and_versions(&second), ours);
    let files = |set: &ResolvedSet| {
        set.files()
            .map(|f| (f.role, f.sha256.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(files(&second), files(&first));
    assert_eq!(second.metadata, first.metadata);
    assert_placed_and_verified(&second, offline_dest.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rarfile_is_one_wheel_and_unpinned_requests_fall_back_to_cached_pages() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let target = TargetEnv::default();
    let mut request = Request::new("rarfile==4.2");
    request.tools = vec!["pycodestyle".into()];
    let set = resolve_and_download(&request, &target, &cache, None)
        .await
        .unwrap();
    assert_eq!(set.distribution.filename, "rarfile-4.2-py3-none-any.whl");
    assert!(set.dependencies.is_empty());
    assert_eq!(set.sources.as_ref().unwrap().filename, "rarfile-4.2.tar.gz");
    assert!(set.requirements_unknown.is_empty());
    assert!(set.tools.iter().any(|f| f.name == "pycodestyle"));

    // Unpinned, with the index down: the cached page stands in and says so.
    let mut unpinned = Request::new("rarfile").with_index("http://127.0.0.1:9/simple");
    unpinned.tools = request.tools.clone();
    let stale = resolve_and_download(&unpinned, &target, &cache, None)
        .await
        .unwrap();
    assert!(
        stale.stale_pages.contains(&"rarfile".to_string()),
        "{:?}",
        stale.stale_pages
    );
    // The stale page names the newest rarfile, whose file host may still be reachable.
    assert_eq!(stale.distribution.name, "rarfile");
    assert!(
        stale
            .distribution
            .version
            .parse::<pep440_rs::Version>()
            .unwrap()
            >= "4.2".parse().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docopt_is_an_old_sdist_flagged_for_a_guest_pass() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let mut request = Request::new("docopt==0.6.2");
    request.tools = vec!["pytest".into()];
    let set = resolve_and_download(&request, &TargetEnv::default(), &cache, Some(dest.path()))
        .await
        .unwrap();
    assert_eq!(set.distribution.filename, "docopt-0.6.2.tar.gz");
    assert!(
        set.sources.is_none(),
        "the distribution already is the sdist"
    );
    assert!(set.dependencies.is_empty());
    assert_eq!(set.requirements_unknown, vec!["docopt==0.6.2"]);
    let tools: BTreeSet<&str> = set.tools.iter().map(|f| f.name.as_str()).collect();
    assert!(
        tools.contains("setuptools") && tools.contains("wheel") && tools.contains("pytest"),
        "{tools:?}"
    );
    assert!(dest.path().join("dist/docopt-0.6.2.tar.gz").is_file());
    assert_eq!(set.metadata.wheel_tags_check.status, CheckStatus::Warn);
    assert_placed_and_verified(&set, dest.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numpy_gets_a_cp311_manylinux_wheel() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let mut request = Request::new("numpy");
    request.tools = vec![];
    let set = resolve_and_download(&request, &TargetEnv::default(), &cache, None)
        .await
        .unwrap();
    let file = &set.distribution.filename;
    assert!(
        file.starts_with("numpy-")
            && file.contains("-cp311-cp311-")
            && file.contains("manylinux")
            && file.ends_with("x86_64.whl"),
        "{file}"
    );
    assert!(set.dependencies.is_empty());
    assert!(set
        .metadata
        .wheel_tags
        .iter()
        .any(|tag| tag.starts_with("cp311-cp311-manylinux")));
    // Its sdist builds with meson-python: the build backend lands in tools/.
    assert!(
        set.tools.iter().any(|f| f.name == "meson-python"),
        "{:?}",
        set.tools.iter().map(|f| &f.name).collect::<Vec<_>>()
    );
}
