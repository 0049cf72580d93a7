//! The download step against hostile indexes built here: a local directory index and a
//! loopback HTTP index whose pages lie about file names, point at the host's files,
//! leave out hashes, serve a gzip bomb or a closure past its budget, or never answer.
//! Each is refused with its own error naming the index and the file, and nothing is
//! written outside the cache and the run directory (checked by listing the files).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyti_worker::pypidownload::{
    resolve_and_download, Budgets, Cache, Error, Request, ResolvedSet, TargetEnv,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A wheel of `project` whose METADATA requires `requires`.
fn wheel(project: &str, version: &str, requires: &[&str]) -> (String, Vec<u8>) {
    let module = project.replace('-', "_");
    let metadata = format!(
        "Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n{}",
        requires
            .iter()
            .map(|r| format!("Requires-Dist: {r}\n"))
            .collect::<String>()
    );
    let mut bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file(format!("{module}/__init__.py"), options)
            .unwrap();
        zip.start_file(format!("{module}-{version}.dist-info/METADATA"), options)
            .unwrap();
        zip.write_all(metadata.as_bytes()).unwrap();
        zip.finish().unwrap();
    }
    (format!("{module}-{version}-py3-none-any.whl"), bytes)
}

/// An sdist whose one member expands to `expanded` zero bytes: a gzip bomb (about a
/// thousand times smaller compressed).
fn gzip_bomb(project: &str, version: &str, expanded: u64) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    {
        let encoder = flate2::write::GzEncoder::new(&mut bytes, flate2::Compression::best());
        let mut builder = tar::Builder::new(encoder);
        let mut header = tar::Header::new_gnu();
        header.set_size(expanded);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("{project}-{version}/zeros.bin"),
                std::io::repeat(0).take(expanded),
            )
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap();
    }
    (format!("{project}-{version}.tar.gz"), bytes)
}

/// One test's file system: the index, the cache, the run directory, and nothing else
/// may change.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["index", "cache", "run", "home"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("home/secret"), b"not for the index").unwrap();
        World { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Every path under the world, relative.
    fn listing(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                out.insert(path.strip_prefix(root).unwrap().display().to_string());
                if entry.file_type().unwrap().is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }

    /// A file-index page for `project` listing `files` as (name, url, sha256 or none),
    /// the files themselves written beside it under their plain names.
    fn local_page(&self, project: &str, files: &[(&str, String, Option<String>)]) {
        let dir = self.path("index").join(project);
        std::fs::create_dir_all(&dir).unwrap();
        let entries: Vec<_> = files
            .iter()
            .map(|(name, url, hash)| {
                let hashes = hash
                    .as_ref()
                    .map(|h| serde_json::json!({"sha256": h}))
                    .unwrap_or_else(|| serde_json::json!({}));
                serde_json::json!({"filename": name, "url": url, "hashes": hashes})
            })
            .collect();
        let page =
            serde_json::json!({"meta": {"api-version": "1.1"}, "name": project, "files": entries});
        std::fs::write(dir.join("index.json"), page.to_string()).unwrap();
    }

    /// Adds a file to the local index under `project/` and returns its hash.
    fn local_file(&self, project: &str, name: &str, bytes: &[u8]) -> String {
        let dir = self.path("index").join(project);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        sha256(bytes)
    }

    fn request(&self, requirement: &str, index: &str) -> Request {
        let mut request = Request::new(requirement).with_index(index);
        request.tools = Vec::new();
        request.include_sources = false;
        request
    }

    /// Runs the request with the run directory as destination and checks that only the
    /// cache and the run directory changed.
    async fn resolve(&self, request: &Request) -> Result<ResolvedSet, Error> {
        let before = self.listing();
        let cache = Cache::open(self.path("cache")).unwrap();
        let result = resolve_and_download(
            request,
            &TargetEnv::default(),
            &cache,
            Some(&self.path("run")),
        )
        .await;
        let written: Vec<String> = self
            .listing()
            .difference(&before)
            .filter(|path| !path.starts_with("cache") && !path.starts_with("run"))
            .cloned()
            .collect();
        assert!(
            written.is_empty(),
            "{}: written outside the cache and run directories: {written:?}",
            request.requirement
        );
        assert_eq!(
            std::fs::read(self.path("home/secret")).unwrap(),
            b"not for the index"
        );
        result
    }
}

/// A loopback HTTP index: fixed answers by path; a path mapped to `None` never
/// answers (a stalled index).
struct HttpIndex {
    base: String,
    routes: Arc<Mutex<BTreeMap<String, Option<Vec<u8>>>>>,
    _server: JoinSet<()>,
}

impl HttpIndex {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/simple", listener.local_addr().unwrap());
        let routes: Arc<Mutex<BTreeMap<String, Option<Vec<u8>>>>> = Arc::default();
        let mut server = JoinSet::new();
        let shared = Arc::clone(&routes);
        server.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let routes = Arc::clone(&shared);
                connections.spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let answer = routes.lock().unwrap().get(&path).cloned();
                    let response = match answer {
                        Some(Some(body)) => {
                            let mut response = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.pypi.simple.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            response.extend_from_slice(&body);
                            response
                        }
                        Some(None) => {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                            return;
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HttpIndex {
            base,
            routes,
            _server: server,
        }
    }

    fn page(&self, project: &str, files: &[(&str, String, Option<String>)]) {
        let entries: Vec<_> = files
            .iter()
            .map(|(name, url, hash)| {
                let hashes = hash
                    .as_ref()
                    .map(|h| serde_json::json!({"sha256": h}))
                    .unwrap_or_else(|| serde_json::json!({}));
                serde_json::json!({"filename": name, "url": url, "hashes": hashes})
            })
            .collect();
        let page =
            serde_json::json!({"meta": {"api-version": "1.1"}, "name": project, "files": entries});
        self.routes.lock().unwrap().insert(
            format!("/simple/{project}/"),
            Some(page.to_string().into_bytes()),
        );
    }

    fn file(&self, project: &str, name: &str, bytes: &[u8]) -> String {
        self.routes
            .lock()
            .unwrap()
            .insert(format!("/simple/{project}/{name}"), Some(bytes.to_vec()));
        sha256(bytes)
    }

    fn stall(&self, project: &str) {
        self.routes
            .lock()
            .unwrap()
            .insert(format!("/simple/{project}/"), None);
    }
}

#[tokio::test]
async fn path_names_are_refused_before_anything_is_written() {
    let world = World::new();
    let index = world.path("index").display().to_string();
    let (_, bytes) = wheel("escaped", "1.0", &[]);
    // Placed under run/dist/, `../../` would land at the world's top.
    let hash = world.local_file("escaped", "escaped-1.0-py3-none-any.whl", &bytes);
    world.local_page(
        "escaped",
        &[(
            "../../escaped-1.0-py3-none-any.whl",
            "escaped-1.0-py3-none-any.whl".into(),
            Some(hash.clone()),
        )],
    );
    let error = world
        .resolve(&world.request("escaped==1.0", &index))
        .await
        .unwrap_err();
    match &error {
        Error::UnsafeFileName {
            index: named,
            file,
            reason,
            ..
        } => {
            assert!(named.starts_with("file://"), "{error}");
            assert_eq!(file, "../../escaped-1.0-py3-none-any.whl");
            assert_eq!(reason, "a path, not a file name");
        }
        other => panic!("expected UnsafeFileName for ../, got {other}"),
    }

    let target = world.path("home/absolute-1.0-py3-none-any.whl");
    let hash = world.local_file("absolute", "absolute-1.0-py3-none-any.whl", &bytes);
    world.local_page(
        "absolute",
        &[(
            target.to_str().unwrap(),
            "absolute-1.0-py3-none-any.whl".into(),
            Some(hash),
        )],
    );
    let error = world
        .resolve(&world.request("absolute==1.0", &index))
        .await
        .unwrap_err();
    match &error {
        Error::UnsafeFileName { file, reason, .. } => {
            assert_eq!(file, target.to_str().unwrap());
            assert_eq!(reason, "an absolute path");
        }
        other => panic!("expected UnsafeFileName for an absolute name, got {other}"),
    }
    assert!(!target.exists());
}

#[tokio::test]
async fn a_file_of_another_project_is_refused() {
    let world = World::new();
    let index = world.path("index").display().to_string();
    let (name, bytes) = wheel("other-project", "1.0", &[]);
    let hash = world.local_file("victim", &name, &bytes);
    world.local_page("victim", &[(&name, name.clone(), Some(hash))]);
    let error = world
        .resolve(&world.request("victim==1.0", &index))
        .await
        .unwrap_err();
    match &error {
        Error::ForeignFile {
            project,
            file,
            reason,
            ..
        } => {
            assert_eq!(project, "victim");
            assert_eq!(file, &name);
            assert!(reason.contains("\"other-project\""), "{error}");
        }
        other => panic!("expected ForeignFile, got {other}"),
    }
}

#[tokio::test]
async fn an_http_index_cannot_point_at_host_files_nor_leave_out_hashes() {
    let world = World::new();
    let http = HttpIndex::start().await;
    // The host file is a real wheel with the right hash: only the scheme is wrong.
    let (pointer, pointer_bytes) = wheel("pointer", "1.0", &[]);
    let host_file = world.path("home").join(&pointer);
    std::fs::write(&host_file, &pointer_bytes).unwrap();
    let url = url::Url::from_file_path(&host_file).unwrap().to_string();
    let name = pointer.clone();
    http.page(
        "pointer",
        &[(&name, url.clone(), Some(sha256(&pointer_bytes)))],
    );
    let error = world
        .resolve(&world.request("pointer==1.0", &http.base))
        .await
        .unwrap_err();
    match &error {
        Error::UrlNotAllowed {
            index,
            file,
            url: named,
            reason,
        } => {
            assert!(index.starts_with("http://127.0.0.1"), "{error}");
            assert_eq!((file, named), (&name, &url));
            assert!(
                reason.contains("file: URL is only taken from a local"),
                "{error}"
            );
        }
        other => panic!("expected UrlNotAllowed, got {other}"),
    }

    let (name, bytes) = wheel("unhashed", "1.0", &[]);
    http.file("unhashed", &name, &bytes);
    http.page("unhashed", &[(&name, name.clone(), None)]);
    let error = world
        .resolve(&world.request("unhashed==1.0", &http.base))
        .await
        .unwrap_err();
    match &error {
        Error::MissingHash { index, file, .. } => {
            assert!(index.starts_with("http://127.0.0.1"), "{error}");
            assert_eq!(file, &name);
        }
        other => panic!("expected MissingHash, got {other}"),
    }

    // The same host file is fine from a local index.
    let index = world.path("index").display().to_string();
    world.local_page("pointer", &[(&pointer, url, Some(sha256(&pointer_bytes)))]);
    let set = world
        .resolve(&world.request("pointer==1.0", &index))
        .await
        .unwrap();
    assert_eq!(set.distribution.name, "pointer");
}

#[tokio::test]
async fn a_gzip_bomb_sdist_stops_early_under_the_default_limits() {
    let world = World::new();
    let http = HttpIndex::start().await;
    let expanded: u64 = 512 << 20;
    let (name, bytes) = gzip_bomb("bomb", "1.0", expanded);
    let hash = http.file("bomb", &name, &bytes);
    http.page("bomb", &[(&name, name.clone(), Some(hash))]);
    let error = world
        .resolve(&world.request("bomb==1.0", &http.base))
        .await
        .unwrap_err();
    let Error::ArchiveTooLarge { file, reason, .. } = &error else {
        panic!("expected ArchiveTooLarge, got {error}");
    };
    assert_eq!(file, &name);
    // Stopped at the ratio limit (200 x ~1 MiB compressed), far from the gigabyte.
    let read: u64 = reason
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {reason}"));
    let allowed = Budgets::default().archive.allowed(bytes.len() as u64);
    assert!(allowed < expanded / 2, "{allowed}");
    assert!(read > allowed && read <= allowed + (1 << 20), "{reason}");
}

#[tokio::test]
async fn a_closure_past_its_budgets_is_refused_with_the_budget_it_passed() {
    let world = World::new();
    let index = world.path("index").display().to_string();
    let deps = ["dep-a", "dep-b", "dep-c", "dep-d"];
    let (name, bytes) = wheel("wide", "1.0", &deps);
    let hash = world.local_file("wide", &name, &bytes);
    world.local_page("wide", &[(&name, name.clone(), Some(hash))]);
    for dep in deps {
        let (name, bytes) = wheel(dep, "1.0", &[]);
        let hash = world.local_file(dep, &name, &bytes);
        world.local_page(dep, &[(&name, name.clone(), Some(hash))]);
    }

    let files = world
        .resolve(&world.request("wide==1.0", &index).with_budgets(Budgets {
            max_files: 3,
            ..Budgets::default()
        }))
        .await
        .unwrap_err();
    match &files {
        Error::ClosureTooLarge { files, limit, .. } => assert_eq!((*files, *limit), (5, 3)),
        other => panic!("expected ClosureTooLarge, got {other}"),
    }
    assert!(files.to_string().contains("max_closure_files"));

    // Files already cached cost no download: start from an empty cache.
    std::fs::remove_dir_all(world.path("cache")).unwrap();
    let bytes_budget = world
        .resolve(&world.request("wide==1.0", &index).with_budgets(Budgets {
            max_bytes: 1200,
            ..Budgets::default()
        }))
        .await
        .unwrap_err();
    match &bytes_budget {
        Error::DownloadTooLarge {
            downloaded, limit, ..
        } => assert!(*downloaded > 1200 && *limit == 1200),
        other => panic!("expected DownloadTooLarge, got {other}"),
    }
    assert!(bytes_budget.to_string().contains("max_download_bytes"));

    // Within its budgets the same closure resolves, and lands in the run directory.
    let set = world
        .resolve(&world.request("wide==1.0", &index))
        .await
        .unwrap();
    assert_eq!(set.files().count(), 5);
    assert!(world
        .path("run/wheels/dep_a-1.0-py3-none-any.whl")
        .is_file());
}

#[tokio::test]
async fn a_stalled_index_meets_the_time_budget() {
    let world = World::new();
    let http = HttpIndex::start().await;
    http.stall("slow");
    let error = world
        .resolve(&world.request("slow", &http.base).with_budgets(Budgets {
            max_resolution_s: 1,
            ..Budgets::default()
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::ResolutionTimeout { limit_s: 1, .. }),
        "{error}"
    );
}
