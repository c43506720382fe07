//! YAML read through python3 and PyYAML (installed with kubernetes-validate by scripts/test), as JSON
//! values: the deploy tests' one YAML reader.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The documents of `text` as JSON values (empty documents left out).
pub fn yaml_documents(text: &str) -> Vec<Value> {
    let script = "import sys, yaml, json\n\
                  print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs python3 with PyYAML: {e}"));
    // Python reads all of stdin before it writes, so writing first cannot deadlock; dropping the handle
    // at the end of the statement closes the pipe.
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 (PyYAML) failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one document of a YAML file.
pub fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = yaml_documents(&text);
    assert_eq!(docs.len(), 1, "{} holds one YAML document", path.display());
    docs.remove(0)
}
