//! Retries against a real HTTP index that fails on purpose: PyPI cannot be made to answer
//! 503, so a small HTTP server on 127.0.0.1 serves a PEP 691 index whose first answers
//! are server errors. Transient failures must be retried; 404 must not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pyti_worker::pypidownload::{resolve_and_download, Cache, Error, Request, TargetEnv};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Hits = Arc<Mutex<HashMap<String, usize>>>;

/// What the server answers for a path on its n-th request (1-based).
fn answer(path: &str, hit: usize, wheel: &[u8], metadata: &str) -> (u16, Vec<u8>) {
    match path {
        "/simple/flaky/" if hit <= 2 => (503, b"busy".to_vec()),
        "/simple/flaky/" => {
            let page = serde_json::json!({
                "meta": {"api-version": "1.1"},
                "name": "flaky",
                "files": [{
                    "filename": "flaky-1.0-py3-none-any.whl",
                    "url": "/files/flaky-1.0-py3-none-any.whl",
                    "hashes": {"sha256": hex::encode(Sha256::digest(wheel))},
                    "core-metadata": {"sha256": hex::encode(Sha256::digest(metadata.as_bytes()))}
                }]
            });
            (200, page.to_string().into_bytes())
        }
        "/files/flaky-1.0-py3-none-any.whl.metadata" => (200, metadata.as_bytes().to_vec()),
        "/files/flaky-1.0-py3-none-any.whl" if hit == 1 => (500, b"oops".to_vec()),
        "/files/flaky-1.0-py3-none-any.whl" => (200, wheel.to_vec()),
        _ => (404, b"not found".to_vec()),
    }
}

async fn serve(listener: TcpListener, hits: Hits) {
    let wheel = b"not really a zip, but its hash is what counts".to_vec();
    let metadata = "Metadata-Version: 2.1\nName: flaky\nVersion: 1.0\n".to_string();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        let text = String::from_utf8_lossy(&request);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let hit = {
            let mut hits = hits.lock().unwrap();
            let count = hits.entry(path.clone()).or_default();
            *count += 1;
            *count
        };
        let (status, body) = answer(&path, hit, &wheel, &metadata);
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/vnd.pypi.simple.v1+json\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_404_is_not() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hits: Hits = Arc::default();
    let mut server = tokio::task::JoinSet::new();
    server.spawn(serve(listener, hits.clone()));
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let index = format!("http://{address}/simple");
    let request = |name: &str| {
        let mut request = Request::new(name).with_index(index.clone());
        request.tools = vec![];
        request
    };

    let set = resolve_and_download(&request("flaky==1.0"), &TargetEnv::default(), &cache, None)
        .await
        .unwrap();
    assert_eq!(set.distribution.filename, "flaky-1.0-py3-none-any.whl");
    assert!(!set.distribution.from_cache);
    {
        let hits = hits.lock().unwrap();
        assert_eq!(hits["/simple/flaky/"], 3, "two 503 answers, then the page");
        assert_eq!(
            hits["/files/flaky-1.0-py3-none-any.whl"], 2,
            "one 500, then the file"
        );
    }

    let error = resolve_and_download(&request("gone"), &TargetEnv::default(), &cache, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::ProjectNotFound { project, .. } if project == "gone"),
        "{error}"
    );
    assert_eq!(
        hits.lock().unwrap()["/simple/gone/"],
        1,
        "404 is an answer, not retried"
    );
    server.abort_all();
}
