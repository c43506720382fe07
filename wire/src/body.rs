//! Request body encodings: gzip, deflate and zstd, each bounded so that a small compressed body cannot
//! expand past the body limit.

use std::io::Read;

use bytes::Bytes;

use crate::WireError;

/// Decodes a body according to its `Content-Encoding` (absent, `identity`, `gzip`, `x-gzip`, `deflate`
/// or `zstd`).
///
/// # Errors
/// [`WireError::UnsupportedEncoding`] for other encodings, [`WireError::Compression`] for a corrupt body
/// and [`WireError::BodyTooLarge`] when it decompresses beyond `limit` bytes.
pub fn decode(encoding: Option<&str>, body: Bytes, limit: usize) -> Result<Bytes, WireError> {
    if body.len() > limit {
        return Err(WireError::BodyTooLarge { limit, decompressed: false });
    }
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip" | "x-gzip") => read_bounded(flate2::read::MultiGzDecoder::new(&body[..]), "gzip", limit),
        Some("deflate") => {
            // HTTP's deflate is zlib-wrapped; some clients send raw deflate, so fall back to it.
            read_bounded(flate2::read::ZlibDecoder::new(&body[..]), "deflate", limit)
                .or_else(|_| read_bounded(flate2::read::DeflateDecoder::new(&body[..]), "deflate", limit))
        }
        Some("zstd") => {
            let decoder = zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| WireError::Compression { encoding: "zstd", reason: e.to_string() })?;
            read_bounded(decoder, "zstd", limit)
        }
        Some(other) => Err(WireError::UnsupportedEncoding {
            encoding: other.to_string(),
            expected: "use gzip, deflate, zstd or none",
        }),
    }
}

fn read_bounded(reader: impl Read, encoding: &'static str, limit: usize) -> Result<Bytes, WireError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| WireError::Compression { encoding, reason: e.to_string() })?;
    if out.len() > limit {
        return Err(WireError::BodyTooLarge { limit, decompressed: true });
    }
    Ok(Bytes::from(out))
}

/// Decodes a snappy block (not framed) as Loki's protobuf push uses, bounded by `limit`.
pub fn snappy_block(body: &[u8], limit: usize) -> Result<Vec<u8>, WireError> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| WireError::Compression { encoding: "snappy", reason: e.to_string() })?;
    if len > limit {
        return Err(WireError::BodyTooLarge { limit, decompressed: true });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| WireError::Compression { encoding: "snappy", reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn gzip_and_zstd_round_trip_and_limits() {
        let data = b"hello world ".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        assert_eq!(decode(Some("gzip"), gz.clone(), 10_000).unwrap(), &data[..]);
        assert_eq!(
            decode(Some("gzip"), gz, 100).unwrap_err(),
            WireError::BodyTooLarge { limit: 100, decompressed: true }
        );
        let zs = Bytes::from(zstd::encode_all(&data[..], 1).unwrap());
        assert_eq!(decode(Some("zstd"), zs, 10_000).unwrap(), &data[..]);
        assert!(matches!(
            decode(Some("gzip"), Bytes::from_static(b"not gzip"), 100),
            Err(WireError::Compression { encoding: "gzip", .. })
        ));
        assert!(matches!(decode(Some("br"), Bytes::new(), 100), Err(WireError::UnsupportedEncoding { .. })));
    }

    #[test]
    fn snappy() {
        let data = b"abc".repeat(50);
        let block = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(snappy_block(&block, 1000).unwrap(), data);
        assert!(snappy_block(&block, 10).is_err());
        assert!(snappy_block(b"\xff\xff\xff\xff\xff", 1000).is_err());
    }
}
