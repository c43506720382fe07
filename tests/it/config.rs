//! The example config documents every key at its default, and the CLI validates configs.

use std::path::Path;

use lumen::Config;

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml")
}

#[test]
fn example_config_lists_every_default() {
    let parsed = Config::from_file(&example()).unwrap();
    assert_eq!(parsed, Config::default());
    // Every key of the defaults appears in the example.
    let defaults: toml::Table = toml::from_str(&Config::defaults_toml()).unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    for (section, keys) in &defaults {
        assert!(text.contains(&format!("[{section}]")), "section [{section}] missing from the example");
        for (key, value) in keys.as_table().unwrap() {
            if let Some(sub) = value.as_table() {
                let name = format!("{section}.{key}");
                assert!(text.contains(&format!("[{name}]")), "section [{name}] missing from the example");
                for key in sub.keys() {
                    assert!(text.contains(&format!("\n{key} = ")), "{name}.{key} missing from the example");
                }
                continue;
            }
            assert!(text.contains(&format!("\n{key} = ")), "{section}.{key} missing from the example");
        }
    }
}

#[test]
fn config_check_accepts_the_example_and_names_a_bad_key() {
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["config", "check", "--config"])
        .arg(example())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nretention = \"soon\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid duration \"soon\""), "{err}");
    std::fs::write(&bad, "[server]\nhttp_adr = \"1.2.3.4:5\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `http_adr`"), "{err}");
}
