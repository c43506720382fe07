import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

const target = process.env.LUMEN_URL ?? "http://127.0.0.1:9700";

export default defineConfig({
  base: "./",
  plugins: [preact()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    assetsDir: "assets",
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  server: {
    proxy: {
      "/loki": { target, ws: true },
      "/api": { target },
      "/prometheus": { target },
    },
  },
  test: { include: ["src/**/*.test.ts"] },
} as any);
