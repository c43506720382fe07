import { describe, expect, it } from "vitest";
import { deviceLogQuery, groupDevices } from "./Devices";
import { numericLeaves } from "./Status";
import { levelOf, seriesToChart, toEntries } from "./Logs";

describe("groupDevices", () => {
  it("groups series by labels without __name__ and reads last seen", () => {
    const latest = [
      { metric: { __name__: "temperature", source: "mqtt", site: "berlin", device: "d1" }, value: [100, "21.5"] as [number, string] },
      { metric: { __name__: "humidity", source: "mqtt", site: "berlin", device: "d1" }, value: [100, "40"] as [number, string] },
      { metric: { __name__: "temperature", source: "mqtt", site: "paris", device: "d2" }, value: [100, "18"] as [number, string] },
    ];
    const stamps = [
      { metric: { lumen_ui_metric: "temperature", source: "mqtt", site: "berlin", device: "d1" }, value: [100, "90.5"] as [number, string] },
      { metric: { lumen_ui_metric: "humidity", source: "mqtt", site: "berlin", device: "d1" }, value: [100, "95"] as [number, string] },
      // the evaluation time is not a sample time
      { metric: { lumen_ui_metric: "temperature", source: "mqtt", site: "paris", device: "d2" }, value: [100, "100"] as [number, string] },
      // a range answer: the last step with samples
      { metric: { lumen_ui_metric: "temperature", source: "mqtt", site: "paris", device: "d2" }, values: [[60, "1"], [80, "2"], [99, "0"]] as [number, string][] },
      // an exact time is not replaced by a bucket's end
      { metric: { lumen_ui_metric: "humidity", source: "mqtt", site: "berlin", device: "d1" }, values: [[120, "1"]] as [number, string][] },
    ];
    const d = groupDevices(latest, stamps);
    expect(d).toHaveLength(2);
    expect(d[0].labels).toEqual({ site: "berlin", device: "d1" });
    expect(d[0].values).toEqual({ temperature: 21.5, humidity: 40 });
    expect(d[0].lastSeen).toBe(95_000);
    expect(d[0].approx).toBeFalsy();
    expect(d[1].lastSeen).toBe(80_000);
    expect(d[1].approx).toBe(true);
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
