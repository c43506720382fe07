import { describe, expect, it } from "vitest";
import { completions, fieldPosition, metricPosition } from "./suggest";

const at = (f: typeof fieldPosition, s: string) => f(s.replace("|^|", ""), s.indexOf("|^|"));

describe("where a LogQL query takes a parsed field name", () => {
  it("after a pipe, in by/without, after unwrap, drop and keep", () => {
    expect(at(fieldPosition, '{app="x"} | json | us|^|')).toEqual({ from: 19, part: "us" });
    expect(at(fieldPosition, '{app="x"} | logfmt | |^|')).toEqual({ from: 21, part: "" });
    expect(at(fieldPosition, 'sum by (host, |^|) (count_over_time({app="x"} | json [5m]))')).toBeNull(); // no selector before the caret
    expect(at(fieldPosition, 'sum(count_over_time({app="x"} | json [5m])) by (host, le|^|')?.part).toBe("le");
    expect(at(fieldPosition, '{app="x"} | logfmt | unwrap dur|^|')?.part).toBe("dur");
    expect(at(fieldPosition, '{app="x"} | logfmt | drop a, b|^|')?.part).toBe("b");
  });
  it("nowhere else", () => {
    expect(at(fieldPosition, '{app="x|^|"}')).toBeNull();
    expect(at(fieldPosition, '{app="x"} |= "us|^|')).toBeNull();
    expect(at(fieldPosition, '{app="x"} |= us|^|')).toBeNull();
    expect(at(fieldPosition, '{app="x"} | json | user="a" or|^|')).toBeNull();
  });
});

describe("where a PromQL query takes a metric name", () => {
  it("a name typed outside selectors, strings, ranges and grouping", () => {
    expect(at(metricPosition, "up|^|")).toEqual({ from: 0, part: "up" });
    expect(at(metricPosition, "rate(http_req|^|")).toEqual({ from: 5, part: "http_req" });
    expect(at(metricPosition, "a / node:cp|^|")).toEqual({ from: 4, part: "node:cp" });
    expect(at(metricPosition, "|^|")).toBeNull();
    expect(at(metricPosition, 'up{job="a|^|')).toBeNull();
    expect(at(metricPosition, "rate(x[5m|^|")).toBeNull();
    expect(at(metricPosition, "sum by (inst|^|")).toBeNull();
  });
  it("completes with the names that continue what was typed", () => {
    expect(completions(["up", "upstream_total", "down"], "up")).toEqual(["upstream_total"]);
  });
});
