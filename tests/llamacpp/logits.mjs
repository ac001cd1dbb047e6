// llama.cpp's logits for a list of token ids, through node-llama-cpp's prebuilt llama.cpp
// (CPU build from npm: no compiler, seconds to install). tests/llamacpp_live.rs runs it.
//
//   node tests/llamacpp/logits.mjs MODEL.gguf [--lora ADAPTER.gguf] [--kv-cache f16|f32]
//        --tokens 1,2,3 --out OUT.json
//
// OUT.json: {"vocab": V, "llama_cpp": {release}, "logits": [[V floats] per position]}: every
// position's raw logits, the tokens evaluated as given (no BOS added), LoRA at scale 1 (alpha / r
// come from the file). The KV cache is f16 by default, as llama.cpp keeps it; `--kv-cache f32`
// keeps it in f32 and turns flash attention off (whose CPU kernel rounds Q, K and V to f16), so
// that nothing but the weights' own format separates llama.cpp's arithmetic from ours.
import { writeFileSync } from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

function parseArgs(argv) {
    const args = { lora: null, tokens: null, out: null, model: null, kvCache: "f16" };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === "--lora") args.lora = argv[++i];
        else if (a === "--kv-cache") args.kvCache = argv[++i];
        else if (a === "--tokens") args.tokens = argv[++i].split(",").map(Number);
        else if (a === "--out") args.out = argv[++i];
        else if (args.model === null) args.model = a;
        else throw new Error(`unexpected argument ${a}`);
    }
    if (!args.model || !args.tokens || !args.out || !["f16", "f32"].includes(args.kvCache)) {
        throw new Error("usage: logits.mjs MODEL.gguf [--lora ADAPTER.gguf] [--kv-cache f16|f32] --tokens 1,2,3 --out OUT.json");
    }
    return args;
}

const args = parseArgs(process.argv.slice(2));
// CPU only, the prebuilt binary or nothing: never download or compile llama.cpp.
const llama = await getLlama({
    gpu: false,
    build: "never",
    usePrebuiltBinaries: true,
    skipDownload: true,
    logLevel: LlamaLogLevel.error,
});
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
const context = await model.createContext({
    contextSize: Math.max(64, args.tokens.length),
    sequences: 1,
    flashAttention: false,
    experimentalKvCacheKeyType: args.kvCache.toUpperCase(),
    experimentalKvCacheValueType: args.kvCache.toUpperCase(),
    ...(args.lora ? { lora: { adapters: [{ filePath: args.lora, scale: 1 }] } } : {}),
});
const sequence = context.getSequence();
const results = await sequence.controlledEvaluate(
    args.tokens.map((t) => [t, { generateNext: { logits: true } }]),
);
const vocab = model.tokens.vocabularySize;
const logits = results.map((r, i) => {
    const map = r?.next?.logits;
    if (!map) throw new Error(`no logits for position ${i}`);
    const row = new Array(vocab).fill(null);
    for (const [token, value] of map) row[token] = value;
    if (row.some((v) => v === null)) throw new Error(`position ${i}: ${map.size} logits for a vocabulary of ${vocab}`);
    return row;
});
writeFileSync(args.out, JSON.stringify({ vocab, llama_cpp: llama.llamaCppRelease, logits }));
await context.dispose();
await model.dispose();
await llama.dispose();
