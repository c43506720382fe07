import { describe, expect, it } from "vitest";
import { hoverRows } from "./hover";

describe("the chart's hover box", () => {
  const data = [
    [10, 20, 30],
    [1, null, 3],
    [5, 2, NaN],
    [9, 9, 9],
  ];
  const series = [
    { label: "a", color: "#1" },
    { label: "b", color: "#2" },
    { label: "c", color: "#3", show: false },
  ];
  it("lists the shown series with a value at the cursor, largest first", () => {
    expect(hoverRows(data, series, 0)).toEqual({
      time: 10,
      rows: [
        { label: "b", color: "#2", value: 5 },
        { label: "a", color: "#1", value: 1 },
      ],
      more: 0,
    });
    expect(hoverRows(data, series, 1)!.rows.map((r) => r.label)).toEqual(["b"]);
    expect(hoverRows(data, series, 2)!.rows.map((r) => r.label)).toEqual(["a"]);
  });
  it("caps the list and says how many more", () => {
    expect(hoverRows(data, series, 0, 1)).toMatchObject({ rows: [{ label: "b" }], more: 1 });
  });
  it("is nothing off the data", () => {
    expect(hoverRows(data, series, -1)).toBeNull();
    expect(hoverRows(data, series, 3)).toBeNull();
  });
});
