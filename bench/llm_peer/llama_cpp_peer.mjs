// The llama.cpp peer of the LLM benchmark, through node-llama-cpp (the package users reach llama.cpp with from
// JavaScript), run on the CPU. Measures what bench/bench_llm.cpp measures for dreamllm, on the same weights
// (model.gguf from make_llama.py) and the same token ids:
//   prefill   evaluate the first P prompt ids into an empty sequence (no token generated)
//   decode    after a 64-id prompt, greedy next tokens one at a time; time per token from the first to the last
//   check     the 8 most likely next tokens after the first 16 prompt ids, with probabilities, and 16 greedy tokens
// Each timing is the best of REPS runs after one untimed warm-up (dl_bench_llm's is the best of its repetitions).
// Prints one JSON object.
//   node llama_cpp_peer.mjs MODEL.gguf PROMPT.json --threads 1,2 --prefill 64,512 --decode 32 --reps 3
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { createRequire } from "node:module";

const args = process.argv.slice(2);
if (args.length < 2) {
  console.error("usage: node llama_cpp_peer.mjs MODEL.gguf PROMPT.json [--threads 1,2] [--prefill 64,512] " +
    "[--decode 32] [--reps 3]");
  process.exit(2);
}
const [modelPath, promptPath] = args;
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const list = (s) => s.split(",").map(Number).filter((n) => Number.isInteger(n) && n > 0);
const threadCounts = list(option("--threads", "1,2"));
const prefillLengths = list(option("--prefill", "64,512"));
const decodeTokens = Number(option("--decode", "32"));
const reps = Number(option("--reps", "3"));
const prompt = JSON.parse(readFileSync(promptPath, "utf8"));
if (!Array.isArray(prompt) || prompt.length < Math.max(64, ...prefillLengths)) {
  console.error(`${promptPath}: expected an array of at least ${Math.max(64, ...prefillLengths)} token ids`);
  process.exit(2);
}

// NODE_LLAMA_CPP_DIR: where `npm install node-llama-cpp` put the package (scripts/bench_llm.sh installs it there).
const installDir = process.env.NODE_LLAMA_CPP_DIR ?? process.cwd();
const require = createRequire(`${installDir}/`);
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));
const packagePath = `${installDir}/node_modules/node-llama-cpp/package.json`;
const packageVersion = JSON.parse(readFileSync(packagePath, "utf8")).version;

const best = (xs) => Math.min(...xs);
const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error, build: "never" });
const model = await llama.loadModel({ modelPath, gpuLayers: 0, useMmap: true });
const result = { peer: "node-llama-cpp", version: packageVersion, cpu: llama.cpuMathCores ?? null, cases: [] };

for (const threads of threadCounts) {
  const contextSize = 1024;
  const context = await model.createContext({ contextSize, batchSize: 512, threads, sequences: 1 });
  const sequence = context.getSequence();

  for (const P of prefillLengths) {
    const times = [];
    for (let r = 0; r <= reps; ++r) {
      await sequence.clearHistory();
      const t0 = performance.now();
      await sequence.evaluateWithoutGeneratingNewTokens(prompt.slice(0, P));
      if (r > 0) times.push(performance.now() - t0);
    }
    result.cases.push({ name: `llm_prefill/P${P}`, threads, ms: best(times), tokens: P });
  }

  const times = [];
  for (let r = 0; r <= reps; ++r) {
    await sequence.clearHistory();
    await sequence.evaluateWithoutGeneratingNewTokens(prompt.slice(0, 63));
    let generated = 0, t0 = 0;
    // The first yielded token comes after evaluating the 64th prompt id (a one-token step, as every later one).
    for await (const token of sequence.evaluate([prompt[63]], { temperature: 0 })) {
      if (generated === 0) t0 = performance.now();
      if (++generated > decodeTokens) break;
    }
    if (r > 0) times.push((performance.now() - t0) / decodeTokens);
  }
  result.cases.push({ name: `llm_decode/N${decodeTokens}`, threads, ms: best(times), tokens: 1 });

  if (threads === threadCounts[threadCounts.length - 1]) {
    await sequence.clearHistory();
    // Plain softmax probabilities: no temperature, top-k, top-p or min-p applied.
    const raw = { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } };
    const input = prompt.slice(0, 16).map((t, i) => (i === 15 ? [t, { generateNext: raw }] : t));
    const out = await sequence.controlledEvaluate(input);
    const probs = [...out[15].next.probabilities.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8);
    await sequence.clearHistory();
    await sequence.evaluateWithoutGeneratingNewTokens(prompt.slice(0, 15));
    const greedy = [];
    for await (const token of sequence.evaluate([prompt[15]], { temperature: 0 })) {
      greedy.push(token);
      if (greedy.length >= 16) break;
    }
    result.check = { top: probs.map(([token, p]) => [token, p]), greedy };
  }
  await context.dispose();
}
await model.dispose();
console.log(JSON.stringify(result));
