//! Docker's container layout on a host without Kubernetes: `<docker_dir>/<id>/<id>-json.log`, written by
//! the json-file log driver (Docker's default), with `<id>/config.v2.json` describing the container.
//!
//! The json-file driver rotates by rename (`max-size`, `max-file`): `<id>-json.log` becomes
//! `<id>-json.log.1`, older rotations shift to `.2`, `.3`, ..., and with `compress=true` a rotation is
//! gzipped to `<id>-json.log.N.gz` once it is renamed. The lines are the same `{"log":..,"stream":..,
//! "time":..}` objects that [`crate::format`] reads for the kubelet's Docker runtime, so the tailer follows
//! these files with the same guarantees as pod logs.
//!
//! The stream labels come from `config.v2.json` (see [`Metadata`]); reading it needs no Docker API and no
//! socket, only the directory mounted read-only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pods::{FileKind, LogFile};

/// Docker's labels of a Compose service: they become the `compose_project` and `compose_service` labels.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// What a container's `config.v2.json` says about it (the few members the agent reads; Docker writes many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    /// The image as the container was created with it (`Config.Image`, e.g. `nginx:1.27`).
    pub image: String,
    /// The container's labels (`Config.Labels`), Compose's among them.
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ConfigV2 {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Option<ContainerConfig>,
}

#[derive(Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// The most of `config.v2.json` read: Docker's own files are a few KiB, so anything larger is not one.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a container's `config.v2.json`.
///
/// # Errors
/// A message saying what is wrong with the file (missing, too large, not Docker's JSON).
pub fn read_metadata(container_dir: &Path) -> Result<Metadata, String> {
    use std::io::Read;
    let path = container_dir.join("config.v2.json");
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("{} is larger than {MAX_CONFIG_BYTES} bytes; not Docker's", path.display()));
    }
    let parsed: ConfigV2 = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not Docker's container config: {e}", path.display()))?;
    let config = parsed.config.unwrap_or(ContainerConfig { image: String::new(), labels: None });
    Ok(Metadata {
        name: parsed.name.trim_start_matches('/').to_string(),
        image: config.image,
        labels: config.labels.unwrap_or_default(),
    })
}

/// Whether a directory name is a container id: 64 lowercase hex digits.
pub fn is_container_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every container directory under `docker_dir`, with its id, sorted. Other entries are skipped.
///
/// # Errors
/// When `docker_dir` itself cannot be read.
pub fn scan(docker_dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(docker_dir)? {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if is_container_id(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The kind of a file name in container `id`'s directory, and its rotation number (0 for the current file),
/// or `None` for files that are not its json-file log.
pub fn classify(name: &str, id: &str) -> Option<(FileKind, u32)> {
    let rest = name.strip_prefix(id)?.strip_prefix("-json.log")?;
    if rest.is_empty() {
        return Some((FileKind::Current, 0));
    }
    let rest = rest.strip_prefix('.')?;
    let (number, gz) = match rest.strip_suffix(".gz") {
        Some(n) => (n, true),
        None => (rest, false),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = number.parse().ok()?;
    Some((if gz { FileKind::Gzip } else { FileKind::Rotated }, n))
}

/// The json-file logs of one container directory, oldest first: compressed rotations, then plain
/// rotations, then the current file; within a kind the highest number (the oldest) first.
pub fn list_files(dir: &Path, id: &str) -> Vec<LogFile> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(FileKind, std::cmp::Reverse<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let (kind, n) = classify(name.to_str()?, id)?;
            Some((kind, std::cmp::Reverse(n), e.path()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(kind, _, path)| LogFile { path, kind }).collect()
}

/// A rule that skips containers by label: `key` (present, any value) or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMatch {
    pub key: String,
    pub value: Option<String>,
}

impl LabelMatch {
    /// Reads `key` or `key=value`.
    pub fn parse(s: &str) -> LabelMatch {
        match s.split_once('=') {
            Some((k, v)) => LabelMatch { key: k.trim().to_string(), value: Some(v.trim().to_string()) },
            None => LabelMatch { key: s.trim().to_string(), value: None },
        }
    }

    /// Whether a container with these labels matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(_), None) => true,
            (Some(v), Some(want)) => v == want,
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8d1c2b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

    #[test]
    fn ids_and_file_kinds() {
        assert!(is_container_id(ID));
        assert!(!is_container_id(&ID[..63]));
        assert!(!is_container_id(&ID.to_uppercase()));
        assert_eq!(classify(&format!("{ID}-json.log"), ID), Some((FileKind::Current, 0)));
        assert_eq!(classify(&format!("{ID}-json.log.1"), ID), Some((FileKind::Rotated, 1)));
        assert_eq!(classify(&format!("{ID}-json.log.12.gz"), ID), Some((FileKind::Gzip, 12)));
        assert_eq!(classify(&format!("{ID}-json.log.x"), ID), None);
        assert_eq!(classify(&format!("{ID}-json.log."), ID), None);
        assert_eq!(classify("config.v2.json", ID), None);
        assert_eq!(classify("hostconfig.json", ID), None);
        let other = ID.replace('3', "4");
        assert_eq!(classify(&format!("{other}-json.log"), ID), None);
    }

    #[test]
    fn files_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["-json.log", "-json.log.1", "-json.log.2", "-json.log.3.gz", "-json.log.10.gz"] {
            std::fs::write(tmp.path().join(format!("{ID}{f}")), b"x\n").unwrap();
        }
        std::fs::write(tmp.path().join("config.v2.json"), b"{}").unwrap();
        let names: Vec<String> = list_files(tmp.path(), ID)
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap().trim_start_matches(ID).to_string())
            .collect();
        assert_eq!(names, ["-json.log.10.gz", "-json.log.3.gz", "-json.log.2", "-json.log.1", "-json.log"]);
    }

    #[test]
    fn metadata_from_config_v2() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("config.v2.json"),
            serde_json::json!({
                "ID": ID, "Name": "/shop-web-1", "Image": "sha256:abc", "State": {"Running": true},
                "Config": {"Image": "nginx:1.27", "Labels": {COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: "web"}},
            })
            .to_string(),
        )
        .unwrap();
        let m = read_metadata(tmp.path()).unwrap();
        assert_eq!((m.name.as_str(), m.image.as_str()), ("shop-web-1", "nginx:1.27"));
        assert_eq!(m.labels.get(COMPOSE_SERVICE).map(String::as_str), Some("web"));
        std::fs::write(tmp.path().join("config.v2.json"), b"{\"Name\": 3}").unwrap();
        assert!(read_metadata(tmp.path()).unwrap_err().contains("not Docker's container config"));
        std::fs::write(tmp.path().join("config.v2.json"), br#"{"Name":"/x","Config":{"Labels":null}}"#).unwrap();
        assert_eq!(read_metadata(tmp.path()).unwrap().name, "x");
    }

    #[test]
    fn label_matches() {
        let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert!(LabelMatch::parse("a").matches(&labels));
        assert!(LabelMatch::parse("a=1").matches(&labels));
        assert!(!LabelMatch::parse("a=2").matches(&labels));
        assert!(!LabelMatch::parse("b").matches(&labels));
    }
}
