import { describe, expect, it } from "vitest";
import { apiUrl, base64url, wsProtocols, wsUrl } from "./api";

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

describe("the WebSocket credential", () => {
  it("is lumen.bearer and the basic credentials in base64url, without padding", () => {
    expect(wsProtocols(null)).toBeUndefined();
    const p = wsProtocols({ tenant: "team-a", token: "lumen_abc" })!;
    expect(p[0]).toBe("lumen.bearer");
    expect(p[1]).toBe("base64url.basic.authorization.lumen.dGVhbS1hOmx1bWVuX2FiYw");
    // Every character is one a subprotocol token may hold, and the base64url decodes back.
    for (const tenant of ["a", "ab", "abc", "tëam?>"]) {
      const [, cred] = wsProtocols({ tenant, token: "t~~~" })!;
      expect(cred).toMatch(/^[A-Za-z0-9._-]+$/);
      const b64 = cred.slice("base64url.basic.authorization.lumen.".length).replace(/-/g, "+").replace(/_/g, "/");
      expect(decodeURIComponent(escape(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4))))).toBe(`${tenant}:t~~~`);
    }
    expect(base64url("\u00ff\u00fe")).not.toMatch(/[+/=]/);
  });
});
