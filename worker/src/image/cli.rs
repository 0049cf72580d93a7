//! `pyti-worker image ...`: build, list and check guest images from the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use super::{agent, check, ensure_image, latest_image, list_images, ImageError};
use crate::vms::{AcceleratorChoice, Connection};

/// The `image` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ImageCommand {
    /// Build the guest image of a platform (skipped when an identical one is cached).
    Build {
        /// Platform to build.
        #[arg(long, default_value = "linux-debian")]
        platform: String,
        /// Static pyti-guest binary to bake in (default: $PYTI_GUEST_AGENT, then
        /// pyti-guest next to this program).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Rebuild even when the cached image is up to date.
        #[arg(long)]
        force: bool,
    },
    /// List the images cached under the worker root.
    List,
    /// Boot the newest image of a platform in self-test mode and print the guest's report.
    Check {
        /// Platform to check.
        #[arg(long, default_value = "linux-debian")]
        platform: String,
        /// libvirt connection URI.
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
        /// auto, kvm or tcg.
        #[arg(long, default_value = "auto")]
        accelerator: AcceleratorChoice,
        /// Seconds the guest gets to power off before it is destroyed.
        #[arg(long, default_value_t = 180)]
        timeout_s: u64,
    },
}

/// Runs an `image` subcommand against the worker root `root`, printing to stdout.
pub async fn run(root: &Path, command: ImageCommand) -> Result<(), ImageError> {
    match command {
        ImageCommand::Build {
            platform,
            agent,
            force,
        } => {
            let agent = agent::locate_agent(agent.as_deref())?;
            let image = ensure_image(root, &platform, &agent, force).await?;
            println!(
                "{}  {}  built in {:.1} s  base {}",
                image.manifest.platform,
                image.dir.display(),
                image.manifest.build_seconds,
                image.base().display()
            );
        }
        ImageCommand::List => {
            let images = list_images(root);
            if images.is_empty() {
                println!(
                    "no guest images under {}",
                    super::images_dir(root).display()
                );
            }
            for image in images {
                let m = &image.manifest;
                println!(
                    "{:<14} {}  kernel {}  base {} MiB  built in {:.1} s  agent {}",
                    m.platform,
                    image.dir.display(),
                    m.kernel_release,
                    m.base.bytes >> 20,
                    m.build_seconds,
                    &m.agent_sha256[..12.min(m.agent_sha256.len())]
                );
            }
        }
        ImageCommand::Check {
            platform,
            uri,
            accelerator,
            timeout_s,
        } => {
            let image = latest_image(root, &platform)?;
            let connection = Connection::open(&uri).await?;
            let report = check::selftest(
                &image,
                &connection,
                &root.join("selftest"),
                accelerator,
                Duration::from_secs(timeout_s),
            )
            .await?;
            println!(
                "{} ok: kernel {}, Python {}, venv {}, boot to power-off {:.1} s ({:?}), guest uptime at self-test {:.1} s",
                image.dir.display(),
                report.record.kernel_release,
                report.record.python_version,
                report.record.venv,
                report.boot_to_poweroff.as_secs_f64(),
                report.accelerator,
                report.record.uptime_s
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        image: ImageCommand,
    }

    #[test]
    fn subcommands_parse_with_defaults() {
        let cli = Cli::parse_from(["x", "build"]);
        assert_eq!(
            cli.image,
            ImageCommand::Build {
                platform: "linux-debian".into(),
                agent: None,
                force: false
            }
        );
        let cli = Cli::parse_from(["x", "build", "--agent", "/a/pyti-guest", "--force"]);
        assert!(matches!(
            cli.image,
            ImageCommand::Build {
                force: true,
                agent: Some(_),
                ..
            }
        ));
        let cli = Cli::parse_from(["x", "check", "--accelerator", "tcg"]);
        assert_eq!(
            cli.image,
            ImageCommand::Check {
                platform: "linux-debian".into(),
                uri: "qemu:///system".into(),
                accelerator: AcceleratorChoice::Tcg,
                timeout_s: 180
            }
        );
        assert!(Cli::try_parse_from(["x", "check", "--accelerator", "hvf"]).is_err());
    }

    #[tokio::test]
    async fn list_and_check_on_an_empty_root_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), ImageCommand::List).await.unwrap();
        let err = run(
            dir.path(),
            ImageCommand::Check {
                platform: "linux-debian".into(),
                uri: "test:///default".into(),
                accelerator: AcceleratorChoice::Auto,
                timeout_s: 1,
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("image build --platform linux-debian"), "{err}");
    }

    #[tokio::test]
    async fn build_of_an_unknown_platform_names_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_image(dir.path(), "windows", Path::new("/bin/ls"), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("windows") && err.contains("linux-debian"),
            "{err}"
        );
    }
}
