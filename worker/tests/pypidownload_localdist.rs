//! A local wheel or sdist as the distribution under test: its dependencies and tools come
//! from the real PyPI (needs HTTPS access to pypi.org and files.pythonhosted.org), the
//! error cases and the cache behaviour from a local index directory built here.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use pyti_worker::pypidownload::{
    local_distribution_metadata, resolve_and_download, Cache, CheckStatus, Error, LocalKind,
    Request, ResolvedSet, Role, TargetEnv,
};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a wheel `<project>-<version>-<tag>.whl` whose METADATA has `lines` after the
/// name and version.
fn write_wheel(dir: &Path, project: &str, version: &str, tag: &str, lines: &[&str]) -> PathBuf {
    let stem = project.replace('-', "_");
    let path = dir.join(format!("{stem}-{version}-{tag}.whl"));
    let metadata = format!(
        "Metadata-Version: 2.1\nName: {project}\nVersion: {version}\nLicense: MIT\n{}\nA local demo.\n",
        lines.iter().map(|line| format!("{line}\n")).collect::<String>()
    );
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file(format!("{stem}/__init__.py"), options)
        .unwrap();
    zip.write_all(b"VALUE = 1\n").unwrap();
    zip.start_file(format!("{stem}-{version}.dist-info/METADATA"), options)
        .unwrap();
    zip.write_all(metadata.as_bytes()).unwrap();
    zip.start_file(format!("{stem}-{version}.dist-info/WHEEL"), options)
        .unwrap();
    zip.write_all(format!("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n").as_bytes())
        .unwrap();
    zip.finish().unwrap();
    path
}

/// Writes an sdist `<file_stem>.tar.gz` holding `<project>-<version>/PKG-INFO` (metadata
/// 2.2 with `lines`) and, when given, `pyproject.toml`.
fn write_sdist(
    dir: &Path,
    project: &str,
    version: &str,
    lines: &[&str],
    pyproject: Option<&str>,
) -> PathBuf {
    let top = format!("{}-{version}", project.replace('-', "_"));
    let path = dir.join(format!("{top}.tar.gz"));
    let pkg_info = format!(
        "Metadata-Version: 2.2\nName: {project}\nVersion: {version}\nLicense: MIT\n{}",
        lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>()
    );
    let mut entries = vec![
        (format!("{top}/PKG-INFO"), pkg_info),
        (format!("{top}/demo.py"), "VALUE = 1\n".to_string()),
    ];
    if let Some(pyproject) = pyproject {
        entries.push((format!("{top}/pyproject.toml"), pyproject.to_string()));
    }
    let encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut builder = tar::Builder::new(encoder);
    for (name, text) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    path
}

fn assert_placed_and_verified(set: &ResolvedSet, dest: &Path) {
    for file in set.files() {
        let path = file.path.as_ref().expect("a destination was given");
        assert_eq!(path, &dest.join(file.role.directory()).join(&file.filename));
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(sha256(&bytes), file.sha256, "{}", file.filename);
        assert_eq!(bytes.len() as u64, file.size);
    }
}

fn assert_is_the_local_file(set: &ResolvedSet, local: &Path, dest: &Path) {
    let file = &set.distribution;
    let bytes = std::fs::read(local).unwrap();
    assert_eq!(file.role, Role::Distribution);
    assert_eq!(file.sha256, sha256(&bytes));
    assert!(!file.from_cache);
    assert_eq!(
        file.filename,
        local.file_name().unwrap().to_str().unwrap().to_string()
    );
    assert_eq!(
        std::fs::read(dest.join("dist").join(&file.filename)).unwrap(),
        bytes
    );
    assert!(set.sources.is_none(), "the index's sdist was fetched");
}

fn names(files: &[pyti_worker::pypidownload::DownloadedFile]) -> BTreeSet<String> {
    files.iter().map(|file| file.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_wheel_gets_its_dependencies_and_tools_from_pypi_then_replays_offline() {
    let work = tempfile::tempdir().unwrap();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let wheel = write_wheel(
        work.path(),
        "pyti-localdemo",
        "1.0",
        "py3-none-any",
        &[
            "Requires-Python: >=3.8",
            "Requires-Dist: six",
            "Requires-Dist: docopt==0.6.2",
            "Requires-Dist: colorama; sys_platform == \"win32\"",
            "Requires-Dist: requests; extra == \"http\"",
            "Provides-Extra: http",
        ],
    );
    let dest = work.path().join("dest");
    let request = Request::local(&wheel);
    let set = resolve_and_download(&request, &TargetEnv::default(), &cache, Some(&dest))
        .await
        .unwrap();
    assert_is_the_local_file(&set, &wheel, &dest);
    assert_eq!(set.distribution.name, "pyti-localdemo");
    assert_eq!(set.distribution.version, "1.0");
    let dependencies: BTreeSet<(String, String)> = set
        .dependencies
        .iter()
        .map(|file| (file.name.clone(), file.version.clone()))
        .collect();
    assert_eq!(
        names(&set.dependencies),
        ["docopt", "six"].map(String::from).into()
    );
    assert!(dependencies.contains(&("docopt".into(), "0.6.2".into())));
    assert!(set
        .dependencies
        .iter()
        .all(|file| file.role == Role::Dependency));
    // docopt 0.6.2 is an old sdist: its requirements need a guest pass and its build
    // backend (the setuptools default) joins the recipe's tools.
    assert_eq!(set.requirements_unknown, vec!["docopt==0.6.2"]);
    let tools = names(&set.tools);
    for tool in ["pytest", "pycodestyle", "pyflakes", "setuptools", "wheel"] {
        assert!(tools.contains(tool), "{tool} missing from {tools:?}");
    }
    assert_placed_and_verified(&set, &dest);
    assert!(!set.offline);

    assert_eq!(set.metadata.name, "pyti-localdemo");
    assert_eq!(set.metadata.chosen_file, set.distribution.filename);
    assert_eq!(set.metadata.python_requires_check.status, CheckStatus::Pass);
    assert_eq!(set.metadata.yanked_check.status, CheckStatus::Pass);
    assert!(set.metadata.yanked_check.message.contains("local file"));
    assert_eq!(set.metadata.wheel_tags, vec!["py3-none-any"]);

    // Same file, same cache: replayed without the network, whatever the index now is.
    let dest2 = work.path().join("dest2");
    let replay = resolve_and_download(
        &request.clone().with_index("http://127.0.0.1:9/simple"),
        &TargetEnv::default(),
        &cache,
        Some(&dest2),
    )
    .await
    .unwrap();
    assert!(replay.offline);
    assert_is_the_local_file(&replay, &wheel, &dest2);
    assert_eq!(names(&replay.dependencies), names(&set.dependencies));
    assert_eq!(names(&replay.tools), names(&set.tools));
    assert_placed_and_verified(&replay, &dest2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_sdist_brings_the_build_backend_it_asks_for() {
    let work = tempfile::tempdir().unwrap();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let sdist = write_sdist(
        work.path(),
        "pyti-localdemo",
        "1.0",
        &["Requires-Dist: six>=1.16", "Requires-Python: >=3.8"],
        Some("[build-system]\nrequires = [\"flit_core>=3.2,<4\"]\nbuild-backend = \"flit_core.buildapi\"\n"),
    );
    let local = local_distribution_metadata(&sdist).unwrap();
    assert_eq!(local.kind, LocalKind::Sdist);
    assert_eq!(local.build_requires, vec!["flit_core>=3.2,<4"]);

    let dest = work.path().join("dest");
    let mut request = Request::local(&sdist);
    request.tools = vec!["pytest".into()];
    let set = resolve_and_download(&request, &TargetEnv::default(), &cache, Some(&dest))
        .await
        .unwrap();
    assert_is_the_local_file(&set, &sdist, &dest);
    assert_eq!(names(&set.dependencies), ["six"].map(String::from).into());
    let flit = set
        .tools
        .iter()
        .find(|file| file.name == "flit-core")
        .expect("flit_core is among the tools");
    assert!(flit.version.starts_with('3'), "{}", flit.version);
    assert!(names(&set.tools).contains("pytest"));
    assert!(!names(&set.tools).contains("setuptools"));
    assert!(set.requirements_unknown.is_empty());
    assert_eq!(
        set.metadata.wheel_tags_check.status,
        CheckStatus::Warn,
        "an sdist alone has no wheel"
    );
    assert_placed_and_verified(&set, &dest);
}

/// A PEP 691 index directory with wheels of the given projects (name, version, lines).
fn local_index(dir: &Path, wheels: &[(&str, &str, &[&str])]) -> String {
    let mut pages: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for (project, version, lines) in wheels {
        let project_dir = dir.join(project);
        std::fs::create_dir_all(&project_dir).unwrap();
        let path = write_wheel(&project_dir, project, version, "py3-none-any", lines);
        let bytes = std::fs::read(&path).unwrap();
        let filename = path.file_name().unwrap().to_str().unwrap().to_string();
        pages.entry(project.to_string()).or_default().push(
            serde_json::json!({"filename": filename, "url": filename, "hashes": {"sha256": sha256(&bytes)}}),
        );
    }
    for (project, files) in pages {
        std::fs::write(
            dir.join(&project).join("index.json"),
            serde_json::json!({"meta": {"api-version": "1.1"}, "name": project, "files": files})
                .to_string(),
        )
        .unwrap();
    }
    dir.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_local_index_the_local_file_wins_and_errors_name_it() {
    let work = tempfile::tempdir().unwrap();
    let index_dir = work.path().join("index");
    let index = local_index(
        &index_dir,
        &[
            ("beta", "1.0", &[]),
            ("gamma", "1.0", &[]),
            ("toolx", "1.0", &[]),
            ("pyti-localdemo", "1.0", &["Requires-Dist: gamma"]),
            ("pyti-localdemo", "2.0", &["Requires-Dist: gamma"]),
            ("needsdemo", "1.0", &["Requires-Dist: pyti-localdemo>=2"]),
        ],
    );
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let target = TargetEnv::default();
    let mine = work.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    let request = |path: &Path| {
        let mut request = Request::local(path).with_index(&index);
        request.tools = vec!["toolx".into()];
        request
    };

    // The index has its own pyti-localdemo 1.0 and 2.0: neither is touched.
    let wheel = write_wheel(
        &mine,
        "pyti-localdemo",
        "1.0",
        "py3-none-any",
        &["Requires-Dist: beta"],
    );
    let dest = work.path().join("dest");
    let set = resolve_and_download(&request(&wheel), &target, &cache, Some(&dest))
        .await
        .unwrap();
    assert_is_the_local_file(&set, &wheel, &dest);
    assert_eq!(names(&set.dependencies), ["beta"].map(String::from).into());
    assert_eq!(names(&set.tools), ["toolx"].map(String::from).into());
    for index_copy in std::fs::read_dir(index_dir.join("pyti-localdemo")).unwrap() {
        let path = index_copy.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "whl") {
            assert!(cache
                .blob(&sha256(&std::fs::read(&path).unwrap()))
                .is_none());
        }
    }
    let again = resolve_and_download(&request(&wheel), &target, &cache, None)
        .await
        .unwrap();
    assert!(again.offline);

    // The same path rebuilt with other requirements: its new sha256 means new metadata,
    // never the previous resolution.
    std::fs::remove_file(&wheel).unwrap();
    write_wheel(
        &mine,
        "pyti-localdemo",
        "1.0",
        "py3-none-any",
        &["Requires-Dist: gamma"],
    );
    let rebuilt = resolve_and_download(&request(&wheel), &target, &cache, None)
        .await
        .unwrap();
    assert_eq!(
        names(&rebuilt.dependencies),
        ["gamma"].map(String::from).into()
    );
    assert_ne!(rebuilt.distribution.sha256, set.distribution.sha256);

    // A dependency that does not exist names itself and the local file requiring it.
    let missing = write_wheel(
        &mine,
        "pyti-localdemo",
        "1.1",
        "py3-none-any",
        &["Requires-Dist: beta", "Requires-Dist: nosuchdep>=1"],
    );
    let error = resolve_and_download(&request(&missing), &target, &cache, None)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ProjectNotFound { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("\"nosuchdep\""), "{text}");
    assert!(
        text.contains(
            "required by pyti-localdemo 1.1 (local file pyti_localdemo-1.1-py3-none-any.whl)"
        ),
        "{text}"
    );

    // A dependency that wants another version of the project under test.
    let conflict = write_wheel(
        &mine,
        "pyti-localdemo",
        "1.2",
        "py3-none-any",
        &["Requires-Dist: needsdemo"],
    );
    let error = resolve_and_download(&request(&conflict), &target, &cache, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::ResolutionImpossible { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains("local file pyti_localdemo-1.2"), "{text}");
    assert!(text.contains("needsdemo"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_local_files_are_refused_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cache = Cache::open(dir.join("cache")).unwrap();
    let empty_index = dir.join("index");
    std::fs::create_dir_all(&empty_index).unwrap();
    let refuse = |path: PathBuf, expected: &'static str| {
        let cache = cache.clone();
        let index = empty_index.display().to_string();
        async move {
            let request = Request::local(&path).with_index(index);
            let error = resolve_and_download(&request, &TargetEnv::default(), &cache, None)
                .await
                .expect_err(expected);
            assert!(
                matches!(error, Error::LocalDistribution { .. }),
                "{expected}: {error}"
            );
            let text = error.to_string();
            let filename = path.file_name().unwrap().to_str().unwrap();
            assert!(text.contains(filename), "{text}");
            assert!(text.contains(expected), "{text}");
        }
    };

    refuse(
        write_wheel(dir, "pyti-localdemo", "1.0", "cp39-cp39-win_amd64", &[]),
        "do not fit the guest",
    )
    .await;
    refuse(
        write_wheel(
            dir,
            "pyti-newpython",
            "1.0",
            "py3-none-any",
            &["Requires-Python: >=3.12"],
        ),
        "excludes the guest's Python 3.11.2",
    )
    .await;
    let text_file = dir.join("fake-1.0-py3-none-any.whl");
    std::fs::write(&text_file, "not a zip").unwrap();
    refuse(text_file, "not a readable wheel").await;
    let no_metadata = dir.join("bare-1.0-py3-none-any.whl");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&no_metadata).unwrap());
        zip.start_file("bare/__init__.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.finish().unwrap();
    }
    refuse(no_metadata, "no .dist-info/METADATA").await;
    let renamed = dir.join("other-1.0-py3-none-any.whl");
    std::fs::copy(
        write_wheel(dir, "pyti-localdemo", "1.0", "py3-none-any", &[]),
        &renamed,
    )
    .unwrap();
    refuse(renamed, "the file name says project \"other\"").await;
    refuse(
        write_wheel(dir, "pyti-badversion", "one", "py3-none-any", &[]),
        "invalid version \"one\"",
    )
    .await;
    refuse(
        write_wheel(
            dir,
            "pyti-badreq",
            "1.0",
            "py3-none-any",
            &["Requires-Dist: six >="],
        ),
        "Requires-Dist \"six >=\" does not parse",
    )
    .await;
    let gz = dir.join("nopkginfo-1.0.tar.gz");
    {
        let encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        let mut builder = tar::Builder::new(encoder);
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "nopkginfo-1.0/setup.py", &b"#\n"[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap();
    }
    refuse(gz, "no top-level PKG-INFO").await;
    let egg = dir.join("old-1.0-py3.11.egg");
    std::fs::write(&egg, "x").unwrap();
    refuse(egg, "unsupported file type").await;
    refuse(dir.join("absent-1.0.tar.gz"), "no such file").await;
}
