//! Conversion of IO disks between raw and the container formats hypervisors want.
//!
//! QEMU boots the raw image directly, but VirtualBox wants VDI and others VMDK or qcow2;
//! rather than write those formats ourselves we call `qemu-img`, the reference
//! implementation, and hand its stderr back when it fails.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use super::{Error, Result};

/// Most stderr bytes of a failed `qemu-img` kept in the error.
const STDERR_KEPT_BYTES: usize = 4096;

/// A disk image container format `qemu-img` reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Plain bytes of the volume (what this module writes).
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
    /// VirtualBox disk image.
    Vdi,
    /// VMware disk.
    Vmdk,
}

impl ImageFormat {
    /// The name `qemu-img` uses (`-f` / `-O`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Vmdk => "vmdk",
        }
    }

    /// The usual file extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Raw => "img",
            other => other.qemu_name(),
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.qemu_name())
    }
}

impl FromStr for ImageFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "raw" | "img" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            "vdi" => Ok(ImageFormat::Vdi),
            "vmdk" => Ok(ImageFormat::Vmdk),
            other => Err(format!(
                "unknown disk image format {other:?} (expected raw, qcow2, vdi or vmdk)"
            )),
        }
    }
}

/// Converts `source` (in `from`) to a new image `target` (in `to`) with `qemu-img convert`
/// from `PATH`. Use it both ways: raw to vdi before the run, vdi back to raw to read results.
pub fn convert_image(
    source: &Path,
    from: ImageFormat,
    target: &Path,
    to: ImageFormat,
) -> Result<()> {
    convert_with(OsStr::new("qemu-img"), source, from, target, to)
}

/// [`convert_image`] with an explicit `qemu-img` program.
pub(crate) fn convert_with(
    program: &OsStr,
    source: &Path,
    from: ImageFormat,
    target: &Path,
    to: ImageFormat,
) -> Result<()> {
    let output = Command::new(program)
        .arg("convert")
        .args(["-f", from.qemu_name(), "-O", to.qemu_name()])
        .arg(source)
        .arg(target)
        .output()
        .map_err(|source_error| Error::QemuImgMissing {
            program: program.to_string_lossy().into_owned(),
            image: source.to_path_buf(),
            source: source_error,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.len() > STDERR_KEPT_BYTES {
        let mut end = STDERR_KEPT_BYTES;
        while !stderr.is_char_boundary(end) {
            end -= 1;
        }
        stderr.truncate(end);
        stderr.push_str(" …");
    }
    Err(Error::Conversion {
        image: source.to_path_buf(),
        target: target.to_path_buf(),
        from,
        to,
        status: output.status.to_string(),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_as_qemu_img_names() {
        for format in [
            ImageFormat::Raw,
            ImageFormat::Qcow2,
            ImageFormat::Vdi,
            ImageFormat::Vmdk,
        ] {
            assert_eq!(format.to_string().parse::<ImageFormat>(), Ok(format));
        }
        assert_eq!("VDI".parse::<ImageFormat>(), Ok(ImageFormat::Vdi));
        assert_eq!(ImageFormat::Raw.extension(), "img");
        assert!("vhdx".parse::<ImageFormat>().unwrap_err().contains("vhdx"));
    }

    #[test]
    fn a_missing_qemu_img_is_named_with_the_package_to_install() {
        let error = convert_with(
            OsStr::new("/nonexistent/qemu-img"),
            Path::new("/tmp/io.img"),
            ImageFormat::Raw,
            Path::new("/tmp/io.vdi"),
            ImageFormat::Vdi,
        )
        .unwrap_err();
        assert!(matches!(error, Error::QemuImgMissing { .. }));
        let message = error.to_string();
        assert!(
            message.contains("qemu-utils") && message.contains("/tmp/io.img"),
            "{message}"
        );
    }

    #[test]
    fn a_failing_conversion_carries_qemu_img_stderr() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing.img");
        let error = convert_image(
            &missing,
            ImageFormat::Raw,
            &directory.path().join("out.vdi"),
            ImageFormat::Vdi,
        )
        .unwrap_err();
        let Error::Conversion { stderr, .. } = &error else {
            panic!("expected a conversion error, got {error}");
        };
        assert!(stderr.contains("missing.img"), "{stderr}");
        assert!(error.to_string().contains("missing.img"));
    }
}
