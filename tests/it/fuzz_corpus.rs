//! The fuzz targets' regression run (issue 17 §6), on every test run, nightly or not: every saved input of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` (inputs that once failed), the matching real
//! data of `../shared/data`, and a fixed set of truncations and bit flips of each, through
//! `lumen::fuzzing::run`. Coverage-guided fuzzing itself is `scripts/fuzz` (cargo-fuzz on nightly).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

/// Real inputs from `../shared/data` that fit a target.
fn shared_inputs(target: &str) -> Vec<Vec<u8>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    match target {
        "text_exposition" => files(&data.join("exposition"))
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".txt"))
            .map(|p| read(p))
            .collect(),
        "promql" => files(&data.join("promqltest"))
            .iter()
            .flat_map(|p| String::from_utf8_lossy(&read(p)).lines().map(|l| l.as_bytes().to_vec()).collect::<Vec<_>>())
            .filter(|l| l.starts_with(b"eval"))
            .map(|l| {
                // `eval instant at 10s <query>` / `eval range from ... step ... <query>`: the query follows the
                // last of those words; feeding the whole line as well costs nothing.
                let text = String::from_utf8_lossy(&l).into_owned();
                text.split_whitespace().skip(4).collect::<Vec<_>>().join(" ").into_bytes()
            })
            .collect(),
        "jsonline" => {
            files(&data.join("k8s-logs")).iter().map(|p| read(p)).filter(|b| b.first() == Some(&b'{')).collect()
        }
        _ => Vec::new(),
    }
}

/// Truncations and bit flips of `seed`, the same on every run (xorshift from a fixed state).
fn variants(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    for k in 1..8 {
        out.push(seed[..seed.len() * k / 8].to_vec());
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed.len() as u64;
    for _ in 0..24 {
        if seed.is_empty() {
            break;
        }
        let mut v = seed.to_vec();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state as usize) % v.len();
            v[i] ^= 1 << ((state >> 32) % 8);
        }
        out.push(v);
    }
    out
}

#[test]
fn every_saved_fuzz_input_and_its_variants_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut runs = 0;
    // A failing input would print its panic once per variant: keep the hook quiet and report at the end.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for target in lumen::fuzzing::TARGETS {
        let saved: Vec<PathBuf> = files(&root.join("corpus").join(target))
            .into_iter()
            .chain(files(&root.join("regressions").join(target)))
            .collect();
        assert!(!saved.is_empty(), "fuzz/corpus/{target}/ holds no seed");
        let inputs: Vec<(String, Vec<u8>)> = saved
            .iter()
            .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
            .chain(shared_inputs(target).into_iter().enumerate().map(|(i, b)| (format!("shared input {i}"), b)))
            .collect();
        for (name, input) in inputs {
            for (k, v) in variants(&input).into_iter().enumerate() {
                runs += 1;
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| lumen::fuzzing::run(target, &v))) {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures
                        .push(format!("{target}: {name} variant {k}: {message}: {:?}", String::from_utf8_lossy(&v)));
                }
            }
        }
    }
    std::panic::set_hook(hook);
    assert!(runs > 500, "only {runs} runs");
    assert!(failures.is_empty(), "{} inputs panicked:\n{}", failures.len(), failures.join("\n"));
}
