import { describe, expect, it } from "vitest";
import { ago, filterGroups, fmtSeconds, fmtValue, groupsOf, parseValue, sortAlerts, sortRules, summarize, type Group, type Rule } from "./rules";

const alerting = (name: string, state: string, extra: Partial<Rule> = {}): Rule => ({
  type: "alerting",
  name,
  query: "vector(1)",
  state,
  duration: 0,
  labels: {},
  annotations: {},
  alerts: [],
  health: "ok",
  ...extra,
});
const recording = (name: string, extra: Partial<Rule> = {}): Rule => ({ type: "recording", name, query: "vector(42)", labels: {}, health: "ok", ...extra });

// The shapes the server answers with (Prometheus' JSON).
const promAnswer = {
  status: "success",
  data: {
    groups: [
      {
        name: "ui-rules",
        file: "/etc/rules.yaml",
        interval: 1,
        limit: 0,
        evaluationTime: 0.0002,
        lastEvaluation: "2026-01-02T10:00:00Z",
        rules: [
          recording("ui:answer"),
          alerting("UiNever", "inactive"),
          alerting("UiPending", "pending", {
            duration: 3600,
            alerts: [{ labels: { alertname: "UiPending" }, annotations: {}, state: "pending", activeAt: "2026-01-02T09:59:00Z", value: "2e+00" }],
          }),
          alerting("UiAlwaysFiring", "firing", {
            labels: { severity: "page" },
            annotations: { summary: "always firing" },
            alerts: [
              {
                labels: { alertname: "UiAlwaysFiring", severity: "page" },
                annotations: { summary: "always firing" },
                state: "firing",
                activeAt: "2026-01-02T09:58:00Z",
                value: "1e+00",
              },
            ],
          }),
          alerting("Broken", "inactive", { health: "err", lastError: "bad query" }),
        ],
      },
    ],
  },
};
const lokiAnswer = {
  status: "success",
  data: {
    groups: [
      {
        name: "ui-logs",
        file: "fake/loghub.yaml",
        interval: 1,
        lastEvaluation: "0001-01-01T00:00:00Z",
        rules: [
          alerting("UiLoghubErrors", "firing", {
            alerts: [
              { labels: { alertname: "UiLoghubErrors", app: "zookeeper" }, annotations: {}, state: "firing", activeAt: "2026-01-02T09:58:00Z", value: "3e+00" },
              { labels: { alertname: "UiLoghubErrors", app: "apache" }, annotations: {}, state: "firing", activeAt: "2026-01-02T09:58:00Z", value: "1.5e+01" },
            ],
          }),
        ],
      },
    ],
  },
};
const groups: Group[] = [...groupsOf(lokiAnswer, "logql"), ...groupsOf(promAnswer, "promql")];
const names = (gs: Group[]) => gs.map((g) => `${g.lang}:${g.name}: ${g.rules.map((r) => r.name).join(" ")}`);

describe("rules answers", () => {
  it("tags groups with their language and tolerates odd answers", () => {
    expect(groups.map((g) => [g.lang, g.name])).toEqual([
      ["logql", "ui-logs"],
      ["promql", "ui-rules"],
    ]);
    expect(groupsOf({ status: "success", data: { groups: [] } }, "promql")).toEqual([]);
    expect(groupsOf(undefined, "promql")).toEqual([]);
    expect(groupsOf({ data: { groups: [{ name: "g", file: "f", interval: 60, rules: null }] } }, "logql")[0].rules).toEqual([]);
  });

  it("summarizes states across both languages", () => {
    expect(summarize(groups)).toEqual({ groups: 2, rules: 6, firing: 2, pending: 1, inactive: 2, recording: 1, error: 1 });
    expect(summarize([])).toEqual({ groups: 0, rules: 0, firing: 0, pending: 0, inactive: 0, recording: 0, error: 0 });
  });
});

describe("sorting", () => {
  it("puts firing rules first, then pending, then the rest by name", () => {
    const r = sortRules([recording("b:rec"), alerting("Zed", "firing"), alerting("Alpha", "inactive"), alerting("Mid", "pending"), alerting("Abc", "firing")]);
    expect(r.map((x) => x.name)).toEqual(["Abc", "Zed", "Mid", "Alpha", "b:rec"]);
  });
  it("orders groups by language, file and name, and alerts firing first then by labels", () => {
    expect(names(filterGroups(groups, "", "all"))).toEqual([
      "promql:ui-rules: UiAlwaysFiring UiPending Broken ui:answer UiNever",
      "logql:ui-logs: UiLoghubErrors",
    ]);
    const a = sortAlerts([
      { labels: { app: "b" }, annotations: {}, state: "pending", activeAt: "", value: "1" },
      { labels: { app: "c" }, annotations: {}, state: "firing", activeAt: "", value: "1" },
      { labels: { app: "a" }, annotations: {}, state: "firing", activeAt: "", value: "1" },
    ]);
    expect(a.map((x) => x.labels.app)).toEqual(["a", "c", "b"]);
  });
});

describe("filtering", () => {
  it("filters by state, errors included", () => {
    expect(names(filterGroups(groups, "", "firing"))).toEqual(["promql:ui-rules: UiAlwaysFiring", "logql:ui-logs: UiLoghubErrors"]);
    expect(names(filterGroups(groups, "", "pending"))).toEqual(["promql:ui-rules: UiPending"]);
    expect(names(filterGroups(groups, "", "inactive"))).toEqual(["promql:ui-rules: Broken UiNever"]);
    expect(names(filterGroups(groups, "", "recording"))).toEqual(["promql:ui-rules: ui:answer"]);
    expect(names(filterGroups(groups, "", "error"))).toEqual(["promql:ui-rules: Broken"]);
  });
  it("matches rule names, group names and label values, case-insensitively", () => {
    expect(names(filterGroups(groups, "uipend", "all"))).toEqual(["promql:ui-rules: UiPending"]);
    // the group's name: all its rules
    expect(names(filterGroups(groups, "UI-LOGS", "all"))).toEqual(["logql:ui-logs: UiLoghubErrors"]);
    // a rule label's value
    expect(names(filterGroups(groups, "page", "all"))).toEqual(["promql:ui-rules: UiAlwaysFiring"]);
    // an active alert's label value
    expect(names(filterGroups(groups, "zookeeper", "all"))).toEqual(["logql:ui-logs: UiLoghubErrors"]);
    // text and state together
    expect(names(filterGroups(groups, "ui-rules", "pending"))).toEqual(["promql:ui-rules: UiPending"]);
    expect(filterGroups(groups, "nothing-like-this", "all")).toEqual([]);
  });
  it("keeps groups without rules when nothing filters", () => {
    const empty: Group = { lang: "promql", name: "empty", file: "f", interval: 60, rules: [] };
    expect(filterGroups([empty], "", "all")).toHaveLength(1);
    expect(filterGroups([empty], "", "firing")).toHaveLength(0);
  });
});

describe("values and times", () => {
  it("parses Go's float format", () => {
    expect(parseValue("1e+00")).toBe(1);
    expect(parseValue("1.5e+01")).toBe(15);
    expect(parseValue("-2.5e-03")).toBe(-0.0025);
    expect(parseValue("+Inf")).toBe(Infinity);
    expect(parseValue("-Inf")).toBe(-Infinity);
    expect(parseValue("NaN")).toBeNaN();
    expect(parseValue("")).toBeNaN();
    expect(parseValue(7)).toBe(7);
    expect([fmtValue("1e+00"), fmtValue("1.2345e+04"), fmtValue("+Inf"), fmtValue("NaN")]).toEqual(["1", "12,345", "+Inf", "NaN"]);
  });
  it("says how long ago, and never for Go's zero time", () => {
    const now = Date.parse("2026-01-02T10:00:00Z");
    expect(ago("2026-01-02T09:58:55.5Z", now)).toBe("1m4s ago");
    expect(ago("2026-01-02T10:00:00Z", now)).toBe("just now");
    expect(ago("2026-01-02T10:00:05Z", now)).toBe("just now");
    expect(ago("0001-01-01T00:00:00Z", now)).toBe("never");
    expect(ago(undefined, now)).toBe("never");
  });
  it("formats seconds", () => {
    expect([fmtSeconds(3600), fmtSeconds(1), fmtSeconds(0), fmtSeconds(0.012), fmtSeconds(0.0002), fmtSeconds(undefined)]).toEqual([
      "1h",
      "1s",
      "0s",
      "12ms",
      "<1ms",
      "?",
    ]);
  });
});
