import { describe, expect, it } from "vitest";
import { buildHash, parseHash } from "./hash";

describe("hash state", () => {
  it("round-trips queries with special characters", () => {
    const params = { query: '{app="web"} |= "a&b=c #1 +x"', from: "now-1h", to: "now", refresh: "5s" };
    const h = buildHash("logs", params);
    expect(h.startsWith("#/logs?")).toBe(true);
    expect(parseHash(h)).toEqual({ view: "logs", params });
  });
  it("leaves out empty values and sorts keys", () => {
    expect(buildHash("sql", { b: "2", a: "1", c: "" })).toBe("#/sql?a=1&b=2");
  });
  it("reads bare and empty hashes", () => {
    expect(parseHash("")).toEqual({ view: "", params: {} });
    expect(parseHash("#/status")).toEqual({ view: "status", params: {} });
    expect(parseHash("#metrics?query=up")).toEqual({ view: "metrics", params: { query: "up" } });
  });
});
