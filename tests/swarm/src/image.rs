//! The image under test and the `swarmctl` binary that goes with it.
//!
//! The image is built once per process with `scripts/build-image.sh` (base image from Debian
//! packages when missing, `cargo build --release`, legacy `docker build`), so the suite always
//! tests the current tree. `PGSWARM_SKIP_IMAGE_BUILD=1` uses an image built beforehand (the
//! suite's `run.sh` builds it first, so its time is reported apart).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use tracing::info;

use crate::docker::docker;

/// Default tag of the image the suite builds and deploys.
pub const DEFAULT_IMAGE: &str = "pgswarm:e2e";

/// Root of the repository (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The image tag: `PGSWARM_IMAGE`, or [`DEFAULT_IMAGE`].
pub fn image_tag() -> String {
    std::env::var("PGSWARM_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string())
}

/// The `swarmctl` binary: `PGSWARM_SWARMCTL`, or the release build of this tree.
pub fn swarmctl_path() -> PathBuf {
    if let Ok(path) = std::env::var("PGSWARM_SWARMCTL") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    target.join("release").join("swarmctl")
}

static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();

/// Builds the image once per process (unless `PGSWARM_SKIP_IMAGE_BUILD=1`) and returns its tag.
pub fn ensure_image() -> Result<String> {
    IMAGE
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build() -> Result<String> {
    let tag = image_tag();
    if std::env::var("PGSWARM_SKIP_IMAGE_BUILD").as_deref() != Ok("1") {
        let script = repo_root().join("scripts/build-image.sh");
        info!(image = %tag, "building the image with scripts/build-image.sh");
        let status = Command::new(&script)
            .arg(&tag)
            .status()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !status.success() {
            bail!("{} {tag} failed ({status})", script.display());
        }
    }
    docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).with_context(|| {
        format!("image {tag} is missing: build it with scripts/build-image.sh {tag}")
    })?;
    if !swarmctl_path().is_file() {
        bail!(
            "{} is missing: run `cargo build --release -p swarmctl` (or set PGSWARM_SWARMCTL)",
            swarmctl_path().display()
        );
    }
    Ok(tag)
}
