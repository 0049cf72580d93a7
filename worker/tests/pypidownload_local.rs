//! pypidownload against a local index directory built here from tiny hand-made wheels and
//! sdists: resolution rules (extras, markers, Requires-Python, yanked files, PEP 643
//! sdists) and every error the step can report.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use pyti_worker::pypidownload::{
    resolve_and_download, Cache, Error, Request, RequirementsOverride, ResolvedSet, TargetEnv,
};
use sha2::{Digest, Sha256};

/// A PEP 691 index directory: `<root>/<name>/index.json` plus the files beside it.
struct LocalIndex {
    root: tempfile::TempDir,
    projects: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
}

struct FileOptions<'a> {
    serve_metadata: bool,
    yanked: Option<&'a str>,
    requires_python: Option<&'a str>,
    wrong_hash: bool,
}

const PLAIN: FileOptions<'static> = FileOptions {
    serve_metadata: true,
    yanked: None,
    requires_python: None,
    wrong_hash: false,
};

impl LocalIndex {
    fn new() -> Self {
        LocalIndex {
            root: tempfile::tempdir().unwrap(),
            projects: Default::default(),
        }
    }

    fn url(&self) -> String {
        self.root.path().display().to_string()
    }

    fn add_file(
        &mut self,
        project: &str,
        filename: &str,
        bytes: &[u8],
        metadata: Option<&str>,
        options: &FileOptions,
    ) {
        let dir = self.root.path().join(project);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(filename), bytes).unwrap();
        let mut sha256 = hex::encode(Sha256::digest(bytes));
        if options.wrong_hash {
            sha256 = hex::encode(Sha256::digest(b"something else"));
        }
        let mut entry = serde_json::json!({"filename": filename, "url": filename, "hashes": {"sha256": sha256}});
        if let (true, Some(metadata)) = (options.serve_metadata, metadata) {
            std::fs::write(dir.join(format!("{filename}.metadata")), metadata).unwrap();
            entry["core-metadata"] =
                serde_json::json!({"sha256": hex::encode(Sha256::digest(metadata.as_bytes()))});
        }
        if let Some(reason) = options.yanked {
            entry["yanked"] = serde_json::json!(reason);
        }
        if let Some(requires) = options.requires_python {
            entry["requires-python"] = serde_json::json!(requires);
        }
        self.projects
            .entry(project.to_string())
            .or_default()
            .push(entry);
    }

    /// A wheel whose METADATA has `requires` lines (Requires-Dist, Provides-Extra…).
    fn wheel(
        &mut self,
        project: &str,
        version: &str,
        tag: &str,
        requires: &[&str],
        options: &FileOptions,
    ) {
        let metadata = format!(
            "Metadata-Version: 2.1\nName: {project}\nVersion: {version}\nLicense: MIT\n{}\n\nreadme\n",
            requires.iter().map(|line| format!("{line}\n")).collect::<String>()
        );
        let filename = format!("{}-{version}-{tag}.whl", project.replace('-', "_"));
        let mut bytes = Vec::new();
        {
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
            let file_options = zip::write::SimpleFileOptions::default();
            zip.start_file(
                format!("{}/__init__.py", project.replace('-', "_")),
                file_options,
            )
            .unwrap();
            zip.start_file(
                format!("{}-{version}.dist-info/METADATA", project.replace('-', "_")),
                file_options,
            )
            .unwrap();
            zip.write_all(metadata.as_bytes()).unwrap();
            zip.finish().unwrap();
        }
        self.add_file(project, &filename, &bytes, Some(&metadata), options);
    }

    /// An sdist with the given PKG-INFO and optional pyproject.toml.
    fn sdist(&mut self, project: &str, version: &str, pkg_info: &str, pyproject: Option<&str>) {
        let filename = format!("{project}-{version}.tar.gz");
        let mut bytes = Vec::new();
        {
            let encoder = flate2::write::GzEncoder::new(&mut bytes, flate2::Compression::fast());
            let mut builder = tar::Builder::new(encoder);
            let mut entries = vec![("PKG-INFO", pkg_info.to_string())];
            if let Some(pyproject) = pyproject {
                entries.push(("pyproject.toml", pyproject.to_string()));
            }
            for (name, text) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder
                    .append_data(
                        &mut header,
                        format!("{project}-{version}/{name}"),
                        text.as_bytes(),
                    )
                    .unwrap();
            }
            builder.into_inner().unwrap().finish().unwrap();
        }
        let options = FileOptions {
            serve_metadata: false,
            ..PLAIN
        };
        self.add_file(project, &filename, &bytes, None, &options);
    }

    fn write(&self) {
        for (project, files) in &self.projects {
            let page = serde_json::json!({"meta": {"api-version": "1.1"}, "name": project, "files": files});
            std::fs::write(
                self.root.path().join(project).join("index.json"),
                page.to_string(),
            )
            .unwrap();
        }
    }
}

/// The index every test here uses.
fn fixture_index() -> LocalIndex {
    let mut index = LocalIndex::new();
    let any = "py3-none-any";
    index.wheel("alpha", "1.0", any, &["Requires-Dist: beta>=1.0"], &PLAIN);
    index.wheel(
        "alpha",
        "2.0",
        any,
        &[
            "Requires-Dist: beta>=2.0",
            "Requires-Dist: delta; extra == \"fast\"",
            "Requires-Dist: epsilon; sys_platform == \"win32\"",
            "Provides-Extra: fast",
        ],
        &PLAIN,
    );
    index.wheel("beta", "1.0", any, &[], &PLAIN);
    // No PEP 658 file: the metadata is read from the wheel itself.
    let no_metadata = FileOptions {
        serve_metadata: false,
        ..PLAIN
    };
    index.wheel(
        "beta",
        "2.0",
        "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
        &[],
        &no_metadata,
    );
    index.wheel(
        "beta",
        "2.0",
        "cp312-cp312-manylinux_2_17_x86_64",
        &[],
        &PLAIN,
    );
    let new_python = FileOptions {
        requires_python: Some(">=3.12"),
        ..PLAIN
    };
    index.wheel("beta", "3.0", any, &[], &new_python);
    index.wheel("beta", "4.0rc1", any, &[], &PLAIN);
    index.wheel(
        "wantspre",
        "1.0",
        any,
        &["Requires-Dist: beta>=4.0rc1"],
        &PLAIN,
    );
    index.wheel("delta", "1.0", any, &[], &PLAIN);
    index.wheel("epsilon", "1.0", any, &[], &PLAIN);
    index.wheel("toolx", "1.0", any, &[], &PLAIN);
    index.wheel("flit-core", "3.9.0", any, &[], &PLAIN);
    let yanked = FileOptions {
        yanked: Some("broken"),
        ..PLAIN
    };
    index.wheel("yanky", "1.0", any, &[], &yanked);
    index.wheel("winonly", "1.0", "cp311-cp311-win_amd64", &[], &PLAIN);
    index.wheel(
        "conflict",
        "1.0",
        any,
        &["Requires-Dist: beta<2", "Requires-Dist: gamma"],
        &PLAIN,
    );
    index.wheel("gamma", "1.0", any, &["Requires-Dist: beta>=2"], &PLAIN);
    index.wheel(
        "needsmissing",
        "1.0",
        any,
        &["Requires-Dist: nosuchdep>=1"],
        &PLAIN,
    );
    let tampered = FileOptions {
        wrong_hash: true,
        serve_metadata: false,
        ..PLAIN
    };
    index.wheel("tampered", "1.0", any, &[], &tampered);
    index.sdist(
        "srcpkg",
        "1.0",
        "Metadata-Version: 2.2\nName: srcpkg\nVersion: 1.0\nRequires-Dist: beta<2\n",
        Some("[build-system]\nrequires = [\"flit_core>=3.2\"]\nbuild-backend = \"flit_core.buildapi\"\n"),
    );
    index.sdist(
        "oldsrc",
        "1.0",
        "Metadata-Version: 1.1\nName: oldsrc\nVersion: 1.0\n",
        None,
    );
    index.sdist(
        "sdisttool",
        "1.0",
        "Metadata-Version: 2.3\nName: sdisttool\nVersion: 1.0\n",
        Some("[build-system]\nrequires = [\"hatchling\"]\n"),
    );
    index.wheel("hatchling", "1.25.0", any, &[], &PLAIN);
    index.wheel("setuptools", "70.0.0", any, &[], &PLAIN);
    index.wheel("wheel", "0.43.0", any, &[], &PLAIN);
    index.write();
    index
}

struct Fixture {
    index: LocalIndex,
    cache_dir: tempfile::TempDir,
    cache: Cache,
}

fn fixture() -> Fixture {
    let cache_dir = tempfile::tempdir().unwrap();
    Fixture {
        index: fixture_index(),
        cache: Cache::open(cache_dir.path()).unwrap(),
        cache_dir,
    }
}

impl Fixture {
    fn request(&self, requirement: &str) -> Request {
        let mut request = Request::new(requirement).with_index(self.index.url());
        request.tools = vec!["toolx".into()];
        request
    }

    async fn resolve(&self, request: &Request) -> Result<ResolvedSet, Error> {
        resolve_and_download(request, &TargetEnv::default(), &self.cache, None).await
    }

    async fn fails(&self, requirement: &str) -> Error {
        self.resolve(&self.request(requirement))
            .await
            .expect_err(requirement)
    }
}

fn closure(set: &ResolvedSet) -> BTreeSet<String> {
    std::iter::once(&set.distribution)
        .chain(&set.dependencies)
        .map(|file| format!("{}=={}", file.name, file.version))
        .collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extras_markers_requires_python_and_tags_shape_the_closure() {
    let fixture = fixture();
    let plain = fixture.resolve(&fixture.request("alpha")).await.unwrap();
    assert_eq!(closure(&plain), set_of(&["alpha==2.0", "beta==2.0"]));
    let beta = plain
        .dependencies
        .iter()
        .find(|f| f.name == "beta")
        .unwrap();
    assert_eq!(
        beta.filename,
        "beta-2.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    );
    assert_eq!(
        plain
            .tools
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        vec!["toolx"]
    );

    let fast = fixture
        .resolve(&fixture.request("alpha[fast]"))
        .await
        .unwrap();
    assert_eq!(
        closure(&fast),
        set_of(&["alpha==2.0", "beta==2.0", "delta==1.0"])
    );

    let old = fixture
        .resolve(&fixture.request("alpha==1.0"))
        .await
        .unwrap();
    assert_eq!(closure(&old), set_of(&["alpha==1.0", "beta==2.0"]));

    // beta 4.0rc1 only when a requirement names a pre-release.
    let pre = fixture.resolve(&fixture.request("wantspre")).await.unwrap();
    assert_eq!(closure(&pre), set_of(&["wantspre==1.0", "beta==4.0rc1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdists_follow_pep_643_and_bring_their_build_backends() {
    let fixture = fixture();
    let modern = fixture.resolve(&fixture.request("srcpkg")).await.unwrap();
    assert_eq!(closure(&modern), set_of(&["srcpkg==1.0", "beta==1.0"]));
    assert!(modern.requirements_unknown.is_empty());
    let tools: BTreeSet<&str> = modern.tools.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(tools, BTreeSet::from(["flit-core", "toolx"]));

    let old = fixture
        .resolve(&fixture.request("oldsrc==1.0"))
        .await
        .unwrap();
    assert_eq!(closure(&old), set_of(&["oldsrc==1.0"]));
    assert_eq!(old.requirements_unknown, vec!["oldsrc==1.0"]);
    let tools: BTreeSet<&str> = old.tools.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(tools, BTreeSet::from(["setuptools", "toolx", "wheel"]));

    // A tool that is only an sdist brings its own build backend.
    let mut nested = fixture.request("srcpkg");
    nested.tools = vec!["sdisttool".into()];
    let nested = fixture.resolve(&nested).await.unwrap();
    let tools: BTreeSet<&str> = nested.tools.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        tools,
        BTreeSet::from(["flit-core", "hatchling", "sdisttool"])
    );

    // What a guest pass reported replaces the unknown requirements.
    let mut second_pass = fixture.request("oldsrc==1.0");
    second_pass.overrides = vec![RequirementsOverride {
        name: "oldsrc".into(),
        version: "1.0".into(),
        requires_dist: vec!["delta>=1".into()],
    }];
    let known = fixture.resolve(&second_pass).await.unwrap();
    assert_eq!(closure(&known), set_of(&["oldsrc==1.0", "delta==1.0"]));
    assert!(known.requirements_unknown.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yanked_files_are_used_only_when_pinned() {
    let fixture = fixture();
    match fixture.fails("yanky").await {
        Error::OnlyYanked {
            project, versions, ..
        } => {
            assert_eq!(project, "yanky");
            assert_eq!(versions, "1.0");
        }
        other => panic!("{other}"),
    }
    let pinned = fixture
        .resolve(&fixture.request("yanky==1.0"))
        .await
        .unwrap();
    assert!(pinned.metadata.yanked);
    assert_eq!(pinned.metadata.yanked_reason.as_deref(), Some("broken"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_names_the_project_and_the_request() {
    let fixture = fixture();
    let text = |error: &Error| error.to_string();

    let error = fixture.fails("missing").await;
    assert!(
        matches!(&error, Error::ProjectNotFound { project, .. } if project == "missing"),
        "{error}"
    );

    let error = fixture.fails("alpha==9.0").await;
    match &error {
        Error::VersionNotFound {
            project,
            requested,
            nearest,
        } => {
            assert_eq!(project, "alpha");
            assert_eq!(requested, "==9.0");
            assert_eq!(nearest, &vec!["2.0".to_string(), "1.0".to_string()]);
        }
        other => panic!("{other}"),
    }

    let error = fixture.fails("winonly").await;
    assert!(
        matches!(&error, Error::NoFileForPlatform { project, .. } if project == "winonly"),
        "{error}"
    );
    assert!(
        text(&error).contains("winonly-1.0-cp311-cp311-win_amd64.whl"),
        "{error}"
    );

    let error = fixture.fails("beta==3.0").await;
    assert!(text(&error).contains("Requires-Python >=3.12"), "{error}");

    let error = fixture.fails("conflict").await;
    match &error {
        Error::ResolutionImpossible {
            request,
            explanation,
        } => {
            assert_eq!(request, "conflict");
            assert!(
                explanation.contains("beta") && explanation.contains("gamma"),
                "{explanation}"
            );
        }
        other => panic!("{other}"),
    }

    let error = fixture.fails("needsmissing").await;
    assert!(
        matches!(&error, Error::ProjectNotFound { project, .. } if project == "nosuchdep"),
        "{error}"
    );
    assert!(
        text(&error).contains("required by needsmissing 1.0"),
        "{error}"
    );

    let error = fixture.fails("tampered").await;
    assert!(
        matches!(&error, Error::HashMismatch { project, .. } if project == "tampered"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_dir(fixture.cache_dir.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );

    // With an empty cache: a filled one would stand in for the unreachable index.
    let empty_cache_dir = tempfile::tempdir().unwrap();
    let empty_cache = Cache::open(empty_cache_dir.path()).unwrap();
    let unreachable = fixture
        .request("alpha")
        .with_index("http://127.0.0.1:9/simple");
    let error = resolve_and_download(&unreachable, &TargetEnv::default(), &empty_cache, None)
        .await
        .expect_err("nothing listens on port 9");
    assert!(
        matches!(&error, Error::IndexUnreachable { project, .. } if project == "alpha"),
        "{error}"
    );
    assert!(error.is_transient());

    let error = fixture.fails("alpha @ https://example.org/alpha.whl").await;
    assert!(matches!(error, Error::InvalidRequest { .. }), "{error}");
    let error = fixture
        .resolve(&fixture.request("alpha").with_index("/no/such/index"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidIndex { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_request_replays_from_the_cache_and_lands_in_the_destination() {
    let fixture = fixture();
    let dest = tempfile::tempdir().unwrap();
    let first = resolve_and_download(
        &fixture.request("alpha==2.0"),
        &TargetEnv::default(),
        &fixture.cache,
        Some(dest.path()),
    )
    .await
    .unwrap();
    assert!(!first.offline);
    assert!(first.files().all(|f| !f.from_cache));
    let placed: BTreeSet<PathBuf> = first.files().map(|f| f.path.clone().unwrap()).collect();
    let expected: BTreeSet<PathBuf> = [
        "dist/alpha-2.0-py3-none-any.whl",
        "wheels/beta-2.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "tools/toolx-1.0-py3-none-any.whl",
    ]
    .iter()
    .map(|p| dest.path().join(p))
    .collect();
    assert_eq!(placed, expected);

    // Remove the index: the pinned request must not need it any more.
    std::fs::remove_dir_all(fixture.index.root.path().join("alpha")).unwrap();
    let again = resolve_and_download(
        &fixture.request("alpha==2.0"),
        &TargetEnv::default(),
        &fixture.cache,
        Some(dest.path()),
    )
    .await
    .unwrap();
    assert!(again.offline);
    assert!(again.files().all(|f| f.from_cache));
    assert_eq!(closure(&again), closure(&first));
    for path in expected {
        assert!(Path::new(&path).is_file(), "{path:?}");
    }
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    download: pyti_worker::pypidownload::cli::DownloadArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_download_command_fills_the_cache_and_the_destination() {
    use clap::Parser;
    let fixture = fixture();
    let dest = tempfile::tempdir().unwrap();
    let dest_arg = dest.path().display().to_string();
    let index = fixture.index.url();
    let cli = Cli::try_parse_from([
        "download",
        "alpha[fast]==2.0",
        "--dest",
        &dest_arg,
        "--python",
        "3.11",
        "--json",
        "--index-url",
        &index,
        "--tool",
        "toolx",
    ])
    .unwrap();
    assert_eq!(cli.download.tools, vec!["toolx"]);
    pyti_worker::pypidownload::cli::run(cli.download, fixture.cache_dir.path(), Default::default())
        .await
        .unwrap();
    assert!(dest
        .path()
        .join("dist/alpha-2.0-py3-none-any.whl")
        .is_file());
    assert!(dest
        .path()
        .join("wheels/delta-1.0-py3-none-any.whl")
        .is_file());
    assert!(dest
        .path()
        .join("tools/toolx-1.0-py3-none-any.whl")
        .is_file());

    // The table names every file and says where it came from.
    let mut request = fixture.request("alpha==2.0");
    request.tools = vec![];
    let set = fixture.resolve(&request).await.unwrap();
    let table = pyti_worker::pypidownload::cli::table(&set);
    assert!(table.lines().next().unwrap().starts_with("role"));
    assert!(
        table.contains("alpha-2.0-py3-none-any.whl") && table.contains("cache"),
        "{table}"
    );
    assert!(table.contains("cache only, no network"), "{table}");
    let bad = Cli::try_parse_from([
        "download",
        "alpha",
        "--python",
        "three",
        "--index-url",
        &index,
    ])
    .unwrap();
    let error = pyti_worker::pypidownload::cli::run(
        bad.download,
        fixture.cache_dir.path(),
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("three"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_slots_share_one_cache_at_the_same_time() {
    let fixture = fixture();
    let requests: Vec<Request> = (0..4).map(|_| fixture.request("alpha[fast]")).collect();
    let sets =
        futures_util::future::try_join_all(requests.iter().map(|request| fixture.resolve(request)))
            .await
            .unwrap();
    let hashes = |set: &ResolvedSet| {
        set.files()
            .map(|f| f.sha256.clone())
            .collect::<BTreeSet<_>>()
    };
    for set in &sets {
        assert_eq!(hashes(set), hashes(&sets[0]));
        for file in set.files() {
            let bytes = std::fs::read(&file.cache_path).unwrap();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), file.sha256);
        }
    }
    assert_eq!(
        std::fs::read_dir(fixture.cache_dir.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}
