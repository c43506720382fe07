//! Re-encodes a Loki push JSON workload (a directory made by `../shared/bench/gen_logs.py --format loki`)
//! as the same streams and lines in two other encodings, one body per input body, for
//! `benches/e2e_otlp.sh`: OTLP logs protobuf (`--otlp DIR`, and gzip-compressed with `--otlp-gzip DIR`)
//! and Loki push protobuf with snappy (`--loki-proto DIR`). Each output directory gets a `meta.json` like
//! the input's, which `send.py` reads.
//!
//! Usage: otlp_bodies --input DIR [--otlp DIR] [--otlp-gzip DIR] [--loki-proto DIR]

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use prost::Message;
use serde_json::Value;
use wire::loki::{EntryAdapter, PushRequest, StreamAdapter, Timestamp, encode_protobuf};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    otlp: Option<PathBuf>,
    #[arg(long)]
    otlp_gzip: Option<PathBuf>,
    #[arg(long)]
    loki_proto: Option<PathBuf>,
}

/// A stream's labels and its entries (time in ns, line).
type Stream<'a> = (Vec<(String, String)>, Vec<(i64, &'a str)>);

fn write(dir: &Path, name: &str, body: &[u8]) {
    std::fs::write(dir.join(name), body).unwrap_or_else(|e| panic!("writing {}: {e}", dir.display()));
}

fn main() {
    let args = Args::parse();
    let mut meta: Value = serde_json::from_slice(&std::fs::read(args.input.join("meta.json")).expect("meta.json"))
        .expect("meta.json is JSON");
    let outputs = [(&args.otlp, "otlp"), (&args.otlp_gzip, "otlp-gzip"), (&args.loki_proto, "loki-proto")];
    for (dir, _) in &outputs {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).expect("output directory");
        }
    }
    let mut names: Vec<_> = std::fs::read_dir(&args.input)
        .expect("input directory")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".loki"))
        .collect();
    names.sort();
    let mut bytes = [0usize; 3];
    for name in &names {
        let body: Value = serde_json::from_slice(&std::fs::read(args.input.join(name)).unwrap()).unwrap();
        let streams: Vec<Stream<'_>> = body["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["stream"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let entries = s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| (v[0].as_str().unwrap().parse::<i64>().unwrap(), v[1].as_str().unwrap()))
                    .collect();
                (labels, entries)
            })
            .collect();
        let stem = name.trim_end_matches(".loki");
        let otlp = benches::otlp_logs_request(streams.iter().map(|(l, e)| (l.clone(), e.clone()))).encode_to_vec();
        if let Some(dir) = &args.otlp {
            write(dir, &format!("{stem}.pb"), &otlp);
            bytes[0] += otlp.len();
        }
        if let Some(dir) = &args.otlp_gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&otlp).unwrap();
            let gz = e.finish().unwrap();
            write(dir, &format!("{stem}.pb.gz"), &gz);
            bytes[1] += gz.len();
        }
        if let Some(dir) = &args.loki_proto {
            let streams = streams
                .iter()
                .map(|(labels, entries)| {
                    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    StreamAdapter {
                        labels: format!("{{{}}}", labels.join(", ")).into_bytes(),
                        entries: entries
                            .iter()
                            .map(|(ns, line)| EntryAdapter {
                                timestamp: Some(Timestamp {
                                    seconds: ns / 1_000_000_000,
                                    nanos: (ns % 1_000_000_000) as i32,
                                }),
                                line: line.as_bytes().to_vec(),
                                structured_metadata: vec![],
                                parsed: vec![],
                            })
                            .collect(),
                        hash: 0,
                    }
                })
                .collect();
            let pb = encode_protobuf(&PushRequest { streams });
            write(dir, &format!("{stem}.pb.snappy"), &pb);
            bytes[2] += pb.len();
        }
    }
    for (i, (dir, format)) in outputs.iter().enumerate() {
        if let Some(dir) = dir {
            meta["format"] = Value::from(*format);
            meta["bytes"] = Value::from(bytes[i]);
            write(dir, "meta.json", meta.to_string().as_bytes());
        }
    }
}
