//! Build-time facts for the binary:
//! - the git revision as `LUMEN_REVISION` (for `lumen_build_info` and `--version`); `LUMEN_REVISION` in the
//!   environment wins (a release or image build without `.git`); "unknown" otherwise;
//! - the built web UI: every file under `ui/dist/` (committed, so no Node is needed here) as a table of
//!   `include_bytes!` in `$OUT_DIR/ui_files.rs`, which `src/ui.rs` serves from memory;
//! - on Linux with glibc 2.36+, the binary's relative relocations packed as DT_RELR (issue 23, the empty
//!   server's RSS);
//! - for a release build linked by LLD, the functions a server runs laid out together, in the order of
//!   `link/lumen.order` (issue 23, resident memory; written by `scripts/text-order`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    revision();
    ui_files();
    packed_relocations();
    text_order();
}

/// Each page fault in the binary's text maps a 64 KB window around it, and the functions one path runs are
/// spread over ~90 MB of text: an empty server had ~17 MB of text resident for ~2 MB of functions it had
/// run. LLD places the functions `link/lumen.order` lists first, in its order (the server's start, ingest
/// and queries, then the agent's), so they share pages. Only where LLD links: a release build for x86_64
/// Linux/glibc, whose default linker is rustc's own LLD since Rust 1.90 (where the toolchain ships it),
/// unless the flags choose another linker (GNU ld and gold do not know the option). Names the file lists
/// that the binary lacks are skipped without a warning: a stale file costs memory, never correctness.
fn text_order() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("link").join("lumen.order");
    println!("cargo:rerun-if-changed={}", file.display());
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = ["linker", "link-self-contained", "linker-flavor", "linker-features", "fuse-ld"]
        .iter()
        .any(|k| flags.contains(k));
    if var("PROFILE") != "release" || var("TARGET") != "x86_64-unknown-linux-gnu" || other_linker || !file.exists() {
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = |arg: &str| {
        Command::new(&rustc).arg(arg).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    // The self-contained LLD rustc links with; a toolchain without it (a distribution's rustc may use the
    // system's GNU ld) would fail the link on the option.
    let sysroot = output("--print=sysroot").unwrap_or_default();
    let lld = Path::new(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld");
    if !lld.exists() {
        return;
    }
    let version = output("--version");
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .as_deref()
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok());
    if minor.is_none_or(|m| m < 90) {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", file.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    // The names carry a hash of the toolchain and of every dependency's version: say when they went stale.
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let header = std::fs::read_to_string(&file).unwrap_or_default();
    let field = |key: &str| header.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or("").to_string();
    let lock_hash = std::fs::read(&lock).map(|b| format!("{:016x}", fnv1a64(&b))).unwrap_or_default();
    if field("# rustc:") != version.as_deref().unwrap_or("").trim() || field("# Cargo.lock fnv1a64:") != lock_hash {
        println!(
            "cargo:warning=link/lumen.order was written for another toolchain or Cargo.lock: the release binary \
             will use more resident memory until `scripts/text-order` (after this build) writes it again"
        );
    }
}

/// FNV-1a, 64 bits (scripts/text-order computes the same).
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The position-independent binary carries ~219,000 relative relocations; as RELA entries (24 bytes each,
/// 5 MB) the loader reads every page of them at each start: 3.7 MB of the empty server's RSS (28.1
/// against 24.4 MB, benches/start_rss.sh, benches/RESULTS.md). Packed as DT_RELR they take ~60 KB. A binary linked so needs
/// glibc 2.36+ where it runs (the image's distroless/cc-debian12 has 2.36), so the option is passed only
/// for a native Linux glibc build on a system with glibc 2.36+ whose `ld` knows it (GNU ld 2.38+); test
/// binaries keep the default.
fn packed_relocations() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || var("HOST") != var("TARGET") {
        return;
    }
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd).args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    // "glibc 2.36"
    let glibc = run("getconf", &["GNU_LIBC_VERSION"]).unwrap_or_default();
    let version: Vec<u32> =
        glibc.trim().strip_prefix("glibc ").unwrap_or("").split('.').filter_map(|p| p.parse().ok()).collect();
    let ld_knows = run("ld", &["--help"]).is_some_and(|h| h.contains("pack-relative-relocs"));
    if version.as_slice() >= [2, 36].as_slice() && ld_knows {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
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
