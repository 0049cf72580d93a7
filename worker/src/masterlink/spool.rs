//! Results waiting on this worker's disk until the master has stored them.
//!
//! A worker may die, or lose the master, between finishing a job and the master
//! confirming its results; the VM run cannot be repeated for free, so the results are
//! written here first (atomically: a temporary file renamed into place) and deleted
//! only after the master acknowledged them as stored.

use std::path::{Path, PathBuf};

use prost::Message;
use pyti::proto::ResultsMessage;

use super::MasterLinkError;

/// One attempt's spooled results.
#[derive(Debug, Clone, PartialEq)]
pub struct Spooled {
    /// Where they are.
    pub path: PathBuf,
    /// The stream to send: header, task results, log chunks, final record.
    pub messages: Vec<ResultsMessage>,
}

/// File name of a job attempt's spool.
fn file_name(job_id: &str, attempt: u32) -> String {
    format!("{job_id}.{attempt}.results")
}

/// Writes `messages` for (`job_id`, `attempt`) under `dir`, durably.
pub fn write(
    dir: &Path,
    job_id: &str,
    attempt: u32,
    messages: &[ResultsMessage],
) -> Result<PathBuf, MasterLinkError> {
    let io = |e| MasterLinkError::Spool {
        path: dir.to_owned(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut bytes = Vec::new();
    for message in messages {
        message
            .encode_length_delimited(&mut bytes)
            .expect("a Vec grows as needed");
    }
    let path = dir.join(file_name(job_id, attempt));
    let temporary = dir.join(format!(".{}.tmp", file_name(job_id, attempt)));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&temporary, &path).map_err(io)?;
    if let Ok(directory) = std::fs::File::open(dir) {
        // The rename is done; a failed directory sync only risks it on a power cut.
        if let Err(error) = directory.sync_all() {
            tracing::warn!(dir = %dir.display(), %error, "The spool directory could not be synced");
        }
    }
    Ok(path)
}

/// Reads one spool file back.
pub fn read(path: &Path) -> Result<Spooled, MasterLinkError> {
    let bytes = std::fs::read(path).map_err(|e| MasterLinkError::Spool {
        path: path.to_owned(),
        source: e,
    })?;
    let mut buffer = bytes.as_slice();
    let mut messages = Vec::new();
    while !buffer.is_empty() {
        let message = ResultsMessage::decode_length_delimited(&mut buffer).map_err(|e| {
            MasterLinkError::Spool {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }
        })?;
        messages.push(message);
    }
    Ok(Spooled {
        path: path.to_owned(),
        messages,
    })
}

/// Every spooled result under `dir` (none when it does not exist), oldest name first.
pub fn pending(dir: &Path) -> Result<Vec<PathBuf>, MasterLinkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(MasterLinkError::Spool {
                path: dir.to_owned(),
                source: e,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "results"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Deletes a spool file once the master stored its results.
pub fn remove(path: &Path) -> Result<(), MasterLinkError> {
    std::fs::remove_file(path).map_err(|e| MasterLinkError::Spool {
        path: path.to_owned(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyti::proto::{results_message::Message as M, FinalRecord, ResultsHeader};

    #[test]
    fn written_results_read_back_and_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        assert!(pending(&spool).unwrap().is_empty());
        let messages = vec![
            ResultsMessage {
                message: Some(M::Header(ResultsHeader {
                    job_id: "j1".into(),
                    attempt: 2,
                    ..Default::default()
                })),
            },
            ResultsMessage {
                message: Some(M::Final(FinalRecord {
                    results_json: "{}".into(),
                    ..Default::default()
                })),
            },
        ];
        let path = write(&spool, "j1", 2, &messages).unwrap();
        assert_eq!(pending(&spool).unwrap(), vec![path.clone()]);
        assert_eq!(read(&path).unwrap().messages, messages);
        remove(&path).unwrap();
        assert!(pending(&spool).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_spool_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.1.results");
        std::fs::write(&path, [0xff, 0xff, 0xff]).unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("x.1.results"), "{error}");
    }
}
