//! Sparkplug B: `spBv1.0/<group>/<TYPE>/<edge_node>[/<device>]` topics with protobuf payloads.
//!
//! Births (NBIRTH, DBIRTH) declare each metric's name, alias and datatype; data messages (NDATA, DDATA) may
//! then name metrics by alias only, so the decoder keeps the births of every edge node and device. Deaths
//! (NDEATH, DDEATH) end the series of the node (and its devices) or of the device with Prometheus stale
//! markers. Each edge node numbers its messages 0..=255 (`seq`, wrapping); a skipped number is counted.

use std::collections::{HashMap, HashSet};
use std::mem;

use prost::Message as _;

use super::{Buffers, DecodeStats, Kind, Out, Outcome, Sink, metric_name, payload_line, push_metric_name, recycle};
use crate::sparkplug_b::DataType;
use crate::sparkplug_b::Payload;
use crate::sparkplug_b::payload::Metric;
use crate::sparkplug_b::payload::metric::Value;

/// The value Prometheus uses to mark a series as ended.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// The metric by which an edge node numbers its sessions (in NBIRTH and NDEATH).
const BD_SEQ: &str = "bdSeq";

/// One message for [`State::decode`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Message<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub received_ns: i64,
}

/// Label names that the Sparkplug topic sets (a template's static labels of these names are dropped).
pub(super) fn is_topic_label(name: &str) -> bool {
    matches!(name, "group" | "edge_node" | "device" | "host_id")
}

/// Sparkplug message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
    NCmd,
    DCmd,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "NBIRTH" => Type::NBirth,
            "NDEATH" => Type::NDeath,
            "DBIRTH" => Type::DBirth,
            "DDEATH" => Type::DDeath,
            "NDATA" => Type::NData,
            "DDATA" => Type::DData,
            "NCMD" => Type::NCmd,
            "DCMD" => Type::DCmd,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Type::NBirth => "NBIRTH",
            Type::NDeath => "NDEATH",
            Type::DBirth => "DBIRTH",
            Type::DDeath => "DDEATH",
            Type::NData => "NDATA",
            Type::DData => "DDATA",
            Type::NCmd => "NCMD",
            Type::DCmd => "DCMD",
        }
    }

    /// True for the types addressed to a device (their topic has a device level).
    fn is_device(self) -> bool {
        matches!(self, Type::DBirth | Type::DDeath | Type::DData | Type::DCmd)
    }
}

/// A parsed Sparkplug topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic<'a> {
    /// `spBv1.0/STATE/<host_id>`: a host application's state.
    State { host_id: &'a str },
    /// A message of or to an edge node or one of its devices.
    Edge(EdgeTopic<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EdgeTopic<'a> {
    kind: Type,
    group: &'a str,
    edge_node: &'a str,
    device: Option<&'a str>,
}

/// Parses a topic in the Sparkplug B namespace; the error says what is wrong with it.
fn parse_topic(topic: &str) -> Result<Topic<'_>, String> {
    let levels: [Option<&str>; 6] = {
        let mut it = topic.split('/');
        std::array::from_fn(|_| it.next())
    };
    let bad = |what: &str| format!("Sparkplug B topic {topic:?}: {what}");
    if levels[5].is_some() {
        return Err(bad("too many levels"));
    }
    let (Some(group), Some(kind)) = (levels[1], levels[2]) else {
        return Err(bad("expected spBv1.0/<group>/<type>/<edge_node>[/<device>]"));
    };
    if group == "STATE" {
        return match (kind, levels[3]) {
            ("", _) => Err(bad("empty host id")),
            (host_id, None) => Ok(Topic::State { host_id }),
            _ => Err(bad("expected spBv1.0/STATE/<host_id>")),
        };
    }
    let kind = Type::parse(kind).ok_or_else(|| bad(&format!("unknown message type {kind:?}")))?;
    let Some(edge_node) = levels[3] else {
        return Err(bad("no edge node id"));
    };
    let device = levels[4];
    match (kind.is_device(), device) {
        (true, None) => return Err(bad(&format!("{} needs a device id level", kind.as_str()))),
        (false, Some(_)) => return Err(bad(&format!("{} has no device id level", kind.as_str()))),
        _ => {}
    }
    if group.is_empty() || edge_node.is_empty() || device == Some("") {
        return Err(bad("empty id level"));
    }
    Ok(Topic::Edge(EdgeTopic { kind, group, edge_node, device }))
}

/// What a birth declared about an aliased metric.
#[derive(Debug)]
struct Birth {
    /// The name as in the payload.
    name: String,
    /// The name as a series name.
    series: String,
    datatype: Option<u32>,
}

/// The metrics of an edge node or device.
#[derive(Debug, Default)]
struct Table {
    /// Aliases declared by the last birth.
    aliases: HashMap<u64, Birth>,
    /// Series names sampled since the last death (they get stale markers at the next).
    series: HashSet<String>,
}

/// An edge node's state.
#[derive(Debug, Default)]
struct Node {
    /// `seq` of the node's last message.
    seq: Option<u8>,
    /// `bdSeq` of the last NBIRTH.
    bd_seq: Option<u64>,
    metrics: Table,
    devices: HashMap<String, Table>,
}

/// The births and sequence numbers of every edge node seen: group → edge node → state.
#[derive(Debug, Default)]
pub(super) struct State {
    groups: HashMap<String, HashMap<String, Node>>,
    /// Spare buffer for log fields.
    fields: Vec<(&'static str, &'static str)>,
}

impl State {
    /// Decodes one message whose topic is in the namespace. `labels` holds the template's static labels; the
    /// topic's labels are added to it.
    pub(super) fn decode<'a>(
        &mut self,
        msg: Message<'a>,
        labels: &mut Vec<(&'a str, &'a str)>,
        stats: &mut DecodeStats,
        sink: &mut dyn Sink,
        bufs: &mut Buffers,
    ) -> Outcome {
        let edge = match parse_topic(msg.topic) {
            Ok(Topic::Edge(edge)) => edge,
            Ok(Topic::State { host_id }) => {
                labels.push(("host_id", host_id));
                let mut out = Out::new(sink, bufs, msg.topic, msg.received_ns, labels);
                out.log(msg.received_ns, &payload_line(msg.payload), &[("type", "STATE")]);
                return Outcome::Decoded(Kind::Sparkplug);
            }
            Err(e) => {
                let mut out = Out::new(sink, bufs, msg.topic, msg.received_ns, labels);
                return out.garbage(msg.payload, "invalid_sparkplug", e);
            }
        };
        labels.push(("group", edge.group));
        labels.push(("edge_node", edge.edge_node));
        if let Some(device) = edge.device {
            labels.push(("device", device));
        }
        let mut out = Out::new(sink, bufs, msg.topic, msg.received_ns, labels);
        match Payload::decode(msg.payload) {
            Ok(payload) => self.handle(&edge, &payload, &mut out, stats),
            Err(e) => out.garbage(msg.payload, "invalid_protobuf", format!("invalid Sparkplug B protobuf: {e}")),
        }
    }

    /// Updates the state with a decoded message and emits what it holds.
    fn handle(
        &mut self,
        edge: &EdgeTopic<'_>,
        payload: &Payload,
        out: &mut Out<'_>,
        stats: &mut DecodeStats,
    ) -> Outcome {
        let node = get_or_default(get_or_default(&mut self.groups, edge.group), edge.edge_node);
        let mut em = Emitter { kind: edge.kind, payload, fields: recycle(mem::take(&mut self.fields)), stats };
        let outcome = match (edge.kind, edge.device) {
            (Type::NBirth, _) => em.node_birth(node, out),
            (Type::DBirth, Some(device)) => em.device_birth(node, device, out),
            (Type::NData | Type::DData, device) => em.data(node, device, out),
            (Type::NDeath, _) => em.node_death(node, out),
            (Type::DDeath, Some(device)) => em.device_death(node, device, out),
            (Type::NCmd | Type::DCmd, device) => {
                let device_aliases = device.and_then(|d| node.devices.get(d)).map(|t| &t.aliases);
                em.emit([device_aliases, Some(&node.metrics.aliases)], None, None, out)
            }
            (Type::DBirth | Type::DDeath, None) => unreachable!("parse_topic requires a device level"),
        };
        self.fields = recycle(em.fields);
        outcome
    }
}

/// The map's value for `key`, inserted as the default if missing (without allocating a key when present).
fn get_or_default<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("the key was just inserted")
}

/// Handles one decoded message.
struct Emitter<'p, 's> {
    kind: Type,
    payload: &'p Payload,
    /// Log fields of string metrics (borrowing names from the birth tables or the payload).
    fields: Vec<(&'p str, &'p str)>,
    stats: &'s mut DecodeStats,
}

impl<'p> Emitter<'p, '_> {
    fn node_birth(&mut self, node: &'p mut Node, out: &mut Out<'_>) -> Outcome {
        self.stats.sparkplug_births += 1;
        node.seq = self.payload.seq.map(wrap_seq);
        node.bd_seq = self.payload.metrics.iter().find(|m| m.name.as_deref() == Some(BD_SEQ)).and_then(integer);
        for device in node.devices.values_mut() {
            device.aliases.clear();
        }
        register(&mut node.metrics.aliases, self.payload);
        let Table { aliases, series } = &mut node.metrics;
        self.emit([Some(&*aliases), None], Some(series), None, out)
    }

    fn device_birth(&mut self, node: &'p mut Node, device: &str, out: &mut Out<'_>) -> Outcome {
        self.stats.sparkplug_births += 1;
        node.seq = self.payload.seq.map(wrap_seq).or(node.seq);
        let table = get_or_default(&mut node.devices, device);
        table.aliases.clear();
        register(&mut table.aliases, self.payload);
        let Table { aliases, series } = table;
        self.emit([Some(&*aliases), Some(&node.metrics.aliases)], Some(series), None, out)
    }

    fn data(&mut self, node: &'p mut Node, device: Option<&str>, out: &mut Out<'_>) -> Outcome {
        self.check_seq(node);
        let Node { metrics, devices, .. } = node;
        match device {
            None => self.emit([Some(&metrics.aliases), None], Some(&mut metrics.series), None, out),
            Some(d) => {
                let Table { aliases, series } = get_or_default(devices, d);
                self.emit([Some(&*aliases), Some(&metrics.aliases)], Some(series), None, out)
            }
        }
    }

    fn node_death(&mut self, node: &'p mut Node, out: &mut Out<'_>) -> Outcome {
        let death_bd_seq = self.payload.metrics.iter().find(|m| m.name.as_deref() == Some(BD_SEQ)).and_then(integer);
        if let (Some(birth), Some(death)) = (node.bd_seq, death_bd_seq)
            && birth != death
        {
            // The will of an earlier session, delivered after the node came back: the node is alive.
            let note = format!("ignored: bdSeq {death} is not the current session's {birth}");
            return self.emit([None, None], None, Some(&note), out);
        }
        self.stats.sparkplug_deaths += 1;
        let t_ms = self.payload_ms().unwrap_or(out.received_ms());
        for name in node.metrics.series.drain() {
            out.sample(&name, t_ms, f64::from_bits(STALE_NAN));
        }
        for (device, table) in &mut node.devices {
            for name in table.series.drain() {
                out.sample_with(
                    &[("device", device.as_str()), ("__name__", name.as_str())],
                    t_ms,
                    f64::from_bits(STALE_NAN),
                );
            }
        }
        self.emit([None, None], None, None, out)
    }

    fn device_death(&mut self, node: &'p mut Node, device: &str, out: &mut Out<'_>) -> Outcome {
        self.check_seq(node);
        self.stats.sparkplug_deaths += 1;
        let t_ms = self.payload_ms().unwrap_or(out.received_ms());
        if let Some(table) = node.devices.get_mut(device) {
            for name in table.series.drain() {
                out.sample(&name, t_ms, f64::from_bits(STALE_NAN));
            }
        }
        self.emit([None, None], None, None, out)
    }

    /// Counts a gap when the payload's `seq` does not follow the node's previous one.
    fn check_seq(&mut self, node: &mut Node) {
        let Some(seq) = self.payload.seq.map(wrap_seq) else { return };
        if node.seq.is_some_and(|prev| prev.wrapping_add(1) != seq) {
            self.stats.sparkplug_seq_gaps += 1;
        }
        node.seq = Some(seq);
    }

    /// The payload's timestamp in ms.
    fn payload_ms(&self) -> Option<i64> {
        self.payload.timestamp.and_then(|t| i64::try_from(t).ok())
    }

    /// Emits the payload's metrics (as samples into `series` when given, resolving aliases through `tables`
    /// in order) and the message's log entry; `note` is added as a log field.
    fn emit(
        &mut self,
        tables: [Option<&'p HashMap<u64, Birth>>; 2],
        mut series: Option<&mut HashSet<String>>,
        note: Option<&str>,
        out: &mut Out<'_>,
    ) -> Outcome {
        let payload: &'p Payload = self.payload;
        let payload_ms = self.payload_ms();
        let mut line = out.take_line();
        let mut name_buf = out.take_name();
        start_line(self.kind, payload.seq, &mut line);
        let mut first = true;
        let mut skipped = 0usize;
        let mut unknown: Option<String> = None;
        for metric in &payload.metrics {
            let Some(resolved) = resolve(metric, tables) else {
                self.unknown_alias(metric, &mut unknown, &mut skipped, out.topic);
                continue;
            };
            let value = value_of(metric, resolved.datatype);
            if matches!(value, Val::Skip) {
                skipped += 1;
                continue;
            }
            push_metric_json(resolved.name, &value, &mut first, &mut line);
            match value {
                Val::Num(num) => {
                    if let Some(set) = series.as_deref_mut() {
                        let t_ms = metric.timestamp.and_then(|t| i64::try_from(t).ok()).or(payload_ms);
                        let name = resolved.series_name(&mut name_buf);
                        if !set.contains(name) {
                            set.insert(name.to_owned());
                        }
                        out.sample(name, t_ms.unwrap_or(out.received_ms()), num.to_f64());
                    }
                }
                Val::Str(s) => self.fields.push((resolved.name, s)),
                Val::Null | Val::Skip => {}
            }
        }
        line.push_str("}}");
        let mut count = itoa::Buffer::new();
        let t_ns = payload_ms.and_then(|ms| ms.checked_mul(1_000_000)).unwrap_or(out.received_ns);
        // The string metrics are in `self.fields` already; the vector shortens its lifetime to take local ones.
        let mut fields: Vec<(&str, &str)> = mem::take(&mut self.fields);
        fields.insert(0, ("type", self.kind.as_str()));
        if skipped > 0 {
            fields.push(("skipped", count.format(skipped)));
        }
        if let Some(note) = note {
            fields.push(("note", note));
        }
        if let Some(e) = &unknown {
            fields.push(("error", e));
        }
        out.log(t_ns, &line, &fields);
        self.fields = recycle(fields);
        out.put_line(line);
        out.put_name(name_buf);
        match unknown {
            Some(detail) => Outcome::Garbage { reason: "unknown_alias", detail },
            None => Outcome::Decoded(Kind::Sparkplug),
        }
    }

    /// A metric that could not be resolved: an alias without birth is counted (in messages from the edge
    /// node) and reported; a metric with neither name nor alias is skipped.
    fn unknown_alias(&mut self, metric: &Metric, unknown: &mut Option<String>, skipped: &mut usize, topic: &str) {
        match metric.alias {
            Some(alias) if !matches!(self.kind, Type::NCmd | Type::DCmd) => {
                self.stats.sparkplug_unknown_aliases += 1;
                unknown.get_or_insert_with(|| format!("metric alias {alias} of {topic} was not declared by a birth"));
            }
            _ => *skipped += 1,
        }
    }
}

/// A message's `seq` (0..=255; larger values are taken mod 256).
fn wrap_seq(seq: u64) -> u8 {
    (seq % 256) as u8
}

/// Records the aliases a birth declares.
fn register(aliases: &mut HashMap<u64, Birth>, payload: &Payload) {
    for m in &payload.metrics {
        if let (Some(name), Some(alias)) = (&m.name, m.alias) {
            aliases.insert(alias, Birth { name: name.clone(), series: metric_name(name), datatype: m.datatype });
        }
    }
}

/// A metric's name and datatype, from itself or its birth.
struct Resolved<'p> {
    name: &'p str,
    /// The series name when the birth table has it ready.
    series: Option<&'p str>,
    datatype: Option<u32>,
}

impl<'p> Resolved<'p> {
    /// The series name, made in `buf` if not ready.
    fn series_name<'b>(&self, buf: &'b mut String) -> &'b str
    where
        'p: 'b,
    {
        match self.series {
            Some(s) => s,
            None => {
                buf.clear();
                push_metric_name(self.name, buf);
                buf
            }
        }
    }
}

/// Resolves a metric by its name, else by its alias through `tables`; `None` for an unknown alias.
fn resolve<'p>(metric: &'p Metric, tables: [Option<&'p HashMap<u64, Birth>>; 2]) -> Option<Resolved<'p>> {
    let birth = metric.alias.and_then(|a| tables.iter().flatten().find_map(|t| t.get(&a)));
    let datatype = metric.datatype.or(birth.and_then(|b| b.datatype));
    match (&metric.name, birth) {
        (Some(name), Some(b)) if *name == b.name => Some(Resolved { name, series: Some(&b.series), datatype }),
        (Some(name), _) => Some(Resolved { name, series: None, datatype }),
        (None, Some(b)) => Some(Resolved { name: &b.name, series: Some(&b.series), datatype }),
        (None, None) => None,
    }
}

/// A numeric metric value, kept in its own type so the log line shows it exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    UInt(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
}

impl Num {
    /// The sample value. A `Float` becomes the double of its shortest decimal form (0.1f32 → 0.1, not
    /// 0.10000000149011612), which is what the device meant.
    fn to_f64(self) -> f64 {
        match self {
            Num::Int(v) => v as f64,
            Num::UInt(v) => v as f64,
            Num::F32(v) if v.is_finite() => ryu::Buffer::new().format_finite(v).parse().unwrap_or(f64::from(v)),
            Num::F32(v) => f64::from(v),
            Num::F64(v) => v,
            Num::Bool(b) => f64::from(u8::from(b)),
        }
    }
}

/// What a metric's value is for us.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'p> {
    /// A sample.
    Num(Num),
    /// A log field.
    Str(&'p str),
    /// No value (`is_null` or none sent).
    Null,
    /// A type we do not keep (DataSet, Bytes, File, Template, arrays, ...).
    Skip,
}

/// Interprets a metric's value by its datatype (by the value's protobuf type when the datatype is unknown).
fn value_of(metric: &Metric, datatype: Option<u32>) -> Val<'_> {
    if metric.is_null == Some(true) {
        return Val::Null;
    }
    let Some(value) = &metric.value else { return Val::Null };
    let datatype = datatype.and_then(|d| DataType::try_from(i32::try_from(d).ok()?).ok()).unwrap_or(DataType::Unknown);
    use DataType as D;
    let num = match (datatype, value) {
        // Signed types arrive as two's complement in an unsigned field, sign-extended or not.
        (D::Int8, Value::IntValue(v)) => Num::Int(i64::from(*v as u8 as i8)),
        (D::Int16, Value::IntValue(v)) => Num::Int(i64::from(*v as u16 as i16)),
        (D::Int32, Value::IntValue(v)) => Num::Int(i64::from(*v as i32)),
        (D::Int8 | D::Int16 | D::Int32 | D::Int64, Value::LongValue(v)) => Num::Int(*v as i64),
        (D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 | D::DateTime | D::Unknown, Value::IntValue(v)) => {
            Num::UInt(u64::from(*v))
        }
        (D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 | D::DateTime | D::Unknown, Value::LongValue(v)) => Num::UInt(*v),
        (D::Float | D::Double | D::Unknown, Value::FloatValue(v)) => Num::F32(*v),
        (D::Float | D::Double | D::Unknown, Value::DoubleValue(v)) => Num::F64(*v),
        (D::Boolean | D::Unknown, Value::BooleanValue(b)) => Num::Bool(*b),
        (D::String | D::Text | D::Uuid | D::Unknown, Value::StringValue(s)) => return Val::Str(s),
        _ => return Val::Skip,
    };
    Val::Num(num)
}

/// Starts the log line: `{"type":"NDATA","seq":5,"metrics":{`.
fn start_line(kind: Type, seq: Option<u64>, line: &mut String) {
    line.push_str("{\"type\":\"");
    line.push_str(kind.as_str());
    line.push('"');
    if let Some(seq) = seq {
        line.push_str(",\"seq\":");
        line.push_str(itoa::Buffer::new().format(seq));
    }
    line.push_str(",\"metrics\":{");
}

/// Appends `"name":value` to the log line's metrics object.
fn push_metric_json(name: &str, value: &Val<'_>, first: &mut bool, line: &mut String) {
    if !mem::take(first) {
        line.push(',');
    }
    push_json_string(name, line);
    line.push(':');
    match *value {
        Val::Num(Num::Int(v)) => line.push_str(itoa::Buffer::new().format(v)),
        Val::Num(Num::UInt(v)) => line.push_str(itoa::Buffer::new().format(v)),
        Val::Num(Num::F32(v)) if v.is_finite() => line.push_str(ryu::Buffer::new().format_finite(v)),
        Val::Num(Num::F64(v)) if v.is_finite() => line.push_str(ryu::Buffer::new().format_finite(v)),
        Val::Num(Num::Bool(b)) => line.push_str(if b { "true" } else { "false" }),
        Val::Str(s) => push_json_string(s, line),
        // JSON has no NaN or infinities.
        Val::Num(_) | Val::Null | Val::Skip => line.push_str("null"),
    }
}

/// Appends `s` as a JSON string.
fn push_json_string(s: &str, line: &mut String) {
    line.push('"');
    for c in s.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                line.push_str("\\u00");
                line.push(char::from(b"0123456789abcdef"[(u32::from(c) >> 4) as usize]));
                line.push(char::from(b"0123456789abcdef"[(u32::from(c) & 15) as usize]));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// An integer metric value (for `bdSeq`).
fn integer(metric: &Metric) -> Option<u64> {
    match metric.value {
        Some(Value::IntValue(v)) => Some(u64::from(v)),
        Some(Value::LongValue(v)) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::decode::Decoder;
    use crate::decode::testing::{Collect, labels};
    use crate::topic::{Format, TemplateConfig};

    const NOW_NS: i64 = 1_700_000_000_000_000_000;
    const NOW_MS: i64 = 1_700_000_000_000;
    const T0: u64 = 1_690_000_000_000;

    fn metric(name: Option<&str>, alias: Option<u64>, datatype: DataType, value: Option<Value>) -> Metric {
        Metric { name: name.map(str::to_owned), alias, datatype: Some(datatype as u32), value, ..Metric::default() }
    }

    fn named(name: &str, alias: u64, datatype: DataType, value: Value) -> Metric {
        metric(Some(name), Some(alias), datatype, Some(value))
    }

    /// A data metric by alias only, without datatype (as devices send them).
    fn by_alias(alias: u64, value: Value) -> Metric {
        Metric { alias: Some(alias), value: Some(value), ..Metric::default() }
    }

    fn encode(timestamp: Option<u64>, seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload { timestamp, seq, metrics, ..Payload::default() }.encode_to_vec()
    }

    struct Harness {
        decoder: Decoder,
    }

    impl Harness {
        fn new() -> Harness {
            let template = TemplateConfig {
                topic: "spBv1.0/{group}/#".to_owned(),
                format: Format::Json,
                metric: None,
                labels: BTreeMap::from([
                    ("site".to_owned(), "north".to_owned()),
                    ("device".to_owned(), "x".to_owned()),
                ]),
            };
            Harness { decoder: Decoder::new(vec![template]).unwrap() }
        }

        fn send(&mut self, topic: &str, payload: &[u8]) -> (Outcome, Collect) {
            let mut sink = Collect::default();
            let outcome = self.decoder.decode(topic, payload, NOW_NS, &mut sink);
            (outcome, sink)
        }

        fn ok(&mut self, topic: &str, payload: &[u8]) -> Collect {
            let (outcome, sink) = self.send(topic, payload);
            assert_eq!(outcome, Outcome::Decoded(Kind::Sparkplug), "{topic}");
            sink
        }

        fn stats(&self) -> &DecodeStats {
            self.decoder.stats()
        }

        fn node_birth(&mut self, seq: u64, metrics: Vec<Metric>) -> Collect {
            self.ok("spBv1.0/plant/NBIRTH/edge1", &encode(Some(T0), Some(seq), metrics))
        }
    }

    fn stale(v: f64) -> bool {
        v.to_bits() == STALE_NAN
    }

    #[test]
    fn topics_parse() {
        let edge = |kind, device| Topic::Edge(EdgeTopic { kind, group: "g", edge_node: "e", device });
        assert_eq!(parse_topic("spBv1.0/g/NDATA/e"), Ok(edge(Type::NData, None)));
        assert_eq!(parse_topic("spBv1.0/g/DDATA/e/d"), Ok(edge(Type::DData, Some("d"))));
        assert_eq!(parse_topic("spBv1.0/STATE/host"), Ok(Topic::State { host_id: "host" }));
        let err = |t: &str| parse_topic(t).unwrap_err();
        assert!(err("spBv1.0/g/DDATA/e").contains("DDATA needs a device id level"));
        assert!(err("spBv1.0/g/NDATA/e/d").contains("NDATA has no device id level"));
        assert!(err("spBv1.0/g/NOPE/e").contains("unknown message type \"NOPE\""));
        assert!(err("spBv1.0/g/NDATA").contains("no edge node"));
        assert!(err("spBv1.0/g").contains("expected spBv1.0/<group>"));
        assert!(err("spBv1.0/g/DDATA/e/d/x").contains("too many levels"));
        assert!(err("spBv1.0//NDATA/e").contains("empty id level"));
    }

    #[test]
    fn node_birth_then_data_by_alias() {
        let mut h = Harness::new();
        let birth = h.node_birth(
            0,
            vec![
                named("Inputs/Temperature", 1, DataType::Double, Value::DoubleValue(21.5)),
                named("Pressure", 2, DataType::Float, Value::FloatValue(0.1)),
                named("bdSeq", 3, DataType::UInt64, Value::LongValue(7)),
            ],
        );
        assert_eq!(h.stats().sparkplug_births, 1);
        let t = birth.named("Inputs_Temperature");
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0].labels,
            labels(&[
                ("__name__", "Inputs_Temperature"),
                ("edge_node", "edge1"),
                ("group", "plant"),
                ("site", "north"),
                ("source", "mqtt")
            ])
        );
        assert_eq!((t[0].t_ms, t[0].value), (T0 as i64, 21.5));
        assert_eq!(birth.one("Pressure").1, 0.1);
        assert_eq!(birth.one("bdSeq").1, 7.0);
        assert_eq!(
            birth.log().line,
            r#"{"type":"NBIRTH","seq":0,"metrics":{"Inputs/Temperature":21.5,"Pressure":0.1,"bdSeq":7}}"#
        );

        let mut with_ts = by_alias(2, Value::FloatValue(1.25));
        with_ts.timestamp = Some(T0 + 5);
        let data = h.ok(
            "spBv1.0/plant/NDATA/edge1",
            &encode(None, Some(1), vec![by_alias(1, Value::DoubleValue(22.0)), with_ts]),
        );
        assert_eq!(data.one("Inputs_Temperature"), (NOW_MS, 22.0));
        assert_eq!(data.one("Pressure"), (T0 as i64 + 5, 1.25));
        let log = data.log();
        assert_eq!(log.line, r#"{"type":"NDATA","seq":1,"metrics":{"Inputs/Temperature":22.0,"Pressure":1.25}}"#);
        assert_eq!(log.t_ns, NOW_NS);
        assert_eq!(
            log.labels,
            labels(&[("edge_node", "edge1"), ("group", "plant"), ("site", "north"), ("source", "mqtt")])
        );
        assert_eq!(log.field("topic"), Some("spBv1.0/plant/NDATA/edge1"));
        assert_eq!(log.field("type"), Some("NDATA"));
        assert_eq!(h.stats().sparkplug_seq_gaps, 0);
        assert_eq!(h.stats().sparkplug_unknown_aliases, 0);
    }

    #[test]
    fn device_birth_and_data() {
        let mut h = Harness::new();
        h.node_birth(0, vec![named("Uptime", 1, DataType::UInt32, Value::IntValue(5))]);
        let birth = h.ok(
            "spBv1.0/plant/DBIRTH/edge1/pump",
            &encode(Some(T0), Some(1), vec![named("Speed", 10, DataType::Int32, Value::IntValue(-3i32 as u32))]),
        );
        let speed = birth.named("Speed");
        assert_eq!(speed[0].value, -3.0);
        assert!(speed[0].labels.contains(&("device".to_owned(), "pump".to_owned())));
        assert_eq!(h.stats().sparkplug_births, 2);
        // The device resolves its own aliases, then the node's.
        let data = h.ok(
            "spBv1.0/plant/DDATA/edge1/pump",
            &encode(Some(T0 + 1000), Some(2), vec![by_alias(10, Value::IntValue(4)), by_alias(1, Value::IntValue(6))]),
        );
        assert_eq!(data.one("Speed"), (T0 as i64 + 1000, 4.0));
        assert_eq!(data.one("Uptime").1, 6.0);
        assert!(data.samples.iter().all(|s| s.labels.contains(&("device".to_owned(), "pump".to_owned()))));
        assert_eq!(data.log().t_ns, (T0 as i64 + 1000) * 1_000_000);
        assert_eq!(data.log().line, r#"{"type":"DDATA","seq":2,"metrics":{"Speed":4,"Uptime":6}}"#);
        assert_eq!(h.stats().sparkplug_seq_gaps, 0);
    }

    #[test]
    fn rebirth_resets_aliases() {
        let mut h = Harness::new();
        h.node_birth(0, vec![named("Old", 1, DataType::Double, Value::DoubleValue(1.0))]);
        h.ok(
            "spBv1.0/plant/DBIRTH/edge1/pump",
            &encode(None, Some(1), vec![named("Flow", 5, DataType::Double, Value::DoubleValue(2.0))]),
        );
        h.node_birth(0, vec![named("New", 1, DataType::Double, Value::DoubleValue(1.0))]);
        let data =
            h.ok("spBv1.0/plant/NDATA/edge1", &encode(None, Some(1), vec![by_alias(1, Value::DoubleValue(3.0))]));
        assert_eq!(data.one("New").1, 3.0);
        assert!(data.named("Old").is_empty());
        // The device's aliases went with the node's rebirth.
        let (outcome, sink) = h
            .send("spBv1.0/plant/DDATA/edge1/pump", &encode(None, Some(2), vec![by_alias(5, Value::DoubleValue(4.0))]));
        assert!(matches!(outcome, Outcome::Garbage { reason: "unknown_alias", .. }), "{outcome:?}");
        assert!(sink.samples.is_empty());
        // A device rebirth replaces the device's aliases.
        h.ok(
            "spBv1.0/plant/DBIRTH/edge1/pump",
            &encode(None, Some(3), vec![named("Level", 5, DataType::Double, Value::DoubleValue(0.0))]),
        );
        let data =
            h.ok("spBv1.0/plant/DDATA/edge1/pump", &encode(None, Some(4), vec![by_alias(5, Value::DoubleValue(9.0))]));
        assert_eq!(data.one("Level").1, 9.0);
    }

    #[test]
    fn node_death_marks_node_and_device_series_stale() {
        let mut h = Harness::new();
        h.node_birth(
            0,
            vec![
                named("A", 1, DataType::Double, Value::DoubleValue(1.0)),
                named("bdSeq", 2, DataType::UInt64, Value::LongValue(3)),
            ],
        );
        h.ok(
            "spBv1.0/plant/DBIRTH/edge1/pump",
            &encode(None, Some(1), vec![named("B", 5, DataType::Double, Value::DoubleValue(2.0))]),
        );
        let death = h.ok(
            "spBv1.0/plant/NDEATH/edge1",
            &encode(Some(T0 + 9), None, vec![metric(Some("bdSeq"), None, DataType::UInt64, Some(Value::LongValue(3)))]),
        );
        assert_eq!(h.stats().sparkplug_deaths, 1);
        let mut got: Vec<(String, Option<String>)> = death
            .samples
            .iter()
            .map(|s| {
                assert!(stale(s.value), "{s:?}");
                assert_eq!(s.t_ms, T0 as i64 + 9);
                let get = |n: &str| s.labels.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                (get("__name__").unwrap(), get("device"))
            })
            .collect();
        got.sort();
        let want = vec![("A".to_owned(), None), ("B".to_owned(), Some("pump".to_owned())), ("bdSeq".to_owned(), None)];
        assert_eq!(got, want);
        assert_eq!(death.log().line, r#"{"type":"NDEATH","metrics":{"bdSeq":3}}"#);
        // The markers are sent once.
        let again = h.ok("spBv1.0/plant/NDEATH/edge1", &encode(None, None, vec![]));
        assert!(again.samples.is_empty());
    }

    #[test]
    fn device_death_marks_only_the_device_series_stale() {
        let mut h = Harness::new();
        h.node_birth(0, vec![named("A", 1, DataType::Double, Value::DoubleValue(1.0))]);
        h.ok(
            "spBv1.0/plant/DBIRTH/edge1/pump",
            &encode(None, Some(1), vec![named("B", 5, DataType::Double, Value::DoubleValue(2.0))]),
        );
        let death = h.ok("spBv1.0/plant/DDEATH/edge1/pump", &encode(None, Some(2), vec![]));
        assert_eq!(death.samples.len(), 1);
        let s = &death.samples[0];
        assert!(stale(s.value));
        assert_eq!(s.t_ms, NOW_MS);
        assert!(s.labels.contains(&("device".to_owned(), "pump".to_owned())));
        assert!(s.labels.contains(&("__name__".to_owned(), "B".to_owned())));
        assert_eq!(h.stats().sparkplug_deaths, 1);
    }

    #[test]
    fn death_of_an_earlier_session_is_ignored() {
        let mut h = Harness::new();
        h.node_birth(
            0,
            vec![
                named("A", 1, DataType::Double, Value::DoubleValue(1.0)),
                named("bdSeq", 2, DataType::UInt64, Value::LongValue(4)),
            ],
        );
        let bd3 = metric(Some("bdSeq"), None, DataType::UInt64, Some(Value::LongValue(3)));
        let death = h.ok("spBv1.0/plant/NDEATH/edge1", &encode(None, None, vec![bd3]));
        assert!(death.samples.is_empty());
        assert!(death.log().field("note").unwrap().contains("bdSeq 3"));
        assert_eq!(h.stats().sparkplug_deaths, 0);
    }

    #[test]
    fn unknown_alias_is_counted_and_reported() {
        let mut h = Harness::new();
        h.node_birth(0, vec![named("A", 1, DataType::Double, Value::DoubleValue(1.0))]);
        let payload = encode(
            None,
            Some(1),
            vec![
                by_alias(9, Value::DoubleValue(5.0)),
                by_alias(1, Value::DoubleValue(2.0)),
                by_alias(8, Value::DoubleValue(5.0)),
            ],
        );
        let (outcome, sink) = h.send("spBv1.0/plant/NDATA/edge1", &payload);
        let Outcome::Garbage { reason, detail } = outcome else { panic!("{outcome:?}") };
        assert_eq!(reason, "unknown_alias");
        assert_eq!(detail, "metric alias 9 of spBv1.0/plant/NDATA/edge1 was not declared by a birth");
        assert_eq!(sink.one("A").1, 2.0);
        assert_eq!(sink.samples.len(), 1);
        assert_eq!(sink.log().field("error"), Some(detail.as_str()));
        assert_eq!(sink.log().line, r#"{"type":"NDATA","seq":1,"metrics":{"A":2.0}}"#);
        assert_eq!(h.stats().sparkplug_unknown_aliases, 2);
    }

    #[test]
    fn seq_gaps_are_counted_across_node_and_devices_with_wrap() {
        let mut h = Harness::new();
        h.node_birth(254, vec![]);
        let data = |h: &mut Harness, seq: u64| h.ok("spBv1.0/plant/NDATA/edge1", &encode(None, Some(seq), vec![]));
        data(&mut h, 255);
        data(&mut h, 0);
        assert_eq!(h.stats().sparkplug_seq_gaps, 0, "255 → 0 wraps");
        data(&mut h, 2);
        assert_eq!(h.stats().sparkplug_seq_gaps, 1);
        // Births set the sequence without counting.
        h.ok("spBv1.0/plant/DBIRTH/edge1/pump", &encode(None, Some(7), vec![]));
        assert_eq!(h.stats().sparkplug_seq_gaps, 1);
        h.ok("spBv1.0/plant/DDATA/edge1/pump", &encode(None, Some(8), vec![]));
        data(&mut h, 9);
        assert_eq!(h.stats().sparkplug_seq_gaps, 1, "node and devices share the sequence");
        h.ok("spBv1.0/plant/DDATA/edge1/pump", &encode(None, Some(11), vec![]));
        assert_eq!(h.stats().sparkplug_seq_gaps, 2);
        // A rebirth restarts it.
        h.node_birth(0, vec![]);
        data(&mut h, 1);
        assert_eq!(h.stats().sparkplug_seq_gaps, 2);
        // Other nodes have their own.
        h.ok("spBv1.0/plant/NDATA/edge2", &encode(None, Some(100), vec![]));
        assert_eq!(h.stats().sparkplug_seq_gaps, 2);
    }

    #[test]
    fn truncated_protobuf_is_garbage() {
        let mut h = Harness::new();
        let mut payload =
            encode(Some(T0), Some(0), vec![named("Name", 1, DataType::String, Value::StringValue("long text".into()))]);
        payload.truncate(payload.len() - 3);
        let (outcome, sink) = h.send("spBv1.0/plant/NBIRTH/edge1", &payload);
        let Outcome::Garbage { reason, detail } = outcome else { panic!("{outcome:?}") };
        assert_eq!(reason, "invalid_protobuf");
        assert!(detail.starts_with("invalid Sparkplug B protobuf: "), "{detail}");
        assert!(sink.samples.is_empty());
        assert_eq!(sink.log().field("error"), Some(detail.as_str()));
        assert_eq!(h.stats().sparkplug_births, 0);
    }

    #[test]
    fn value_types() {
        let mut h = Harness::new();
        let mut null = named("Missing", 7, DataType::Double, Value::DoubleValue(0.0));
        null.is_null = Some(true);
        let birth = h.node_birth(
            0,
            vec![
                named("Status", 1, DataType::String, Value::StringValue("ok \"fine\"".into())),
                named("Serial", 2, DataType::Uuid, Value::StringValue("1b4e28ba".into())),
                named("I8", 3, DataType::Int8, Value::IntValue(0xff)),
                named("I16", 4, DataType::Int16, Value::IntValue(0xffff_fffe)),
                named("I64", 5, DataType::Int64, Value::LongValue(-5i64 as u64)),
                named("On", 6, DataType::Boolean, Value::BooleanValue(true)),
                null,
                named("When", 8, DataType::DateTime, Value::LongValue(T0)),
                named("Blob", 9, DataType::Bytes, Value::BytesValue(vec![1, 2])),
                named("U64", 10, DataType::UInt64, Value::LongValue(u64::MAX)),
            ],
        );
        assert_eq!(birth.one("I8").1, -1.0);
        assert_eq!(birth.one("I16").1, -2.0);
        assert_eq!(birth.one("I64").1, -5.0);
        assert_eq!(birth.one("On").1, 1.0);
        assert_eq!(birth.one("When").1, T0 as f64);
        assert_eq!(birth.one("U64").1, u64::MAX as f64);
        assert_eq!(birth.samples.len(), 6, "strings, nulls and bytes are no samples");
        let log = birth.log();
        assert_eq!(log.field("Status"), Some("ok \"fine\""));
        assert_eq!(log.field("Serial"), Some("1b4e28ba"));
        assert_eq!(log.field("skipped"), Some("1"));
        assert_eq!(
            log.line,
            concat!(
                r#"{"type":"NBIRTH","seq":0,"metrics":{"Status":"ok \"fine\"","Serial":"1b4e28ba","I8":-1,"I16":-2,"#,
                r#""I64":-5,"On":true,"Missing":null,"When":1690000000000,"U64":18446744073709551615}}"#
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&log.line).unwrap();
        assert_eq!(parsed["metrics"]["Status"], "ok \"fine\"");
        // Data by alias takes the birth's datatype.
        let data = h.ok("spBv1.0/plant/NDATA/edge1", &encode(None, Some(1), vec![by_alias(3, Value::IntValue(0xfe))]));
        assert_eq!(data.one("I8").1, -2.0);
    }

    #[test]
    fn state_and_commands_are_log_entries_only() {
        let mut h = Harness::new();
        let sink = h.ok("spBv1.0/STATE/scada1", br#"{"online":true,"timestamp":1}"#);
        assert!(sink.samples.is_empty());
        assert_eq!(sink.log().line, r#"{"online":true,"timestamp":1}"#);
        assert_eq!(sink.log().field("type"), Some("STATE"));
        assert!(sink.log().labels.contains(&("host_id".to_owned(), "scada1".to_owned())));
        h.node_birth(0, vec![named("Rebirth", 1, DataType::Boolean, Value::BooleanValue(false))]);
        let cmd = h.ok("spBv1.0/plant/NCMD/edge1", &encode(None, None, vec![by_alias(1, Value::BooleanValue(true))]));
        assert!(cmd.samples.is_empty());
        assert_eq!(cmd.log().line, r#"{"type":"NCMD","metrics":{"Rebirth":true}}"#);
        assert_eq!(h.stats().sparkplug_seq_gaps, 0);
    }

    #[test]
    fn namespace_wins_over_template_format_and_captures() {
        let mut h = Harness::new();
        // The template says json and captures {group}; Sparkplug decoding and its labels apply, the static
        // `device` label is dropped in favour of the topic's.
        let sink = h.ok(
            "spBv1.0/plant/DBIRTH/edge1/pump",
            &encode(None, Some(0), vec![named("B", 5, DataType::Double, Value::DoubleValue(2.0))]),
        );
        assert_eq!(
            sink.samples[0].labels,
            labels(&[
                ("__name__", "B"),
                ("device", "pump"),
                ("edge_node", "edge1"),
                ("group", "plant"),
                ("site", "north"),
                ("source", "mqtt")
            ])
        );
        // Without a matching template there are no static labels.
        let mut bare = Decoder::new(vec![]).unwrap();
        let mut sink = Collect::default();
        let payload = encode(None, Some(0), vec![named("A", 1, DataType::Double, Value::DoubleValue(1.0))]);
        bare.decode("spBv1.0/g/NBIRTH/e", &payload, NOW_NS, &mut sink);
        assert_eq!(
            sink.samples[0].labels,
            labels(&[("__name__", "A"), ("edge_node", "e"), ("group", "g"), ("source", "mqtt")])
        );
        // A bad topic in the namespace is garbage with a log entry.
        let (outcome, sink) = h.send("spBv1.0/plant/BOGUS/edge1", b"x");
        assert!(matches!(outcome, Outcome::Garbage { reason: "invalid_sparkplug", .. }), "{outcome:?}");
        assert_eq!(sink.log().line, "x");
        assert_eq!(sink.log().labels, labels(&[("site", "north"), ("source", "mqtt")]));
    }
}
