import { describe, expect, it } from "vitest";
import type { Series } from "../api";
import { deviceLogQuery, deviceSeenSql, groupDevices, lastSeenText } from "./Devices";
import { numericLeaves } from "./Status";
import { levelOf, seriesToChart, toEntries } from "./Logs";

describe("groupDevices", () => {
  const latest: Series[] = [
    { metric: { __name__: "temperature", source: "mqtt", site: "berlin", device: "d1" }, value: [100, "21.5"] as [number, string] },
    { metric: { __name__: "humidity", source: "mqtt", site: "berlin", device: "d1" }, value: [100, "40"] as [number, string] },
    { metric: { __name__: "temperature", source: "mqtt", site: "paris", device: "d2" }, value: [100, "18"] as [number, string] },
    // Sparkplug: the edge node's own metrics, and a device of it
    { metric: { __name__: "Node_Uptime", source: "mqtt", group: "plant", edge_node: "e1" }, value: [100, "65"] as [number, string] },
    { metric: { __name__: "Inputs_Pressure", source: "mqtt", group: "plant", edge_node: "e1", device: "pump7" }, value: [100, "2.75"] as [number, string] },
  ];

  it("groups series by labels without __name__ and takes the exact newest sample time", () => {
    // max without () (timestamp(...)): no __name__, one per device, seconds with a millisecond fraction
    const seen: Series[] = [
      { metric: { source: "mqtt", site: "berlin", device: "d1" }, value: [100, "95.123"] as [number, string] },
      { metric: { source: "mqtt", site: "paris", device: "d2" }, value: [100, "1733490000.007"] as [number, string] },
      { metric: { source: "mqtt", group: "plant", edge_node: "e1" }, value: [100, "90.5"] as [number, string] },
      { metric: { source: "mqtt", group: "plant", edge_node: "e1", device: "pump7" }, value: [100, "99.999"] as [number, string] },
      // a device the latest values do not know is left out
      { metric: { source: "mqtt", device: "gone" }, value: [100, "99"] as [number, string] },
    ];
    const d = groupDevices(latest, seen);
    expect(d.map((x) => x.labels)).toEqual([
      { site: "paris", device: "d2" },
      { group: "plant", edge_node: "e1", device: "pump7" },
      { site: "berlin", device: "d1" },
      { group: "plant", edge_node: "e1" },
    ]);
    expect(d.map((x) => x.lastSeen)).toEqual([1_733_490_000_007, 99_999, 95_123, 90_500]);
    expect(d.every((x) => !x.approx)).toBe(true);
    expect(d[2].values).toEqual({ temperature: 21.5, humidity: 40 });
    expect(d[1].values).toEqual({ Inputs_Pressure: 2.75 });
    expect(lastSeenText(d[2], 95_123 + 61_500)).toBe("1m1s ago");
  });

  it("falls back to the last minute with samples only for devices without an exact time", () => {
    const seen: Series[] = [{ metric: { source: "mqtt", site: "berlin", device: "d1" }, value: [200, "95"] as [number, string] }];
    const buckets: Series[] = [
      { metric: { lumen_ui_metric: "temperature", source: "mqtt", site: "paris", device: "d2" }, values: [[60, "1"], [120, "2"], [180, "0"]] as [number, string][] },
      // an exact time is not replaced by a bucket's end
      { metric: { lumen_ui_metric: "humidity", source: "mqtt", site: "berlin", device: "d1" }, values: [[120, "1"]] as [number, string][] },
    ];
    const d = groupDevices(latest, seen, buckets);
    const by = (dev: string) => d.find((x) => x.labels.device === dev)!;
    expect(by("d1").lastSeen).toBe(95_000);
    expect(by("d1").approx).toBeFalsy();
    expect(by("d2").lastSeen).toBe(120_000);
    expect(by("d2").approx).toBe(true);
    expect(lastSeenText(by("d2"), 200_000)).toBe("~1m ago");
    expect(lastSeenText(by("pump7"), 200_000)).toBe("?");
  });
});

describe("deviceSeenSql", () => {
  it("matches exactly the device's labels, pushed down as equalities, and no other MQTT label", () => {
    expect(deviceSeenSql({ group: "plant", edge_node: "e'1", device: "pump7" }, ["__name__", "source", "group", "edge_node", "device", "site", "time", "site"])).toBe(
      "SELECT max(time) AS t FROM samples WHERE source = 'mqtt' AND time > now() - INTERVAL '24 hours' AND \"device\" = 'pump7' AND \"edge_node\" = 'e''1' AND \"group\" = 'plant' AND \"site\" IS NULL AND \"time_label\" IS NULL",
    );
  });
});

describe("deviceLogQuery", () => {
  it("puts template labels in the selector and the topic in a label filter", () => {
    expect(deviceLogQuery({ site: "berlin", device: "d1" })).toBe('{source="mqtt", device="d1", site="berlin"}');
    expect(deviceLogQuery({ topic: 'plant/"1"' })).toBe('{source="mqtt"} | topic="plant/\\"1\\""');
  });
});

describe("numericLeaves", () => {
  it("flattens numbers by path", () => {
    expect(numericLeaves({ lines: { loki: 10, jsonline: 0 }, samples: { remote_write: 5 }, x: "s", y: null })).toEqual({
      "lines.loki": 10,
      "lines.jsonline": 0,
      "samples.remote_write": 5,
    });
  });
});

describe("seriesToChart", () => {
  it("aligns series on the union of timestamps", () => {
    const c = seriesToChart([
      { metric: { a: "1" }, values: [[1, "1"], [3, "3"]] },
      { metric: { a: "2" }, values: [[2, "2"], [3, "NaN"]] },
    ]);
    expect(c.data).toEqual([[1, 2, 3], [1, null, 3], [null, 2, null]]);
    expect(c.series.map((s) => s.label)).toEqual(['{a="1"}', '{a="2"}']);
  });
});

describe("toEntries", () => {
  it("keeps stream labels apart from structured metadata and parsed fields, newest first", () => {
    const es = toEntries([
      {
        stream: { app: "a" },
        values: [
          ["1000000000", "old"],
          ["2000000000", "level=error user=ann", { structuredMetadata: { trace_id: "t1" }, parsed: { level: "error", user: "ann" } }],
        ],
      },
    ]);
    expect(es.map((e) => e.line)).toEqual(["level=error user=ann", "old"]);
    expect(es[0].labels).toEqual({ app: "a" });
    expect(es[0].fields).toEqual({ trace_id: "t1", level: "error", user: "ann" });
    expect(es[1].fields).toEqual({});
    expect(levelOf(es[0])).toBe("error");
    expect(es[0].ms).toBe(2000);
  });
});
