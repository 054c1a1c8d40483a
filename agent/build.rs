//! Builds the kernel programs (`ebpf/programs`) for the BPF target with the
//! nightly toolchain, so a plain `cargo build` builds everything. Missing
//! tools fail the build with the command that installs them.
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

const SETUP: &str = "run ./setup.sh (as root) to install it";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        bail!("bpf-linker is not on PATH: the kernel programs cannot be linked; {SETUP}");
    }
    let rust_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("cannot run rustup to look for the nightly toolchain")?;
    if !rust_src.status.success() {
        bail!("the nightly toolchain is not installed; {SETUP}");
    }
    if !String::from_utf8_lossy(&rust_src.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        bail!("rust-src is missing from the nightly toolchain (needed for -Z build-std); {SETUP}");
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "mcpwarden-ebpf")
        .ok_or_else(|| anyhow!("package mcpwarden-ebpf not found in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
