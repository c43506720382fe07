import { describe, expect, it } from "vitest";
import { chooseStep, describeRange, fmtTime, formatDuration, fromDatetimeLocal, parseDuration, parseTime, resolveRange, toDatetimeLocal } from "./time";

const NOW = Date.UTC(2026, 0, 2, 12, 0, 0);

describe("durations", () => {
  it("parses", () => {
    expect(parseDuration("5m")).toBe(300_000);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("250ms")).toBe(250);
    expect(parseDuration("7d")).toBe(7 * 86_400_000);
    expect(parseDuration("5x")).toBeNull();
    expect(parseDuration("")).toBeNull();
  });
  it("formats", () => {
    expect(formatDuration(5_400_000)).toBe("1h30m");
    expect(formatDuration(0)).toBe("0s");
  });
});

describe("parseTime", () => {
  it("reads relative times", () => {
    expect(parseTime("now", NOW)).toBe(NOW);
    expect(parseTime("now-1h", NOW)).toBe(NOW - 3_600_000);
    expect(parseTime("now - 15m", NOW)).toBe(NOW - 900_000);
    expect(parseTime("now+5m", NOW)).toBe(NOW + 300_000);
    expect(parseTime("-1d", NOW)).toBe(NOW - 86_400_000);
    expect(parseTime("now-bogus", NOW)).toBeNull();
  });
  it("reads absolute times", () => {
    expect(parseTime("2026-01-02T10:00:00Z", NOW)).toBe(Date.UTC(2026, 0, 2, 10));
    expect(parseTime("2026-01-02 10:30", NOW)).toBe(new Date(2026, 0, 2, 10, 30).getTime());
    expect(parseTime("1767355200", NOW)).toBe(1767355200000);
    expect(parseTime("1767355200123", NOW)).toBe(1767355200123);
    expect(parseTime("yesterday", NOW)).toBeNull();
  });
  it("resolves ranges", () => {
    expect(resolveRange({ from: "now-1h", to: "now" }, NOW)).toEqual({ start: NOW - 3_600_000, end: NOW });
    expect(() => resolveRange({ from: "now", to: "now-1h" }, NOW)).toThrow(/not before/);
    expect(() => resolveRange({ from: "x", to: "now" }, NOW)).toThrow(/start/);
    expect(describeRange({ from: "now-24h", to: "now" })).toBe("Last 24h");
  });
});

describe("chooseStep", () => {
  it("picks round steps", () => {
    expect(chooseStep(0, 3_600_000, 200)).toBe(30);
    expect(chooseStep(0, 300_000, 200)).toBe(2);
    expect(chooseStep(0, 86_400_000, 200)).toBe(600);
    expect(chooseStep(0, 7 * 86_400_000, 200)).toBe(3600);
    expect(chooseStep(0, 1000, 200)).toBe(1);
    expect(chooseStep(0, 1000 * 86_400_000, 100)).toBe(864_000);
  });
});

describe("time zones", () => {
  const T = Date.UTC(2026, 0, 2, 10, 30, 5, 42);
  it("show and read times in UTC or the browser's zone", () => {
    expect(fmtTime(T, "utc")).toBe("2026-01-02 10:30:05.042");
    expect(fmtTime(T, "local")).toBe(fmtTime(T - new Date(T).getTimezoneOffset() * 60_000, "utc"));
    expect(parseTime("2026-01-02 10:30", NOW, "utc")).toBe(Date.UTC(2026, 0, 2, 10, 30));
    expect(parseTime("2026-01-02 10:30", NOW, "local")).toBe(new Date(2026, 0, 2, 10, 30).getTime());
    // RFC 3339 with an offset and epochs mean the same instant in either zone.
    expect(parseTime("2026-01-02T10:00:00Z", NOW, "local")).toBe(parseTime("2026-01-02T10:00:00Z", NOW, "utc"));
  });
  it("round-trip the datetime-local inputs", () => {
    expect(toDatetimeLocal(T, "utc")).toBe("2026-01-02T10:30:05");
    expect(fromDatetimeLocal("2026-01-02T10:30:05", "utc")).toBe(Date.UTC(2026, 0, 2, 10, 30, 5));
    expect(fromDatetimeLocal("2026-01-02T10:30", "utc")).toBe(Date.UTC(2026, 0, 2, 10, 30));
    expect(fromDatetimeLocal(toDatetimeLocal(T, "local"), "local")).toBe(T - 42);
    expect(fromDatetimeLocal("", "utc")).toBeNull();
    expect(fromDatetimeLocal("2026-01-02", "utc")).toBeNull();
  });
  it("describe absolute ranges as times", () => {
    const r = { from: String(Date.UTC(2026, 0, 2, 10)), to: String(Date.UTC(2026, 0, 2, 11)) };
    expect(describeRange(r, "utc")).toBe("2026-01-02 10:00:00 → 2026-01-02 11:00:00 UTC");
    expect(describeRange({ from: "now-2h", to: "now-1h" }, "utc")).toBe("now-2h → now-1h UTC");
  });
});
