//! Records the git revision of the build as `LUMEN_REVISION` for `lumen_build_info` and `--version`.
//! `LUMEN_REVISION` in the environment wins (a release or image build without `.git`); "unknown" otherwise.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LUMEN_REVISION");
    let from_git = || {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let rev = std::env::var("LUMEN_REVISION").ok().filter(|r| !r.is_empty()).or_else(from_git);
    println!("cargo:rustc-env=LUMEN_REVISION={}", rev.as_deref().unwrap_or("unknown"));
    // A new commit moves the branch the HEAD file names: watch both.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(r) = head.strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=.git/{}", r.trim());
    }
}
