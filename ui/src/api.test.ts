import { describe, expect, it } from "vitest";
import { apiUrl, wsUrl } from "./api";

describe("relative API URLs", () => {
  it("resolve against the UI's parent, under any prefix", () => {
    expect(apiUrl("loki/api/v1/labels", undefined, "http://h:9700/ui/#/logs?query=x")).toBe("http://h:9700/loki/api/v1/labels");
    expect(apiUrl("api/v1/query", { query: '{a="b"}', time: 5 }, "https://h/lumen/ui/index.html#/metrics")).toBe(
      "https://h/lumen/api/v1/query?query=%7Ba%3D%22b%22%7D&time=5",
    );
    expect(wsUrl("loki/api/v1/tail", { query: "{}" }, "https://h/p/ui/")).toBe("wss://h/p/loki/api/v1/tail?query=%7B%7D");
    expect(wsUrl("loki/api/v1/tail", undefined, "http://localhost:5173/#/logs")).toBe("ws://localhost:5173/loki/api/v1/tail");
  });
});
