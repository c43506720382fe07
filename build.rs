//! Build-time facts for the binary:
//! - the git revision as `LUMEN_REVISION` (for `lumen_build_info` and `--version`); `LUMEN_REVISION` in the
//!   environment wins (a release or image build without `.git`); "unknown" otherwise;
//! - the built web UI: every file under `ui/dist/` (committed, so no Node is needed here) as a table of
//!   `include_bytes!` in `$OUT_DIR/ui_files.rs`, which `src/ui.rs` serves from memory.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    revision();
    ui_files();
}

fn revision() {
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

fn ui_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui").join("dist");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                println!("cargo:rerun-if-changed={}", p.display());
                stack.push(p);
            } else {
                println!("cargo:rerun-if-changed={}", p.display());
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out =
        String::from("/// (path under ui/dist, bytes), sorted by path.\npub static FILES: &[(&str, &[u8])] = &[\n");
    for f in &files {
        let rel = f.strip_prefix(&root).expect("under root").to_string_lossy().replace('\\', "/");
        out.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", f.display().to_string()));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ui_files.rs");
    std::fs::write(dest, out).expect("write ui_files.rs");
}
