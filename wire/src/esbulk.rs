//! Elasticsearch bulk (`/insert/elasticsearch/_bulk`): NDJSON pairs of an action line and a document.
//! `create` and `index` store the document (`@timestamp` and `message` by default); `delete` and
//! `update` are answered per item as unsupported, so a shipper sees which of its actions did not apply.

use serde_json::Value;

use crate::flatten::{Pair, flatten_object};
use crate::jsonline::DocSink;
use crate::{Decoded, FieldMapping, Limits, RejectReason, WireError, lossy_utf8};

/// One action of the request, for the bulk response's `items`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkItem {
    /// The action's name as sent (`create`, `index`, ...), which keys its item in the response.
    pub action: String,
    /// The `_index` of the action line, echoed back.
    pub index: Option<String>,
}

/// Decodes a bulk body. The `index`-th entry of [`Decoded`] (accepted or rejected) is the `index`-th
/// [`BulkItem`].
///
/// # Errors
/// A line that is not JSON, an action line that names no action, or an action without its document fails
/// the whole request with its line number.
pub fn decode(
    body: &[u8],
    mapping: &FieldMapping,
    limits: Limits,
    received_ns: i64,
) -> Result<(Decoded, Vec<BulkItem>), WireError> {
    let mut sink = DocSink::new(mapping, limits, received_ns);
    let mut items = Vec::new();
    let mut invalid_utf8 = false;
    let text = lossy_utf8(body, &mut invalid_utf8);
    let mut lines = text.split('\n').enumerate().filter(|(_, l)| !l.trim().is_empty());
    let mut pairs: Vec<Pair<'_>> = Vec::with_capacity(16);
    while let Some((n, action_line)) = lines.next() {
        let bulk_err = |reason: String| WireError::Bulk { line: n + 1, reason };
        let action: Value = serde_json::from_str(action_line.trim()).map_err(|e| WireError::Json {
            line: n + 1,
            column: e.column(),
            reason: e.to_string(),
        })?;
        let Some((name, meta)) = action.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
            return Err(bulk_err("expected an action line such as {\"create\":{}}".to_string()));
        };
        let item =
            BulkItem { action: name.clone(), index: meta.get("_index").and_then(Value::as_str).map(String::from) };
        let index = items.len();
        items.push(item);
        sink.decoded.total += 1;
        match name.as_str() {
            "create" | "index" => {
                let Some((m, doc)) = lines.next() else {
                    return Err(bulk_err(format!("{name} action has no document line after it")));
                };
                pairs.clear();
                flatten_object(doc.trim(), &mut pairs).map_err(|e| WireError::Json {
                    line: m + 1,
                    column: e.column(),
                    reason: e.to_string(),
                })?;
                sink.add(index, &mut pairs, || format!("line {}", m + 1))?;
            }
            "update" => {
                lines.next();
                sink.decoded.reject(index, 0, RejectReason::UnsupportedAction { action: name.clone() });
            }
            "delete" => {
                sink.decoded.reject(index, 0, RejectReason::UnsupportedAction { action: name.clone() });
            }
            other => return Err(bulk_err(format!("unknown bulk action {other:?}"))),
        }
    }
    sink.decoded.invalid_utf8 = invalid_utf8;
    Ok((sink.decoded, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> FieldMapping {
        FieldMapping::from_params(None, None, Some("host"), None, "@timestamp", "message")
    }

    #[test]
    fn decodes_create_and_index_and_answers_others_per_item() {
        let body = concat!(
            "{\"create\":{\"_index\":\"logs\"}}\n",
            "{\"@timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"one\",\"host\":\"h1\",\"level\":\"info\"}\n",
            "{\"delete\":{\"_id\":\"1\"}}\n",
            "{\"index\":{}}\n",
            "{\"@timestamp\":1704067200000,\"message\":\"two\",\"host\":\"h1\"}\n",
            "{\"update\":{\"_id\":\"2\"}}\n",
            "{\"doc\":{}}\n",
        );
        let (d, items) = decode(body.as_bytes(), &mapping(), Limits::default(), 0).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].index.as_deref(), Some("logs"));
        assert_eq!(d.total, 4);
        assert_eq!(d.batch.entries.len(), 2);
        assert_eq!(d.batch.entries[1].time_ns, 1_704_067_200_000_000_000);
        assert_eq!(d.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(d.batch.entries[0].fields, vec![("level".to_string(), "info".to_string())]);
    }

    #[test]
    fn malformed_bodies_fail_with_their_line() {
        let err = decode(b"{\"create\":{}}\n{bad json}\n", &mapping(), Limits::default(), 0).unwrap_err();
        assert!(matches!(err, WireError::Json { line: 2, .. }), "{err:?}");
        let err = decode(b"{\"create\":{}}\n", &mapping(), Limits::default(), 0).unwrap_err();
        assert!(err.to_string().contains("no document line"), "{err}");
        let err = decode(b"{\"frobnicate\":{}}\n{}\n", &mapping(), Limits::default(), 0).unwrap_err();
        assert!(err.to_string().contains("unknown bulk action"), "{err}");
    }
}
