//! SHA-256 as PyTI writes it everywhere: lower-case hex, of a file (streamed) or of
//! bytes in memory.
//!
//! Input files are hashed by the host (job.json, the download cache, local
//! distributions, guest images) and checked by the guest; one helper for each shape
//! keeps the two sides from disagreeing on case or encoding.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of the file at `path`, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block_key.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    hex(&Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize())
}

/// The MAC of the agent's progress line number `seq` with text `text`, under the run's
/// `nonce`: 16 hex digits, enough that a guess is hopeless within one run.
pub fn progress_mac(nonce: &str, seq: u64, text: &str) -> String {
    let message = format!("pyti-progress {seq} {text}");
    hmac_sha256_hex(nonce.as_bytes(), message.as_bytes())[..16].to_owned()
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of a digest (for hashers fed piece by piece, e.g. while streaming).
pub fn hex(digest: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_bytes_agree_with_the_known_digest() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content = vec![7u8; 200_000];
        std::fs::write(&path, &content).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(&content));
        std::fs::write(&path, b"").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), empty);
        assert!(sha256_file(&dir.path().join("missing")).is_err());
    }
}

#[cfg(test)]
mod hmac_tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hmac_sha256_hex(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn progress_macs_depend_on_nonce_sequence_and_text() {
        let mac = progress_mac("n1", 1, "task install started");
        assert_eq!(mac.len(), 16);
        assert_ne!(mac, progress_mac("n2", 1, "task install started"));
        assert_ne!(mac, progress_mac("n1", 2, "task install started"));
        assert_ne!(mac, progress_mac("n1", 1, "task install passed 1.0s"));
    }
}
