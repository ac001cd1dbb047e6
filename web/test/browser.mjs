// The browser test: serves web/dist on localhost, opens the page in headless Chromium with
// WebGPU (SwiftShader's on a machine without a GPU), fine-tunes LoRA and HydraLoRA on the
// demo's tasks by clicking the page's buttons, and writes what the page measured to
// OUT/results.json, with a screenshot and the downloaded adapters, for the native check
// (`cargo run -p hydralora-web --example browser_check -- OUT BASE`) to compare. It also
// fine-tunes on a JSONL file set into the page and trains the small base in the page.
//
//   node web/test/browser.mjs OUT [STEPS]
//
// CHROMIUM: the browser binary (default /usr/bin/chromium).
import { createServer } from "node:http";
import { mkdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { extname, join, normalize } from "node:path";
import { chromium } from "playwright-core";

const [out, stepsArg] = process.argv.slice(2);
if (!out) {
  console.error("usage: node web/test/browser.mjs OUT [STEPS]");
  process.exit(2);
}
const steps = Number(stepsArg ?? 30);
const batch = 16;
const seed = 0;
const probe = "rev:abcd=";
const root = new URL("../dist/", import.meta.url).pathname;
if (!existsSync(join(root, "base/model.safetensors"))) {
  console.error(`${root}base/ has no model: build with web/build.sh --base DIR`);
  process.exit(1);
}
mkdirSync(out, { recursive: true });

// A static file server, enough for the page (no directory listings, no paths outside root).
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css",
  ".wasm": "application/wasm", ".json": "application/json" };
const server = createServer((req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
  const file = join(root, path.endsWith("/") ? path + "index.html" : path);
  if (!file.startsWith(root) || !existsSync(file)) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
  res.end(readFileSync(file));
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
    "--use-webgpu-adapter=swiftshader", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
const consoleLines = [];
try {
  const page = await browser.newPage({ acceptDownloads: true });
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(url);
  const state = () => page.locator("#status").getAttribute("data-state");
  const waitState = async (wanted, timeout) => {
    await page.waitForFunction((w) => {
      const s = document.getElementById("status").dataset.state;
      return w.includes(s) || s === "error";
    }, wanted, { timeout });
    const s = await state();
    if (s === "error") throw new Error(await page.locator("#status").textContent());
  };
  await waitState(["ready"], 120_000);
  const device = await page.locator("#device").textContent();
  console.log(`page ready on: ${device}`);
  await page.click("#load-served");
  await waitState(["base-ready"], 60_000);

  const results = { device, steps, batch, seed, probe, runs: {} };
  for (const method of ["lora", "hydra"]) {
    await page.selectOption("#method", method);
    await page.fill("#steps", String(steps));
    await page.fill("#batch", String(batch));
    await page.fill("#seed", String(seed));
    const started = Date.now();
    await page.click("#train");
    await waitState(["done"], 900_000);
    const wall = (Date.now() - started) / 1000;
    const run = await page.evaluate(() => {
      const r = window.hydralora.runs.at(-1);
      return { losses: r.losses, seconds: r.seconds, tokens: r.tokens, heatmap: window.hydralora.heatmap ?? null };
    });
    const logits = await page.evaluate(async (p) => Array.from(await window.hydralora.studio.logits(p)), probe);
    const generated = await page.evaluate(async (p) => await window.hydralora.studio.generate(p, 8), probe);
    await page.screenshot({ path: join(out, `${method}.png`), fullPage: true });
    // The loss curve's pixels: the curve's blue, counted in the canvas as drawn (the
    // screenshot beside it shows the same).
    const curvePixels = await page.evaluate(() => {
      const c = document.getElementById("loss");
      const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.abs(data[i] - 0x33) < 40 && Math.abs(data[i + 1] - 0x67) < 40 && Math.abs(data[i + 2] - 0xd6) < 40) n++;
      }
      return n;
    });
    // The curve spans (steps - 1) / steps of the plot's 596 columns: at least a pixel per
    // column it crosses (it is 2 pixels wide, and steeper than flat), with a margin.
    const spanned = (596 * (steps - 1)) / steps;
    if (curvePixels < 0.8 * spanned) {
      throw new Error(`${method}: the loss canvas has ${curvePixels} curve pixels, fewer than the ${spanned.toFixed(0)} columns its curve spans`);
    }
    const dir = join(out, `${method}-adapter`);
    mkdirSync(dir, { recursive: true });
    const downloads = [];
    page.on("download", (d) => downloads.push(d));
    await page.click("#download");
    await page.waitForFunction(() => !document.getElementById("download").disabled);
    for (let i = 0; i < 50 && downloads.length < 2; i++) await page.waitForTimeout(100);
    for (const d of downloads) await d.saveAs(join(dir, d.suggestedFilename()));
    page.removeAllListeners("download");
    const tokens = run.tokens.reduce((a, b) => a + b, 0);
    const seconds = run.seconds.reduce((a, b) => a + b, 0);
    results.runs[method] = { ...run, logits, generated, wall_seconds: wall,
      tokens_per_second: tokens / seconds, curve_pixels: curvePixels, downloads: downloads.map((d) => d.suggestedFilename()) };
    console.log(`${method}: ${run.losses.length} steps, loss ${run.losses[0].toFixed(4)} -> ` +
      `${run.losses.at(-1).toFixed(4)}, ${(tokens / seconds).toFixed(0)} tokens/s, "${probe}" -> "${generated}", ` +
      `${curvePixels} curve pixels`);
  }
  results.kernel_failures = JSON.parse(await page.evaluate(async () => await window.hydralora.studio.checkEveryKernel()));

  // The page's other ways in, briefly: a dropped-in JSONL file (its categories become the
  // heatmap's rows), then the small base trained from scratch in the page.
  const lines = [];
  for (const [category, word] of [["mirror", "abc"], ["mirror", "bcd"], ["shift", "cde"], ["shift", "def"]]) {
    const answer = category === "mirror" ? [...word].reverse().join("") : word.replace(/./g, (c) => String.fromCharCode(c.charCodeAt(0) + 1));
    for (let i = 0; i < 8; i++) lines.push(JSON.stringify({ text: `${word}=${answer}`, category }));
  }
  const jsonlPath = join(out, "data.jsonl");
  writeFileSync(jsonlPath, lines.join("\n") + "\n");
  await page.setInputFiles("#jsonl-file", jsonlPath);
  await page.selectOption("#method", "hydra");
  await page.fill("#steps", "3");
  await page.fill("#batch", "4");
  await page.click("#train");
  await waitState(["done"], 300_000);
  const jsonlRun = await page.evaluate(() => ({
    losses: window.hydralora.runs.at(-1).losses,
    categories: window.hydralora.heatmap?.categories ?? [],
  }));
  if (jsonlRun.losses.length !== 3 || !jsonlRun.losses.every(Number.isFinite)) {
    throw new Error(`the JSONL run: ${JSON.stringify(jsonlRun)}`);
  }
  if (JSON.stringify(jsonlRun.categories) !== JSON.stringify(["mirror", "shift"])) {
    throw new Error(`the JSONL run's heatmap rows are ${JSON.stringify(jsonlRun.categories)}`);
  }
  console.log(`JSONL run: 3 steps, losses ${jsonlRun.losses.map((l) => l.toFixed(3)).join(", ")}, heatmap rows ${jsonlRun.categories}`);
  results.jsonl_run = jsonlRun;

  await page.fill("#base-steps", "3");
  await page.click("#train-base");
  await waitState(["base-ready"], 300_000);
  const baseStatus = await page.locator("#base-status").textContent();
  if (!baseStatus.includes("trained here")) throw new Error(`after base training: ${baseStatus}`);
  await page.selectOption("#method", "lora");
  await page.fill("#steps", "2");
  await page.click('input[name="data"][value="demo"]');
  await page.click("#train");
  await waitState(["done"], 300_000);
  console.log(`base trained in the page for 3 steps, then fine-tuned 2: ${baseStatus}`);

  results.kernels_used = JSON.parse(await page.evaluate(() => window.hydralora.studio.kernelsUsed()));
  results.errors = await page.evaluate(() => window.hydralora.errors);
  results.console = consoleLines;
  writeFileSync(join(out, "results.json"), JSON.stringify(results, null, 1));
  console.log(`${results.kernels_used.length} kernels used; every variant compiled by Chromium, ` +
    `${results.kernel_failures.length} refused`);
  for (const f of results.kernel_failures) console.log(`  refused: ${f.slice(0, 400)}`);
} catch (e) {
  failed = true;
  console.error(`browser test failed: ${e.stack ?? e}`);
  console.error(consoleLines.slice(-20).join("\n"));
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
