import { describe, expect, it } from "vitest";
import { addMatcher, findSelector, histogramQuery, isLogQuery, parseMatchers, quote, removeMatcher } from "./logql";

describe("quote", () => {
  it("escapes quotes, backslashes and newlines", () => {
    expect(quote('a"b\\c\nd')).toBe('"a\\"b\\\\c\\nd"');
  });
});

describe("findSelector / parseMatchers", () => {
  it("finds the selector of a log query with pipelines", () => {
    const q = '{app="web", env!="dev"} |= "x}" | json | line_format "{{.msg}}"';
    const s = findSelector(q)!;
    expect(q.slice(s.start, s.end)).toBe('{app="web", env!="dev"}');
  });
  it("finds the selector inside a metric query", () => {
    const q = 'sum by (level) (count_over_time({app="a"} |= "{" [5m]))';
    const s = findSelector(q)!;
    expect(q.slice(s.start, s.end)).toBe('{app="a"}');
  });
  it("reads matchers with escaped quotes and braces in values", () => {
    expect(parseMatchers('{a="x\\"}y", b=~`re.*`, c!~"z"}')).toEqual([
      { name: "a", op: "=", value: 'x"}y' },
      { name: "b", op: "=~", value: "re.*" },
      { name: "c", op: "!~", value: "z" },
    ]);
  });
  it("reads an empty selector and refuses garbage", () => {
    expect(parseMatchers("{}")).toEqual([]);
    expect(parseMatchers("{a}")).toBeNull();
  });
});

describe("addMatcher / removeMatcher", () => {
  it("adds a matcher and keeps the pipeline", () => {
    expect(addMatcher('{app="web"} |= "error" | json', "level", "=", "warn")).toBe(
      '{app="web", level="warn"} |= "error" | json',
    );
  });
  it("escapes quotes in added values", () => {
    expect(addMatcher('{app="web"}', "msg", "!=", 'say "hi"')).toBe('{app="web", msg!="say \\"hi\\""}');
  });
  it("replaces an equality matcher on the same label", () => {
    expect(addMatcher('{app="web"}', "app", "=", "db")).toBe('{app="db"}');
  });
  it("flips include to exclude without duplicates", () => {
    const q = addMatcher('{app="web", env="prod"}', "env", "!=", "prod");
    expect(q).toBe('{app="web", env!="prod"}');
    expect(addMatcher(q, "env", "!=", "prod")).toBe(q);
  });
  it("creates a selector for an empty query", () => {
    expect(addMatcher("", "app", "=", "x")).toBe('{app="x"}');
  });
  it("works inside metric queries", () => {
    expect(addMatcher('rate({app="a"} [1m])', "env", "=", "p")).toBe('rate({app="a", env="p"} [1m])');
  });
  it("removes matchers", () => {
    expect(removeMatcher('{app="web", env="prod"} |= "x"', "env")).toBe('{app="web"} |= "x"');
    expect(removeMatcher('{a="1", a!="2"}', "a", "!=", "2")).toBe('{a="1"}');
  });
  it("leaves a query it cannot read unchanged", () => {
    expect(addMatcher("{broken", "a", "=", "b")).toBe("{broken");
  });
});

describe("histogramQuery", () => {
  it("wraps a log query", () => {
    expect(histogramQuery('{app="a"} |= "x"', 60)).toBe('sum by (detected_level) (count_over_time({app="a"} |= "x" [60s]))');
    expect(histogramQuery('{app="a"}', 5, false)).toBe('sum(count_over_time({app="a"} [5s]))');
    expect(isLogQuery(' {a="b"}')).toBe(true);
    expect(isLogQuery('rate({a="b"}[1m])')).toBe(false);
  });
});
