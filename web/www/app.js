// The page: drives a Studio (the engine in WebAssembly, on WebGPU) from the browser's event
// loop, one awaited step at a time, and draws what it measures. Everything the test reads is
// also on `window.hydralora` (the run's log, the studio).
import init, { Studio } from "./pkg/hydralora_web.js";

const $ = (id) => document.getElementById(id);
const log = { runs: [], errors: [] };
window.hydralora = log;
let studio = null;
let jsonl = null;
let stopRequested = false;

function setStatus(text, state) {
  const s = $("status");
  s.textContent = text;
  if (state) s.dataset.state = state;
  s.className = state === "error" ? "error" : "";
}

function fail(where, e) {
  const message = `${where}: ${e && e.message ? e.message : e}`;
  log.errors.push(message);
  setStatus(message, "error");
  console.error(message);
}

function setBusy(busy) {
  for (const id of ["train-base", "load-served", "train", "generate", "download"]) {
    $(id).disabled = busy || (id !== "train-base" && id !== "load-served" && !log.baseReady)
      || ((id === "generate" || id === "download") && !log.runReady);
  }
  $("stop").disabled = !busy;
}

async function main() {
  if (!navigator.gpu) {
    setStatus("This browser has no WebGPU, so it cannot run the engine. Use a recent Chrome, " +
      "Edge or Safari (or Firefox with WebGPU on), or run `hydralora` natively.", "error");
    return;
  }
  await init();
  try {
    studio = await Studio.open();
  } catch (e) {
    fail("opening WebGPU", e);
    return;
  }
  log.studio = studio;
  $("device").textContent = studio.deviceInfo();
  setStatus("Ready. Train or load a base model.", "ready");
  setBusy(false);
}

// --- 1. Base model ---------------------------------------------------------------------------
$("train-base").onclick = async () => {
  const steps = Number($("base-steps").value);
  setBusy(true);
  stopRequested = false;
  try {
    studio.startBaseTraining(steps);
    const curve = [];
    for (let i = 0; i < steps && !stopRequested; i++) {
      const stats = JSON.parse(await studio.baseStep());
      curve.push(stats.loss);
      drawCurve(curve, steps);
      $("base-status").textContent = `base step ${stats.step}/${steps}, loss ${stats.loss.toFixed(4)}`;
    }
    if (!stopRequested) baseReady("the small base, trained here");
  } catch (e) {
    fail("training the base", e);
  }
  setBusy(false);
};

$("load-served").onclick = async () => {
  setBusy(true);
  try {
    const get = async (name, optional) => {
      const r = await fetch(`base/${name}`);
      if (!r.ok) {
        if (optional) return null;
        throw new Error(`the server has no base/${name} (build the page with web/build.sh --base DIR)`);
      }
      return new Uint8Array(await r.arrayBuffer());
    };
    const config = await get("config.json");
    const weights = await get("model.safetensors");
    const tokenizer = (await get("char_codec.json", true)) ?? (await get("tokenizer.json", true));
    studio.loadBase(config, weights, tokenizer ?? undefined);
    baseReady(`the served base (${(weights.length / 1e6).toFixed(1)} MB)`);
  } catch (e) {
    fail("loading the served base", e);
  }
  setBusy(false);
};

$("model-files").onchange = async (event) => {
  const files = [...event.target.files];
  const find = (name) => files.find((f) => f.name === name);
  try {
    const config = find("config.json");
    const weights = find("model.safetensors");
    const tokenizer = find("char_codec.json") ?? find("tokenizer.json");
    if (!config || !weights) throw new Error("pick config.json and model.safetensors (and its tokenizer)");
    const bytes = async (f) => new Uint8Array(await f.arrayBuffer());
    studio.loadBase(await bytes(config), await bytes(weights), tokenizer ? await bytes(tokenizer) : undefined);
    baseReady(`${weights.name} (${(weights.size / 1e6).toFixed(1)} MB)`);
  } catch (e) {
    fail("loading the picked model", e);
  }
  setBusy(false);
};

function baseReady(what) {
  log.baseReady = true;
  $("base-status").textContent = `Base: ${what}.`;
  setStatus("Ready to fine-tune.", "base-ready");
}

// --- 2. Data ---------------------------------------------------------------------------------
async function takeJsonl(file) {
  jsonl = await file.text();
  const lines = jsonl.split("\n").filter((l) => l.trim()).length;
  $("data-status").textContent = `${file.name}: ${lines} lines.`;
  document.querySelector('input[name="data"][value="jsonl"]').checked = true;
}
$("jsonl-file").onchange = (e) => e.target.files[0] && takeJsonl(e.target.files[0]);
const drop = $("drop");
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) takeJsonl(e.dataTransfer.files[0]);
};

// --- 3. Fine-tune ----------------------------------------------------------------------------
$("train").onclick = async () => {
  const method = $("method").value;
  const steps = Number($("steps").value);
  const batch = Number($("batch").value);
  const seed = Number($("seed").value);
  const useJsonl = document.querySelector('input[name="data"]:checked').value === "jsonl";
  const run = { method, steps, batch, seed, losses: [], seconds: [], tokens: [] };
  log.runs.push(run);
  log.runReady = false;
  setBusy(true);
  stopRequested = false;
  setStatus(`Fine-tuning ${method}…`, "training");
  try {
    studio.startRun(method, steps, batch, seed, useJsonl && jsonl ? jsonl : undefined);
    for (let i = 0; i < steps && !stopRequested; i++) {
      const stats = JSON.parse(await studio.step());
      run.losses.push(stats.loss);
      run.seconds.push(stats.seconds);
      run.tokens.push(stats.tokens);
      drawCurve(run.losses, steps);
      const recent = run.seconds.slice(-10).reduce((a, b) => a + b, 0);
      const tokens = run.tokens.slice(-10).reduce((a, b) => a + b, 0);
      run.tokensPerSecond = tokens / recent;
      $("run-status").textContent = `step ${stats.step}/${steps}  loss ${stats.loss.toFixed(4)}  ` +
        `lr ${stats.lr.toExponential(2)}  ${run.tokensPerSecond.toFixed(0)} tokens/s`;
      if (method === "hydra" && (stats.step % 25 === 0 || i === steps - 1)) {
        drawHeatmap(JSON.parse(await studio.heatmap()));
      }
    }
    log.runReady = true;
    run.done = true;
    setStatus(`Fine-tuned ${method} for ${run.losses.length} steps.`, "done");
  } catch (e) {
    fail(`fine-tuning ${method}`, e);
  }
  setBusy(false);
};
$("stop").onclick = () => { stopRequested = true; };

function drawCurve(values, total) {
  const c = $("loss");
  const g = c.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, c.width, c.height);
  const pad = 36;
  const max = Math.max(...values, 1e-6);
  g.strokeStyle = "#999";
  g.strokeRect(pad, 8, c.width - pad - 8, c.height - pad);
  g.fillStyle = "#555";
  g.font = "12px sans-serif";
  g.fillText(max.toFixed(2), 2, 16);
  g.fillText("0", 2, c.height - pad + 8);
  g.fillText(`step ${values.length}/${total}`, c.width - 110, c.height - 10);
  g.strokeStyle = "#3367d6";
  g.lineWidth = 2;
  g.beginPath();
  values.forEach((v, i) => {
    const x = pad + ((c.width - pad - 8) * (i + 1)) / Math.max(total, 1);
    const y = 8 + (c.height - pad - 8) * (1 - v / max);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

function drawHeatmap(map) {
  if (!map) return;
  log.heatmap = map;
  const c = $("heatmap");
  const g = c.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, c.width, c.height);
  const rows = map.categories.length;
  const cols = map.gates[0]?.length ?? 0;
  const left = 90, top = 20;
  const w = (c.width - left - 10) / Math.max(cols, 1);
  const h = (c.height - top - 10) / Math.max(rows, 1);
  g.font = "12px sans-serif";
  map.gates.forEach((row, r) => {
    g.fillStyle = "#333";
    g.fillText(map.categories[r], 4, top + r * h + h / 2 + 4);
    row.forEach((v, k) => {
      const shade = Math.round(255 * (1 - Math.min(1, v * cols / 2)));
      g.fillStyle = `rgb(${shade},${shade},255)`;
      g.fillRect(left + k * w, top + r * h, w - 2, h - 2);
      g.fillStyle = "#000";
      g.fillText(v.toFixed(2), left + k * w + 4, top + r * h + h / 2 + 4);
    });
  });
  g.fillStyle = "#333";
  for (let k = 0; k < cols; k++) g.fillText(`head ${k}`, left + k * w + 4, 14);
}

// --- 4. Try it -------------------------------------------------------------------------------
$("generate").onclick = async () => {
  setBusy(true);
  try {
    $("output").textContent = $("prompt").value + (await studio.generate($("prompt").value, 16));
  } catch (e) {
    fail("generating", e);
  }
  setBusy(false);
};

$("download").onclick = async () => {
  setBusy(true);
  try {
    const [weights, config] = await studio.adapterFiles();
    save(new Blob([weights]), "adapter_model.safetensors");
    save(new Blob([config], { type: "application/json" }), "adapter_config.json");
  } catch (e) {
    fail("saving the adapter", e);
  }
  setBusy(false);
};

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

main().catch((e) => fail("starting", e));
