import { describe, expect, it } from "vitest";
import { contextRequests, mergeContext, streamSelector } from "./context";

describe("the lines around a line", () => {
  it("are asked for in the line's own stream, backward and forward from its time", () => {
    expect(streamSelector({ namespace: "loghub", app: 'a"b' })).toBe('{app="a\\"b", namespace="loghub"}');
    const r = contextRequests({ app: "x" }, "1000000000000000000", 5);
    expect(r.before).toEqual({ query: '{app="x"}', start: "999992800000000000", end: "1000000000000000001", limit: 6, direction: "backward" });
    expect(r.after).toEqual({ query: '{app="x"}', start: "1000000000000000000", end: "1000007200000000000", limit: 6, direction: "forward" });
  });

  it("come back oldest first, without the line itself, at most n each way", () => {
    const row = { ns: "100", line: "me" };
    const before = [
      { ns: "100", line: "me" },
      { ns: "99", line: "b1" },
      { ns: "98", line: "b2" },
      { ns: "97", line: "b3" },
    ];
    const after = [
      { ns: "102", line: "a2" },
      { ns: "100", line: "me" },
      { ns: "100", line: "same time" },
      { ns: "101", line: "a1" },
    ];
    expect(mergeContext(row, before, after, 2)).toEqual({
      before: [
        { ns: "98", line: "b2" },
        { ns: "99", line: "b1" },
      ],
      after: [
        { ns: "100", line: "same time" },
        { ns: "101", line: "a1" },
      ],
    });
    // A line at the same time found by both requests shows once.
    const dup = mergeContext(row, [{ ns: "100", line: "twin" }, row], [row, { ns: "100", line: "twin" }], 5);
    expect(dup).toEqual({ before: [], after: [{ ns: "100", line: "twin" }] });
    // Times of different lengths compare as numbers.
    expect(mergeContext({ ns: "1000", line: "x" }, [{ ns: "999", line: "y" }], [], 1).before).toEqual([{ ns: "999", line: "y" }]);
  });
});
